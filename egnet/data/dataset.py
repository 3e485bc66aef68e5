"""Torch datasets over a split's image/label pairs, with joint transforms.

A sample is a dict:

    image   3xHxW uint8 RGB (converted to float [0, 1] on the device: 4x less to copy)
    label   HxW uint8 trainIds, 255 = ignore (widened on the device: 8x less to copy than int64)
    bins    HxW uint8 exposure bins of the full-size image (eval only, for EF1)
    stem    the image stem

Train transforms (``train.input``, docs/training.md):

- ``resize`` (the paper: "300x300 for training"): the whole image resized to
  ``crop_size`` x ``crop_size`` (bilinear, as the test-time resize to ``eval_size``; the
  label nearest), then the horizontal flip.
- ``crop``: one random draw of scale s ~ U[scale_min, scale_max], crop position and
  flip; the crop is a ``crop_size`` x ``crop_size`` window of the image scaled by s,
  padded with 0 (image) and 255 (ignore, label) where the scaled image is smaller.
  Only the window is computed: one affine warp maps it straight from the source pixels
  (bilinear image, nearest label, pixel centres as ``cv2.resize`` places them), so a
  scale-2 draw never builds the 2048x1024 image. The windows have the distribution of
  "scale the whole image, then crop" (the same draws give the same window).

Random numbers come from the sample's own seed (see
:class:`egnet.training.distributed.ResumableDistributedSampler`), so augmentation is a
function of (seed, epoch, position): the same with any number of workers or processes
and after a resume. Each file is decoded once by OpenCV, in its BGR order; channels are
put in RGB order on the small result, in the same copy that makes it CHW, and labelIds
become trainIds there too (nearest sampling commutes with the per-pixel table; the
padding value 255 maps to 255).

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
class ScaleCrop:
    """``train.input: crop``: random scale, ``crop`` x ``crop`` window (padded where the scaled
    image is smaller), horizontal flip; image and label alike."""

    crop: int
    scale_min: float
    scale_max: float
    hflip: bool

    def window(self, h: int, w: int, rng: np.random.Generator) -> tuple[int, int, int, int, bool]:
        """The random draws, in a fixed order (reproducible per seed): (scaled height, scaled
        width, top, left, flip) of the crop in the scaled image's coordinates."""
        scale = rng.uniform(self.scale_min, self.scale_max)
        fy, fx = rng.random(), rng.random()
        flip = self.hflip and rng.random() < 0.5
        nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
        # padding goes below and right of the scaled image, so a small one sits at the top left
        top = int(fy * (max(nh, self.crop) - self.crop + 1))
        left = int(fx * (max(nw, self.crop) - self.crop + 1))
        return nh, nw, top, left, flip

    def __call__(self, image: np.ndarray, label: np.ndarray,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """HxWx3 uint8 image and HxW uint8 label (ids of any kind: nearest sampling, padding 255)
        -> crop x crop versions of both."""
        h, w = label.shape
        nh, nw, top, left, flip = self.window(h, w, rng)
        c = self.crop
        vh, vw = min(c, nh - top), min(c, nw - left)  # the part of the window on the scaled image
        sy, sx = h / nh, w / nw
        # output pixel (x, y) = scaled pixel (left + x, top + y), whose centre lies at source
        # ((left + x + 0.5) * sx - 0.5, ...): cv2.resize's mapping; border replicated as it clamps
        m = np.array([[sx, 0.0, (left + 0.5) * sx - 0.5], [0.0, sy, (top + 0.5) * sy - 0.5]])
        inv, edge = cv2.WARP_INVERSE_MAP, cv2.BORDER_REPLICATE
        img = cv2.warpAffine(image, m, (vw, vh), flags=cv2.INTER_LINEAR | inv, borderMode=edge)
        lab = cv2.warpAffine(label, m, (vw, vh), flags=cv2.INTER_NEAREST | inv, borderMode=edge)
        if (vh, vw) != (c, c):
            img = cv2.copyMakeBorder(img, 0, c - vh, 0, c - vw, cv2.BORDER_CONSTANT, value=(0, 0, 0))
            lab = cv2.copyMakeBorder(lab, 0, c - vh, 0, c - vw, cv2.BORDER_CONSTANT, value=IGNORE_INDEX)
        if flip:
            img, lab = img[:, ::-1], lab[:, ::-1]
        return img, lab


@dataclass(frozen=True)
class WholeResize:
    """``train.input: resize`` (the paper's): the whole image to ``size`` x ``size``, then a
    random horizontal flip; the label nearest (pixel centres aligned with the image's)."""

    size: int
    hflip: bool

    def __call__(self, image: np.ndarray, label: np.ndarray,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        flip = self.hflip and rng.random() < 0.5
        s = self.size
        # bilinear, as the test-time resize to eval_size: train and test images are made alike
        img = cv2.resize(image, (s, s), interpolation=cv2.INTER_LINEAR)
        lab = cv2.resize(label, (s, s), interpolation=cv2.INTER_NEAREST_EXACT)
        if flip:
            img, lab = img[:, ::-1], lab[:, ::-1]
        return img, lab


TrainTransform = ScaleCrop | WholeResize


def train_transform(t: TrainConfig) -> TrainTransform:
    """The transform ``train.input`` names, from the ``train`` section."""
    if t.input == "resize":
        return WholeResize(t.crop_size, t.hflip)
    return ScaleCrop(t.crop_size, t.scale_min, t.scale_max, t.hflip)


def eval_resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize an HxWx3 uint8 image to ``size`` (width, height), bilinear."""
    if (image.shape[1], image.shape[0]) == tuple(size):
        return image
    return cv2.resize(image, tuple(size), interpolation=cv2.INTER_LINEAR)


def bgr_to_chw_rgb(image: np.ndarray) -> torch.Tensor:
    """HxWx3 BGR (any strides) -> 3xHxW RGB uint8 tensor, in one copy."""
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)[::-1]))


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
        """(HxWx3 uint8 BGR image, HxW uint8 labelIds) as stored, each decoded once."""
        pair = self.pairs[index]
        image = layout.read_image(pair.image, bgr=True)
        label_ids, _ = layout.read_label(pair.label, (image.shape[1], image.shape[0]))
        return image, label_ids

    def __getitem__(self, item: int | tuple[int, int]) -> dict[str, Any]:
        index, seed = item if isinstance(item, tuple) else (item, item)
        image, label_ids = self.load(index)
        sample: dict[str, Any] = {"stem": self.pairs[index].stem}
        if self.train:  # on labelIds: the id table then runs on the small result only
            image, label_ids = self.transform(image, label_ids, np.random.default_rng(seed))
        else:
            sample["bins"] = torch.from_numpy(bin_index(image))  # max(R, G, B): channel order is free
            image = eval_resize(image, self.eval_size)
        sample["image"] = bgr_to_chw_rgb(image)
        sample["label"] = torch.from_numpy(to_train_ids(label_ids))
        return sample


def to_float(images: torch.Tensor) -> torch.Tensor:
    """Nx3xHxW uint8 (on any device) -> float in [0, 1], the models' input."""
    return images.float().div_(255.0)
