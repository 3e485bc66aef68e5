"""Torch datasets over a split's image/label pairs, with joint transforms.

A sample is a dict:

    image   3xHxW uint8 RGB (converted to float [0, 1] on the device: 4x less to copy)
    label   HxW int64 trainIds, 255 = ignore
    bins    HxW uint8 exposure bins of the full-size image (eval only, for EF1)
    stem    the image stem

Train transform (paper Sec. 5: 300x300 crops): one random draw per sample of scale
s ~ U[scale_min, scale_max], crop position and horizontal flip, applied to image and
label alike; image resized bilinearly, label nearest; padding to the crop size is 0 for
the image and 255 (ignore) for the label. Random numbers come from the sample's own
seed (see :class:`egnet.training.distributed.ResumableDistributedSampler`), so augmentation is a
function of (seed, epoch, position): the same with any number of workers or processes
and after a resume.

Eval transform (paper: test at 900x900): the image is resized to ``eval_size`` while the
label stays at full size; predictions are resized back to the label size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from egnet.core.config import TrainConfig
from egnet.data import layout
from egnet.data.exposure import bin_index
from egnet.data.labels import IGNORE_INDEX, to_train_ids


@dataclass(frozen=True)
class TrainTransform:
    """Random scale, crop to ``crop`` x ``crop`` (padding where smaller), horizontal flip."""

    crop: int
    scale_min: float
    scale_max: float
    hflip: bool

    @classmethod
    def from_config(cls, t: TrainConfig) -> TrainTransform:
        return cls(t.crop_size, t.scale_min, t.scale_max, t.hflip)

    def __call__(self, image: np.ndarray, label: np.ndarray,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """HxWx3 uint8 image and HxW uint8 trainIds -> crop x crop versions of both."""
        # all random parameters drawn first, in a fixed order (reproducible per seed)
        scale = rng.uniform(self.scale_min, self.scale_max)
        fy, fx = rng.random(), rng.random()
        flip = self.hflip and rng.random() < 0.5
        h, w = label.shape
        nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
        if (nh, nw) != (h, w):
            image = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR)
            label = cv2.resize(label, (nw, nh), interpolation=cv2.INTER_NEAREST)
        ph, pw = max(self.crop - nh, 0), max(self.crop - nw, 0)
        if ph or pw:
            image = cv2.copyMakeBorder(image, 0, ph, 0, pw, cv2.BORDER_CONSTANT, value=(0, 0, 0))
            label = cv2.copyMakeBorder(label, 0, ph, 0, pw, cv2.BORDER_CONSTANT, value=IGNORE_INDEX)
        hh, ww = label.shape
        top = int(fy * (hh - self.crop + 1))
        left = int(fx * (ww - self.crop + 1))
        image = image[top:top + self.crop, left:left + self.crop]
        label = label[top:top + self.crop, left:left + self.crop]
        if flip:
            image, label = image[:, ::-1], label[:, ::-1]
        return np.ascontiguousarray(image), np.ascontiguousarray(label)


def eval_resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize an HxWx3 uint8 image to ``size`` (width, height), bilinear."""
    if (image.shape[1], image.shape[0]) == tuple(size):
        return image
    return cv2.resize(image, tuple(size), interpolation=cv2.INTER_LINEAR)


class SegmentationDataset(Dataset):
    """Image/label pairs of one split.

    ``train=True``: random joint transform; index with ``(i, seed)`` from the sampler (a
    bare ``i`` uses seed ``i``). ``train=False``: image resized to ``eval_size``, label and
    exposure bins at full size. ``image_size`` (width, height) is the expected label size
    (NightCity+ labels at 2x are resized nearest, as ``layout.read_label`` does).
    """

    def __init__(
        self,
        pairs: Sequence[layout.Pair],
        image_size: tuple[int, int],
        *,
        train: bool,
        transform: TrainTransform | None = None,
        eval_size: tuple[int, int] | None = None,
    ) -> None:
        if train and transform is None:
            raise ValueError("a training dataset needs a transform")
        if not train and eval_size is None:
            raise ValueError("an evaluation dataset needs eval_size")
        self.pairs = list(pairs)
        self.image_size = tuple(image_size)
        self.train = train
        self.transform = transform
        self.eval_size = tuple(eval_size) if eval_size else None

    def __len__(self) -> int:
        return len(self.pairs)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(HxWx3 uint8 RGB image, HxW uint8 trainIds) as stored."""
        pair = self.pairs[index]
        image = layout.read_image(pair.image)
        label_ids, _ = layout.read_label(pair.label, (image.shape[1], image.shape[0]))
        return image, to_train_ids(label_ids)

    def __getitem__(self, item: int | tuple[int, int]) -> dict[str, Any]:
        index, seed = item if isinstance(item, tuple) else (item, item)
        image, label = self.load(index)
        sample: dict[str, Any] = {"stem": self.pairs[index].stem}
        if self.train:
            image, label = self.transform(image, label, np.random.default_rng(seed))
        else:
            sample["bins"] = torch.from_numpy(bin_index(image))
            image = eval_resize(image, self.eval_size)
        sample["image"] = torch.from_numpy(image).permute(2, 0, 1).contiguous()
        sample["label"] = torch.from_numpy(label.astype(np.int64))
        return sample


def to_float(images: torch.Tensor) -> torch.Tensor:
    """Nx3xHxW uint8 (on any device) -> float in [0, 1], the models' input."""
    return images.float().div_(255.0)
