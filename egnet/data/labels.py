"""Cityscapes labelIds <-> the 19 trainIds, from cityscapesscripts' label table.

NightCity labels are Cityscapes labelIds 0-33 (8-bit). Training and metrics use
trainIds 0-18 with 255 = ignore. The table is cityscapesscripts' own, never retyped.
"""

from __future__ import annotations

import numpy as np
from cityscapesscripts.helpers.labels import labels as _CS_LABELS

IGNORE_INDEX = 255
NUM_CLASSES = 19
#: labelIds that may appear in a NightCity label PNG (0..33; -1 is a Cityscapes instance-only id)
VALID_LABEL_IDS: frozenset[int] = frozenset(lab.id for lab in _CS_LABELS if lab.id >= 0)

_TRAIN = sorted((lab for lab in _CS_LABELS if 0 <= lab.trainId < IGNORE_INDEX), key=lambda lab: lab.trainId)
#: class names in trainId order: road, sidewalk, ..., bicycle
CLASS_NAMES: tuple[str, ...] = tuple(lab.name for lab in _TRAIN)
assert len(CLASS_NAMES) == NUM_CLASSES and [lab.trainId for lab in _TRAIN] == list(range(NUM_CLASSES))

#: 256-entry lookup: labelId -> trainId (255 for void labels and for any unknown id)
LABEL_TO_TRAIN = np.full(256, IGNORE_INDEX, dtype=np.uint8)
for _lab in _CS_LABELS:
    if _lab.id >= 0:
        LABEL_TO_TRAIN[_lab.id] = _lab.trainId if 0 <= _lab.trainId < IGNORE_INDEX else IGNORE_INDEX

#: 256-entry lookup: trainId -> labelId (ignore -> 0 'unlabeled')
TRAIN_TO_LABEL = np.zeros(256, dtype=np.uint8)
for _lab in _TRAIN:
    TRAIN_TO_LABEL[_lab.trainId] = _lab.id

#: RGB colour per trainId (Cityscapes palette); row 255 is black for ignore
PALETTE = np.zeros((256, 3), dtype=np.uint8)
for _lab in _TRAIN:
    PALETTE[_lab.trainId] = _lab.color


def to_train_ids(label_ids: np.ndarray) -> np.ndarray:
    """HxW uint8 labelIds -> HxW uint8 trainIds (255 = ignore)."""
    return LABEL_TO_TRAIN[label_ids]


def to_label_ids(train_ids: np.ndarray) -> np.ndarray:
    """HxW trainIds (0..18, 255) -> HxW uint8 labelIds."""
    return TRAIN_TO_LABEL[np.asarray(train_ids, dtype=np.uint8)]


def colorize(train_ids: np.ndarray) -> np.ndarray:
    """HxW trainIds -> HxWx3 uint8 RGB with the Cityscapes palette."""
    return PALETTE[np.asarray(train_ids, dtype=np.uint8)]


def unknown_ids(label_ids: np.ndarray) -> list[int]:
    """Values in a label map that are not Cityscapes labelIds (sorted)."""
    present = np.unique(label_ids)
    return [int(v) for v in present if int(v) not in VALID_LABEL_IDS]
