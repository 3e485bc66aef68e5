"""Dataset and joint transforms: image and label move together; eval keeps full-size labels."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from egnet.core.errors import DataError
from egnet.data import layout
from egnet.data.dataset import ScaleCrop, SegmentationDataset, eval_resize
from egnet.data.exposure import bin_index
from egnet.data.labels import IGNORE_INDEX, to_train_ids
from egnet.data.layout import split_pairs


def _coded_pair(h: int = 40, w: int = 60) -> tuple[np.ndarray, np.ndarray]:
    """A label of 10x10 blocks with classes 0..18, and an image whose red channel is 10*class+5
    (so every image pixel says which label it belongs with)."""
    yy, xx = np.mgrid[0:h, 0:w]
    label = ((yy // 10) * 7 + (xx // 10)) % 19
    image = np.zeros((h, w, 3), np.uint8)
    image[..., 0] = label * 10 + 5
    image[..., 1] = xx * 4  # position code: shows flips
    return image, label.astype(np.uint8)


def test_crop_and_flip_move_image_and_label_together():
    image, label = _coded_pair()
    t = ScaleCrop(crop=24, scale_min=1.0, scale_max=1.0, hflip=True)
    flips = 0
    for seed in range(20):
        img, lab = t(image, label, np.random.default_rng(seed))
        assert img.shape == (24, 24, 3) and lab.shape == (24, 24)
        assert np.array_equal(img[..., 0], lab.astype(np.uint8) * 10 + 5)  # exact at scale 1
        flips += int(img[0, 0, 1] > img[0, -1, 1])
    assert 3 <= flips <= 17  # about half of the draws flip


def test_scaled_crops_put_each_label_where_its_image_pixel_came_from():
    """Image channels encode the source position (R ~ x, G ~ y); the output label at a pixel
    must be the source label at the position its image pixel encodes (2 px from block edges)."""
    h, w, block = 160, 240, 20
    yy, xx = np.mgrid[0:h, 0:w]
    label = (((yy // block) * 7 + (xx // block)) % 19).astype(np.uint8)
    image = np.stack([np.round(xx * 255 / (w - 1)), np.round(yy * 255 / (h - 1)), np.zeros_like(xx)],
                     axis=-1).astype(np.uint8)
    t = ScaleCrop(crop=64, scale_min=0.5, scale_max=2.0, hflip=True)
    checked = 0
    for seed in range(12):
        img, lab = t(image, label, np.random.default_rng(seed))
        x_src = img[..., 0].astype(float) * (w - 1) / 255
        y_src = img[..., 1].astype(float) * (h - 1) / 255
        inner = ((x_src % block > 2) & (x_src % block < block - 2) &
                 (y_src % block > 2) & (y_src % block < block - 2) & (lab != IGNORE_INDEX))
        expected = label[np.round(y_src).astype(int), np.round(x_src).astype(int)]
        assert np.array_equal(lab[inner], expected[inner]), seed
        checked += int(inner.sum())
    assert checked > 12 * 64 * 64 * 0.3


def test_padding_is_zero_for_the_image_and_ignore_for_the_label():
    image, label = _coded_pair(20, 30)
    t = ScaleCrop(crop=50, scale_min=1.0, scale_max=1.0, hflip=False)
    img, lab = t(image, label, np.random.default_rng(0))
    assert img.shape == (50, 50, 3)
    assert np.array_equal(lab[:20, :30], label) and np.array_equal(img[:20, :30], image)
    assert (lab[20:] == IGNORE_INDEX).all() and (lab[:, 30:] == IGNORE_INDEX).all()
    assert (img[20:] == 0).all() and (img[:, 30:] == 0).all()


def test_same_seed_same_sample_different_seed_different_sample():
    image, label = _coded_pair(80, 120)
    t = ScaleCrop(crop=32, scale_min=0.5, scale_max=2.0, hflip=True)
    a = t(image, label, np.random.default_rng(3))
    b = t(image, label, np.random.default_rng(3))
    c = t(image, label, np.random.default_rng(4))
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not np.array_equal(a[0], c[0])


def test_train_and_eval_samples_from_the_release_layout(synth_root, split_dir):
    pairs, _ = split_pairs(synth_root, split_dir, "train")
    t = ScaleCrop(crop=64, scale_min=0.75, scale_max=1.25, hflip=True)
    ds = SegmentationDataset(pairs, (256, 128), train=True, transform=t)
    s = ds[(0, 123)]
    assert s["image"].dtype == torch.uint8 and s["image"].shape == (3, 64, 64)
    assert s["label"].dtype == torch.uint8 and s["label"].shape == (64, 64)
    assert set(s["label"].unique().tolist()) <= set(range(19)) | {IGNORE_INDEX}
    assert torch.equal(ds[(0, 123)]["image"], s["image"])  # the seed, not worker state, decides

    test_pairs, _ = split_pairs(synth_root, split_dir, "test")
    ev = SegmentationDataset(test_pairs, (256, 128), train=False, eval_size=(96, 80))
    e = ev[0]
    image = layout.read_image(test_pairs[0].image)
    ids, _ = layout.read_label(test_pairs[0].label, (256, 128))
    assert e["image"].shape == (3, 80, 96)  # resized to eval_size (width 96, height 80)
    assert torch.equal(e["image"], torch.from_numpy(eval_resize(image, (96, 80))).permute(2, 0, 1))
    assert torch.equal(e["label"], torch.from_numpy(to_train_ids(ids)))  # full size, exact, uint8
    assert torch.equal(e["bins"], torch.from_numpy(bin_index(image)))  # bins of the full-size image
    assert e["stem"] == test_pairs[0].stem


def test_quarantined_stems_are_skipped(synth_root, split_dir, tmp_path):
    stems = layout.read_split_list(split_dir / "train.txt")
    q = tmp_path / "quarantine.txt"
    q.write_text(f"{stems[1]}  # bad label\n")
    pairs, skipped = split_pairs(synth_root, split_dir, "train", quarantine=q)
    assert [p.stem for p in pairs] == [s for s in stems if s != stems[1]] and skipped == 1
    bad_split = tmp_path / "split"
    bad_split.mkdir()
    (bad_split / "train.txt").write_text("Nowhere_0001\n")
    with pytest.raises(DataError, match="Nowhere_0001"):
        split_pairs(synth_root, bad_split, "train")
