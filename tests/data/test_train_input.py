"""The training input (issue 16, items 2 and 4): the paper's whole-image resize, and crops cut
before scaling with the distribution of "scale the whole image, then crop"."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from egnet.core.config import load_config
from egnet.data.dataset import ScaleCrop, SegmentationDataset, WholeResize, train_transform
from egnet.data.labels import IGNORE_INDEX, to_train_ids
from egnet.data.layout import read_image, read_label, split_pairs
from tests.support import PARAMS, SMALL_SIZE


def _scale_then_crop(t: ScaleCrop, image: np.ndarray, label: np.ndarray, rng: np.random.Generator):
    """The transform as it was: scale the whole image, pad, cut the window, flip. Same draws in the
    same order; the reference the new one must agree with. Image: cv2.resize, bilinear. Label:
    the source pixel under each scaled pixel's centre (numpy, exact; ties go up, as rounding does)."""
    scale = rng.uniform(t.scale_min, t.scale_max)
    fy, fx = rng.random(), rng.random()
    flip = t.hflip and rng.random() < 0.5
    h, w = label.shape
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    image = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR)
    ys = np.minimum(np.floor((np.arange(nh) + 0.5) * h / nh + 1e-9).astype(int), h - 1)
    xs = np.minimum(np.floor((np.arange(nw) + 0.5) * w / nw + 1e-9).astype(int), w - 1)
    label = np.ascontiguousarray(label[ys[:, None], xs[None, :]])
    ph, pw = max(t.crop - nh, 0), max(t.crop - nw, 0)
    image = cv2.copyMakeBorder(image, 0, ph, 0, pw, cv2.BORDER_CONSTANT, value=(0, 0, 0))
    label = cv2.copyMakeBorder(label, 0, ph, 0, pw, cv2.BORDER_CONSTANT, value=IGNORE_INDEX)
    top = int(fy * (label.shape[0] - t.crop + 1))
    left = int(fx * (label.shape[1] - t.crop + 1))
    image, label = image[top:top + t.crop, left:left + t.crop], label[top:top + t.crop, left:left + t.crop]
    return (image[:, ::-1], label[:, ::-1]) if flip else (image, label)


def _scene(h: int = 96, w: int = 192) -> tuple[np.ndarray, np.ndarray]:
    """A smooth image (so bilinear rounding stays small; never black, so black = padding) and a
    label of 12x12 blocks."""
    yy, xx = np.mgrid[0:h, 0:w]
    image = np.stack([xx * 255 / (w - 1), yy * 255 / (h - 1), 16 + (xx + yy) * 239 / (w + h - 2)], axis=-1)
    label = (((yy // 12) * 7 + (xx // 12)) % 19).astype(np.uint8)
    label[:6, :6] = IGNORE_INDEX
    return np.round(image).astype(np.uint8), label


@pytest.mark.parametrize("crop,scales", [(64, (0.5, 2.0)), (150, (0.5, 1.2)), (40, (1.0, 1.0))])
def test_crop_before_scale_equals_scale_then_crop(crop, scales):
    """Same seed -> the same window of the same scaled image as scaling everything first: the
    image within interpolation rounding, the label exact away from class borders, the padding
    exact; so the crops have the old distribution, built from the source pixels only."""
    image, label = _scene()
    t = ScaleCrop(crop, *scales, hflip=True)
    for seed in range(16):
        got_i, got_l = t(image, label, np.random.default_rng(seed))
        want_i, want_l = _scale_then_crop(t, image, label, np.random.default_rng(seed))
        assert got_i.shape == want_i.shape == (crop, crop, 3) and got_l.shape == (crop, crop)
        assert got_i.dtype == np.uint8 and got_l.dtype == np.uint8
        assert np.abs(got_i.astype(int) - want_i.astype(int)).max() <= 2, seed
        assert np.array_equal(got_l, want_l), seed  # the same source pixel under every sample
        padding = (want_i == 0).all(-1)  # the same pixels are padding, with the same fill
        assert np.array_equal((got_i == 0).all(-1), padding)
        assert (got_l[padding] == IGNORE_INDEX).all()


def test_crop_windows_are_drawn_from_the_whole_scaled_image():
    """Top-left corners spread over the scaled image's range, flips about half the time."""
    image, label = _scene(80, 160)
    t = ScaleCrop(32, 1.0, 1.0, hflip=True)
    lefts, flips = [], 0
    for seed in range(200):
        img, _ = t(image, label, np.random.default_rng(seed))
        x = img[0, :, 0].astype(int)  # red encodes the source column
        flips += int(x[0] > x[-1])
        lefts.append(min(x[0], x[-1]))
    assert 70 <= flips <= 130
    assert min(lefts) < 20 and max(lefts) > 180  # left edges from column 0 to 128 (of 0..159 = 0..255)


def test_whole_resize_is_the_whole_image_at_the_training_size():
    image, label = _scene(100, 200)
    t = WholeResize(50, hflip=False)
    img, lab = t(image, label, np.random.default_rng(0))
    assert img.shape == (50, 50, 3) and lab.shape == (50, 50)
    np.testing.assert_array_equal(img, cv2.resize(image, (50, 50), interpolation=cv2.INTER_LINEAR))
    # nearest at pixel centres: output (y, x) takes the source pixel under its centre
    yy, xx = np.mgrid[0:50, 0:50]
    np.testing.assert_array_equal(lab, label[np.floor((yy + 0.5) * 2).astype(int),
                                             np.floor((xx + 0.5) * 4).astype(int)])
    flipped = [WholeResize(50, hflip=True)(image, label, np.random.default_rng(s)) for s in range(40)]
    n = sum(np.array_equal(f[0], img[:, ::-1]) and np.array_equal(f[1], lab[:, ::-1]) for f in flipped)
    same = sum(np.array_equal(f[0], img) for f in flipped)
    assert n + same == 40 and 8 <= n <= 32


def test_params_choose_the_transform():
    paper = load_config(PARAMS)
    assert paper.train.input == "resize" and train_transform(paper.train) == WholeResize(300, True)
    quick = load_config(PARAMS, "quick")
    assert quick.train.input == "resize"
    assert train_transform(quick.train) == WholeResize(quick.train.crop_size, quick.train.hflip)
    crop = load_config(PARAMS, None, ["train.input=crop"])
    assert train_transform(crop.train) == ScaleCrop(300, 0.5, 2.0, True)


@pytest.mark.parametrize("mode", ["resize", "crop"])
def test_samples_are_uint8_rgb_chw_and_uint8_labels(mode, synth_root, split_dir):
    cfg = load_config(PARAMS, "tiny", [f"train.input={mode}", "train.crop_size=64", "train.hflip=false"])
    pairs, _ = split_pairs(synth_root, split_dir, "train")
    ds = SegmentationDataset(pairs, SMALL_SIZE, train=True, transform=train_transform(cfg.train))
    s = ds[(0, 5)]
    assert s["image"].dtype == torch.uint8 and s["image"].shape == (3, 64, 64)
    assert s["label"].dtype == torch.uint8 and s["label"].shape == (64, 64)
    if mode == "crop":  # at scale 0.25 the 256x128 scene is 64x32: the rest of the 64x64 crop is padding
        quarter = ScaleCrop(64, 0.25, 0.25, hflip=False)
        pad = SegmentationDataset(pairs, SMALL_SIZE, train=True, transform=quarter)[(0, 5)]
        assert (pad["label"][32:] == IGNORE_INDEX).all() and (pad["image"][:, 32:] == 0).all()
        assert (pad["label"][:32] != IGNORE_INDEX).any()
    if mode == "resize":  # channels in RGB order: the same as transforming the RGB image
        rgb = read_image(pairs[0].image)
        want = cv2.resize(rgb, (64, 64), interpolation=cv2.INTER_LINEAR)
        assert torch.equal(s["image"], torch.from_numpy(want).permute(2, 0, 1))
        ids, _ = read_label(pairs[0].label, SMALL_SIZE)
        want_l = cv2.resize(to_train_ids(ids), (64, 64), interpolation=cv2.INTER_NEAREST_EXACT)
        assert torch.equal(s["label"], torch.from_numpy(want_l))
