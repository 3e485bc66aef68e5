"""Synthetic NightCity scenes: exact release layout, determinism, night-time exposure, valid labels."""

from __future__ import annotations

import hashlib

import cv2
import numpy as np
import pytest

from egnet.cli import main
from egnet.core.errors import ConfigError
from egnet.data import labels, layout
from egnet.data.exposure import NUM_BINS, bin_index
from egnet.data.synth import render_scene, scene_name, split_of, synthesize
from tests.support.data import data_args

SIZE = (256, 128)


def _digest(root):
    """Relative path -> content hash of every file under root."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth") / "nc"
    summary = synthesize(root, num=16, seed=3, size=SIZE)
    return root, summary


def test_layout_is_exactly_the_release(small):
    root, summary = small
    listing = layout.scan(root)
    assert len(listing.pairs) == 16
    assert not listing.orphan_images and not listing.orphan_labels and not listing.stray_files
    # nothing besides the two release trees
    assert sorted(p.name for p in root.iterdir()) == ["NightCity-images", "NightCity-label"]
    by_split = {s: sum(p.split == s for p in listing.pairs) for s in layout.SPLITS}
    assert by_split == {"train": summary["train"], "val": summary["val"]}
    assert by_split["val"] == round(16 * 0.3023)
    for pair in listing.pairs:
        assert layout.STEM_RE.match(pair.stem)
        assert pair.image == layout.image_path(root, pair.split, pair.stem)
        assert pair.label == layout.label_path(root, pair.split, pair.stem)
        assert pair.image.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        img = layout.read_image(pair.image)          # raises unless 8-bit 3-channel
        lab, resized = layout.read_label(pair.label, SIZE)  # raises unless 8-bit 1-channel at SIZE
        assert img.shape == (SIZE[1], SIZE[0], 3) and not resized
        assert labels.unknown_ids(lab) == []


def test_same_seed_same_bytes_other_seed_differs(tmp_path, small):
    root, _ = small
    again = tmp_path / "again"
    synthesize(again, num=16, seed=3, size=SIZE, workers=2)   # a pool must not change the bytes
    assert _digest(again) == _digest(root)
    other = tmp_path / "other"
    synthesize(other, num=16, seed=4, size=SIZE)
    a, b = _digest(root), _digest(other)
    shared = set(a) & set(b)
    assert not any(a[k] == b[k] for k in shared)
    # scene i depends only on (seed, i): the first scenes of a longer run are the same files
    longer = tmp_path / "longer"
    synthesize(longer, num=3, seed=3, size=SIZE)
    for pair in layout.scan(longer).pairs:
        stem = pair.stem
        src = next(p for p in layout.scan(root).pairs if p.stem == stem)
        assert pair.image.read_bytes() == src.image.read_bytes()


def test_night_exposure_shape(small):
    """Fig. 4 shape: the darkest bin is the largest, most pixels have V < 0.2, a visible [0.9, 1] tail."""
    root, summary = small
    counts = np.zeros(NUM_BINS, np.int64)
    for pair in layout.scan(root).pairs:
        img = layout.read_image(pair.image)
        # independent of egnet.data.exposure.histogram: HSV V from OpenCV's own conversion
        v = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)[..., 2].astype(np.int64)
        counts += np.bincount(np.minimum(v * 10 // 255, 9).ravel(), minlength=NUM_BINS)
        assert (bin_index(img) == np.minimum(v * 10 // 255, 9)).all()
    frac = counts / counts.sum()
    assert frac.argmax() == 0
    assert frac[:2].sum() > 0.5
    assert frac[9] > 0.002
    assert frac[5:9].sum() > 0.01     # blooms fade through the middle bins
    np.testing.assert_allclose(summary["exposure_fraction"], frac, atol=1e-4)


def test_classes_and_labels(small):
    root, summary = small
    present = np.zeros(256, bool)
    per_image = []
    for pair in layout.scan(root).pairs:
        lab, _ = layout.read_label(pair.label)
        ids = np.unique(lab)
        present[ids] = True
        per_image.append(len(ids))
        assert set(ids.tolist()) <= labels.VALID_LABEL_IDS
    train_classes = {labels.CLASS_NAMES[t] for t in np.unique(labels.LABEL_TO_TRAIN[np.flatnonzero(present)])
                     if t != labels.IGNORE_INDEX}
    assert len(train_classes) >= 12
    assert {"road", "sidewalk", "building", "sky", "car", "pole", "vegetation", "person"} <= train_classes
    assert set(summary["classes"]) == train_classes
    assert min(per_image) >= 6                   # every scene is a street, not a single class
    assert present[0] or present[1]              # some ignore regions (unlabelled / ego vehicle)


def test_classes_not_one_pixel_value():
    """No class is a single colour: noise and per-instance colours spread each class's values."""
    img, lab = render_scene(scene_name(0, 5)[1], *SIZE)
    for cid in (7, 11, 23):
        pix = img[lab == cid]
        if len(pix) > 50:
            assert len(np.unique(pix, axis=0)) > 10
    # and the image/label pair agree in size
    assert img.shape[:2] == lab.shape


def test_split_counts():
    assert split_of(10, 0, 0.3).count("val") == 3
    assert split_of(2, 0, 0.1).count("val") == 1      # both splits non-empty once there are 2 scenes
    assert split_of(1, 0, 0.3) == ["train"]
    assert split_of(50, 1, 0.3) == split_of(50, 1, 0.3)


def test_bad_arguments_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="num"):
        synthesize(tmp_path / "x", num=0, seed=0, size=SIZE)
    with pytest.raises(ConfigError, match="seed"):
        synthesize(tmp_path / "x", num=1, seed=-1, size=SIZE)
    with pytest.raises(ConfigError, match="too small"):
        synthesize(tmp_path / "x", num=1, seed=0, size=(8, 4))
    assert not (tmp_path / "x").exists()


def test_cli(tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["data", "synth", "--out", str(out), "--num", "3", "--seed", "1", "--size", "64x32",
                 *data_args()[0:2]]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("synth: 3 scenes") and "64x32" in line and "\n" not in line
    assert len(layout.scan(out).pairs) == 3
    # defaults come from params: data.synth_num and data.image_size
    out2 = tmp_path / "cli2"
    assert main(["data", "synth", "--out", str(out2), *data_args(size=(64, 32)),
                 "--set", "data.synth_num=2"]) == 0
    pairs = layout.scan(out2).pairs
    assert len(pairs) == 2 and layout.read_image(pairs[0].image).shape == (32, 64, 3)
