"""The release layout reader: pairs, orphans, NightCity+ labels, quarantine, split lists."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from egnet.core.errors import DataError
from egnet.data import layout
from tests.support.data import write_pair


def _dataset(root, n=5):
    rng = np.random.default_rng(0)
    pairs = []
    for i in range(n):
        img = rng.integers(0, 256, (32, 64, 3), dtype=np.uint8)
        lab = rng.choice(np.array([7, 8, 11, 26, 0], np.uint8), (32, 64))
        pairs.append(write_pair(root, "val" if i % 2 else "train", f"Town_{i:04d}", img, lab))
    return pairs


def test_scan_release_layout(tmp_path):
    pairs = _dataset(tmp_path)
    listing = layout.scan(tmp_path)
    # sorted by split (train first), then stem
    expected = sorted(((p.split, p.stem) for p in pairs), key=lambda t: (layout.SPLITS.index(t[0]), t[1]))
    assert [(p.split, p.stem) for p in listing.pairs] == expected
    assert listing.pairs[0].image == tmp_path / "NightCity-images" / "images" / "train" / "Town_0000.png"
    label = tmp_path / "NightCity-label" / "label" / "train" / "Town_0000_labelIds.png"
    assert listing.pairs[0].label == label
    # orphans and strays are listed, never paired
    pairs[0].label.unlink()
    pairs[1].image.unlink()
    (tmp_path / layout.IMAGES_DIR / "train" / "readme.txt").write_text("x")
    (tmp_path / layout.IMAGES_DIR / "train" / ".hidden").write_text("x")
    listing = layout.scan(tmp_path)
    assert {p.stem for p in listing.pairs} == {"Town_0002", "Town_0003", "Town_0004"}
    assert listing.orphan_images == (pairs[0].image,)
    assert listing.orphan_labels == (pairs[1].label,)
    assert [p.name for p in listing.stray_files] == ["readme.txt"]


def test_scan_missing_folders(tmp_path):
    with pytest.raises(DataError, match="missing NightCity-images"):
        layout.scan(tmp_path)
    (tmp_path / layout.IMAGES_DIR).mkdir(parents=True)
    with pytest.raises(DataError, match="missing NightCity-label"):
        layout.scan(tmp_path)


def test_read_image_is_rgb(tmp_path):
    img = np.zeros((8, 16, 3), np.uint8)
    img[..., 0] = 200                       # pure red in RGB
    path = tmp_path / "x.png"
    layout.write_png(path, img)
    assert (cv2.imread(str(path))[..., 2] == 200).all()    # OpenCV stores BGR: red is channel 2
    np.testing.assert_array_equal(layout.read_image(path), img)


def test_nightcity_plus_label_resized_nearest(tmp_path):
    """A 2x label is brought to the image size by nearest neighbour: only original values survive."""
    rng = np.random.default_rng(1)
    small = rng.choice(np.array([7, 8, 11, 24, 26, 33], np.uint8), (32, 64))
    big = np.kron(small, np.ones((2, 2), np.uint8))     # what a 2x annotation of the same scene holds
    # a 1-pixel detail at odd coordinates: nearest neighbour may drop it but never blends it into a new value
    big[5, 7] = 0
    path = tmp_path / "Town_0001_labelIds.png"
    layout.write_png(path, big, rgb=False)
    lab, resized = layout.read_label(path, (64, 32))
    assert resized and lab.shape == (32, 64) and lab.dtype == np.uint8
    assert set(np.unique(lab)) <= set(np.unique(big))
    # independent expectation: a 2x block-replicated map comes back exactly
    # (every 2x2 block's pixels share the value, so any nearest sample of the block returns it)
    same = np.ones_like(small, bool)
    same[5 // 2, 7 // 2] = False
    np.testing.assert_array_equal(lab[same], small[same])
    # native size is untouched; other sizes are errors naming the file
    layout.write_png(path, small, rgb=False)
    lab, resized = layout.read_label(path, (64, 32))
    assert not resized and (lab == small).all()
    with pytest.raises(DataError,
                       match=r"Town_0001_labelIds.png: label is 64x32, expected 100x50 \(or 200x100\)"):
        layout.read_label(path, (100, 50))


def test_read_label_rejects_wrong_formats(tmp_path):
    path = tmp_path / "l.png"
    cv2.imwrite(str(path), np.zeros((4, 4), np.uint16))
    with pytest.raises(DataError, match="8-bit"):
        layout.read_label(path)
    cv2.imwrite(str(path), np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(DataError, match="1 channel"):
        layout.read_label(path)
    path.write_bytes(b"")
    with pytest.raises(DataError, match="cannot be decoded"):
        layout.read_label(path)


def test_pairs_by_stem_with_quarantine(tmp_path):
    _dataset(tmp_path)
    assert set(layout.pairs_by_stem(tmp_path)) == {f"Town_{i:04d}" for i in range(5)}
    q = tmp_path / "elsewhere.txt"
    q.write_text("# bad ones\nTown_0001\n\nTown_0003  # truncated\n")
    assert set(layout.pairs_by_stem(tmp_path, q)) == {"Town_0000", "Town_0002", "Town_0004"}
    # DATA/quarantine.txt is read when no file is given
    layout.default_quarantine(tmp_path).write_text("Town_0000\n")
    assert "Town_0000" not in layout.pairs_by_stem(tmp_path)
    # a quarantine file that does not exist quarantines nothing
    assert len(layout.pairs_by_stem(tmp_path, tmp_path / "none.txt")) == 5


def test_select_and_split_lists(tmp_path):
    _dataset(tmp_path)
    pairs = layout.pairs_by_stem(tmp_path)
    lst = tmp_path / "test.txt"
    lst.write_text("Town_0003\nTown_0001\n\n")
    stems = layout.read_split_list(lst)
    assert stems == ["Town_0003", "Town_0001"]
    assert [p.stem for p in layout.select(pairs, stems, str(lst))] == stems   # the list's order is kept
    with pytest.raises(DataError, match=r"test.txt: 2 stem\(s\) have no image/label pair.*first: Gone_0001"):
        layout.select(pairs, ["Gone_0001", "Town_0001", "Gone_0002"], str(lst))
    with pytest.raises(DataError, match="split list not found"):
        layout.read_split_list(tmp_path / "missing.txt")


def test_stem_pattern():
    assert layout.STEM_RE.match("Chicago_0001")
    assert layout.STEM_RE.match("Los-Angeles_1299")
    for bad in ("chicago 0001", "Chicago_001", "Chicago_00001", "_0001", "0Town_0001",
                "Chicago_0001_labelIds"):
        assert not layout.STEM_RE.match(bad), bad
