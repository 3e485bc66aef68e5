"""The exposure definition and the label table, against hand-worked values and cityscapesscripts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from cityscapesscripts.helpers.labels import id2label, trainId2label
from cityscapesscripts.helpers.labels import labels as cs_labels

from egnet.data import exposure, labels


def test_value_map_is_max_rgb_over_255():
    img = np.array([[[10, 200, 30], [255, 0, 0]], [[0, 0, 0], [12, 13, 14]]], dtype=np.uint8)
    np.testing.assert_allclose(exposure.value_map(img), np.array([[200, 255], [0, 14]]) / 255.0, rtol=1e-6)


def test_bins_on_uint8_edges():
    # V = k/255: 25/255 = 0.098 -> bin 0; 26/255 = 0.102 -> bin 1; 229/255 = 0.898 -> 8; 230/255 = 0.902 -> 9
    v = np.array([0, 25, 26, 51, 76, 77, 127, 128, 229, 230, 254, 255], dtype=np.uint8)
    img = np.stack([v, v // 2, v // 3], axis=-1)[None]  # max channel is v
    expected = [0, 0, 1, 2, 2, 3, 4, 5, 8, 9, 9, 9]
    assert exposure.bin_index(img)[0].tolist() == expected
    got_t = exposure.bin_index_torch(torch.from_numpy(img).permute(2, 0, 1).contiguous())
    assert got_t[0].tolist() == expected


def test_bins_on_float_values_including_exact_edges():
    v = np.array([0.0, 0.0999, 0.1, 0.2, 0.3, 0.6, 0.7, 0.8999, 0.9, 0.95, 1.0])
    assert exposure.bin_index(v).tolist() == [0, 0, 1, 2, 3, 6, 7, 8, 9, 9, 9]
    assert len(exposure.BIN_NAMES) == 10 and exposure.BIN_NAMES[-1] == "[0.9,1.0]"


def test_histogram_counts_all_pixels():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, size=(37, 53, 3), dtype=np.uint8)
    hist = exposure.histogram(img)
    assert hist.sum() == 37 * 53
    direct = [np.sum((img.max(2) / 255 >= lo) & ((img.max(2) / 255 < hi) if i < 9 else True))
              for i, (lo, hi) in enumerate(exposure.BIN_EDGES)]
    assert hist.tolist() == direct


def test_label_mapping_equals_cityscapesscripts_for_every_id():
    for lab in cs_labels:
        if lab.id < 0:
            continue
        expected = lab.trainId if 0 <= lab.trainId < 255 else 255
        assert labels.to_train_ids(np.array([[lab.id]], dtype=np.uint8))[0, 0] == expected, lab.name
    # ids beyond the table are ignore, never a class
    assert labels.to_train_ids(np.array([[34, 200, 255]], dtype=np.uint8)).tolist() == [[255, 255, 255]]
    assert labels.VALID_LABEL_IDS == set(range(34))


def test_inverse_mapping_palette_and_names():
    train = np.arange(19, dtype=np.uint8)
    back = labels.to_label_ids(train)
    for t, lid in zip(train, back, strict=True):
        assert id2label[int(lid)].trainId == t
        assert labels.CLASS_NAMES[t] == trainId2label[int(t)].name
        assert tuple(labels.colorize(np.array([[t]]))[0, 0]) == trainId2label[int(t)].color
    assert labels.to_label_ids(np.array([255]))[0] == 0
    assert labels.unknown_ids(np.array([[0, 7, 34, 99]], dtype=np.uint8)) == [34, 99]


def test_bins_take_the_max_channel_wherever_it_is_contiguous_or_not():
    """OpenCV's split/max path (contiguous 3-channel images) and NumPy's (views, a 4th channel,
    which is not colour) against the max of the first three channels."""
    img = np.random.default_rng(1).integers(0, 256, size=(29, 41, 4), dtype=np.uint8)
    rgb = np.ascontiguousarray(img[..., :3])
    for im in (rgb, rgb[..., ::-1], rgb[:, ::2], img):
        expected = np.minimum(im[..., :3].max(2).astype(np.int64) * 10 // 255, 9)
        assert np.array_equal(exposure.bin_index(im), expected)
        if im.shape[2] == 3:
            np.testing.assert_allclose(exposure.value_map(im), im.max(2) / 255.0, rtol=1e-6)
    with pytest.raises(ValueError, match="HxWx3"):
        exposure.value_map(img)
