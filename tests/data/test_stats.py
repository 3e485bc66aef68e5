"""`egnet data stats`: per-image statistics against direct numpy counts and hand-worked bins."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from egnet.cli import main as cli
from egnet.core.errors import DataError
from egnet.data import exposure, labels, layout, stats
from tests.support import SMALL_SIZE
from tests.support.data import data_args, make_dataset, random_pair, write_pair


def direct_stats(image: np.ndarray, label_ids: np.ndarray):
    """Independent reference: float V map, float-path bins, boolean masks per class."""
    v = exposure.value_map(image)
    bins = exposure.bin_index(v)  # float path
    train = labels.to_train_ids(label_ids)
    cls = np.array([np.sum(train == c) for c in range(labels.NUM_CLASSES)])
    hist = np.array([np.sum(bins == b) for b in range(exposure.NUM_BINS)])
    vsum = np.array([v[train == c].astype(np.float64).sum() for c in range(labels.NUM_CLASSES)])
    cbin = np.array([[np.sum((train == c) & (bins == b)) for b in range(10)] for c in range(19)])
    return cls, hist, vsum, cbin


def test_image_stats_match_direct_computation(tmp_path):
    rng = np.random.default_rng(1)
    size = (40, 24)
    image, label = random_pair(rng, size)
    label[0, :5] = [250, 34, 1, 5, 21]  # unknown ids and void ids are ignored; 21 is vegetation
    pair = write_pair(tmp_path, "train", "Town_0001", image, label)
    got = stats.image_stats(pair, size)
    cls, hist, vsum, cbin = direct_stats(image, label)
    assert got.exposure_hist.sum() == 40 * 24
    assert got.exposure_hist.tolist() == hist.tolist()
    assert got.class_pixels.tolist() == cls.tolist()
    assert got.class_exposure_hist.tolist() == cbin.tolist()
    np.testing.assert_allclose(got.class_exposure_sum, vsum, rtol=1e-6)
    assert got.class_pixels[labels.CLASS_NAMES.index("vegetation")] >= 1
    assert not got.resized


def test_hand_made_values_land_in_the_right_bins(tmp_path):
    # V = max channel: 0 -> 0, 25 (0.098) -> 0, 26 (0.102) -> 1, 51 (0.2) -> 2, 127 -> 4, 128 -> 5,
    # 229 (0.898) -> 8, 230 (0.902) -> 9, 255 (1.0) -> 9
    v = np.array([0, 25, 26, 51, 127, 128, 229, 230, 255], dtype=np.uint8)
    image = np.stack([v // 3, v, v // 2], axis=-1)[None]  # green holds the max
    label = np.array([[7, 7, 7, 26, 26, 26, 0, 0, 23]], dtype=np.uint8)  # road, car, unlabeled, sky
    pair = write_pair(tmp_path, "train", "Town_0001", image, label)
    got = stats.image_stats(pair, (9, 1))
    assert got.exposure_hist.tolist() == [2, 1, 1, 0, 1, 1, 0, 0, 1, 2]
    road, car, sky = (labels.CLASS_NAMES.index(n) for n in ("road", "car", "sky"))
    assert got.class_pixels[[road, car, sky]].tolist() == [3, 3, 1] and got.class_pixels.sum() == 7
    assert got.class_exposure_hist[road].tolist() == [2, 1, 0, 0, 0, 0, 0, 0, 0, 0]
    assert got.class_exposure_hist[sky].tolist() == [0] * 9 + [1]
    assert got.class_exposure_sum[road] == pytest.approx((0 + 25 + 26) / 255)
    assert got.class_exposure_sum[car] == pytest.approx((51 + 127 + 128) / 255)
    # the float path of the one exposure definition: exactly 0.1 is bin 1, 1.0 is bin 9
    assert exposure.bin_index(np.array([0.1, 0.0999, 1.0])).tolist() == [1, 0, 9]


def test_all_256_values_agree_with_the_float_definition(tmp_path):
    v = np.arange(256, dtype=np.uint8).reshape(16, 16)
    image = np.stack([v, v // 2, v // 4], axis=-1)
    label = np.full((16, 16), 7, np.uint8)
    got = stats.image_stats(write_pair(tmp_path, "train", "Town_0001", image, label), (16, 16))
    bins = exposure.bin_index(exposure.value_map(image))
    assert got.exposure_hist.tolist() == np.bincount(bins.ravel()).tolist()


def test_bincount_fallback_equals_calchist(tmp_path, monkeypatch):
    rng = np.random.default_rng(2)
    pair = write_pair(tmp_path, "train", "Town_0001", *random_pair(rng, (48, 32)))
    fast = stats.image_stats(pair, (48, 32))
    monkeypatch.setattr(stats, "_CALCHIST_MAX_PIXELS", 0)
    slow = stats.image_stats(pair, (48, 32))
    for a, b in zip(fast, slow, strict=True):
        np.testing.assert_array_equal(a, b)


def test_nightcity_plus_label_is_resized_nearest(tmp_path):
    rng = np.random.default_rng(3)
    image, _ = random_pair(rng, (32, 16))
    _, big = random_pair(rng, (64, 32))
    pair = write_pair(tmp_path, "val", "Town_0001", image, big)
    got = stats.image_stats(pair, (32, 16))
    assert got.resized
    small = cv2.resize(big, (32, 16), interpolation=cv2.INTER_NEAREST)
    assert got.class_pixels.tolist() == direct_stats(image, small)[0].tolist()


def _split_lists(out, train, test):
    out.mkdir(parents=True, exist_ok=True)
    (out / "train.txt").write_text("".join(f"{p.stem}\n" for p in train))
    (out / "test.txt").write_text("".join(f"{p.stem}\n" for p in test))
    return out


def test_compute_stats_totals_and_averages(tmp_path):
    root = tmp_path / "data"
    pairs = make_dataset(root, 9, size=(64, 32), seed=4)
    train, test = [p for p in pairs if p.split == "train"], [p for p in pairs if p.split == "val"]
    (root / "quarantine.txt").write_text(f"{train[0].stem}\n")  # quarantined after the split: skipped
    split_dir = _split_lists(tmp_path / "split", train, test)
    doc = stats.compute_stats(root, split_dir, (64, 32), workers=2)
    for name, side in (("train", train[1:]), ("test", test)):
        refs = [direct_stats(layout.read_image(p.image), layout.read_label(p.label)[0]) for p in side]
        hist = np.sum([r[1] for r in refs], axis=0)
        cls = np.sum([r[0] for r in refs], axis=0)
        vsum = np.sum([r[2] for r in refs], axis=0)
        assert doc["num_images"][name] == len(side)
        np.testing.assert_allclose(doc["avg_pixels_per_image"][name], hist / len(side))
        assert sum(doc["avg_pixels_per_image"][name]) == pytest.approx(64 * 32)
        assert doc["exposure_hist"][name] == hist.tolist()
        assert list(doc["class_pixels"][name].values()) == cls.tolist()
        assert list(doc["class_pixels"][name]) == list(labels.CLASS_NAMES)
        means = [doc["class_mean_exposure"][name][c] for c in labels.CLASS_NAMES]
        for m, s, n in zip(means, vsum, cls, strict=True):
            assert (m is None) if n == 0 else m == pytest.approx(s / n, rel=1e-6)
    assert doc["quarantined_skipped"] == {"train": 1, "test": 0}
    assert doc["exposure_bins"][0] == [0.0, 0.1] and doc["exposure_bins"][9] == [0.9, 1.0]


def test_cli_writes_json_and_charts(tmp_path):
    root = tmp_path / "data"
    pairs = make_dataset(root, 6, size=(64, 32), seed=5)
    split_dir = _split_lists(tmp_path / "split", [p for p in pairs if p.split == "train"],
                             [p for p in pairs if p.split == "val"])
    out = tmp_path / "stats"
    assert cli(data_args("data", "stats", str(root), "--split", str(split_dir), "--out", str(out))) == 0
    doc = json.loads((out / "stats.json").read_text())
    assert doc["num_images"] == {"train": 4, "test": 2}
    assert doc["labels_resized"] == {"train": 0, "test": 0}
    for png in ("class_distribution.png", "exposure_distribution.png", "class_mean_exposure.png"):
        img = cv2.imread(str(out / png))
        assert img is not None and img.shape[0] > 100


def test_corrupt_image_fails_without_output(tmp_path, capsys):
    root = tmp_path / "data"
    pairs = make_dataset(root, 12, size=(64, 32), seed=6)
    bad = pairs[7].image
    bad.write_bytes(bad.read_bytes()[:60])  # truncated PNG
    split_dir = _split_lists(tmp_path / "split", [p for p in pairs if p.split == "train"],
                             [p for p in pairs if p.split == "val"])
    out = tmp_path / "out" / "stats"
    code = cli(data_args("data", "stats", str(root), "--split", str(split_dir), "--out", str(out)))
    err = capsys.readouterr().err
    assert code == 1
    assert str(bad) in err and err.startswith("egnet: error:") and "Traceback" not in err
    assert not out.exists() and not list(tmp_path.rglob(".stats.tmp-*"))


def test_failure_while_writing_leaves_no_output(tmp_path, monkeypatch, capsys):
    root = tmp_path / "data"
    pairs = make_dataset(root, 6, size=(64, 32), seed=7)
    split_dir = _split_lists(tmp_path / "split", [p for p in pairs if p.split == "train"],
                             [p for p in pairs if p.split == "val"])
    out = tmp_path / "stats"

    def broken(*_a, **_k):
        raise DataError("chart: disk full")

    monkeypatch.setattr(stats, "write_charts", broken)
    assert cli(data_args("data", "stats", str(root), "--split", str(split_dir), "--out", str(out))) == 1
    assert "disk full" in capsys.readouterr().err
    assert not out.exists() and not list(tmp_path.glob(".stats.tmp-*"))


def test_wrong_image_size_names_the_file(tmp_path):
    root = tmp_path / "data"
    pair = write_pair(root, "train", "Town_0001", *random_pair(np.random.default_rng(8), (64, 32)))
    with pytest.raises(DataError, match="Town_0001.png: image is 64x32, expected 32x16"):
        stats.image_stats(pair, (32, 16))


def test_cli_on_synthetic_data(synth_root, split_dir, tmp_path):
    out = tmp_path / "stats"
    assert cli(data_args("data", "stats", str(synth_root), "--split", str(split_dir), "--out", str(out),
                        size=SMALL_SIZE)) == 0
    doc = json.loads((out / "stats.json").read_text())
    w, h = SMALL_SIZE
    for name in ("train", "test"):
        stems = layout.read_split_list(split_dir / f"{name}.txt")
        assert doc["num_images"][name] == len(stems)
        assert sum(doc["avg_pixels_per_image"][name]) == pytest.approx(w * h)
        assert sum(doc["class_pixels"][name].values()) + doc["ignored_pixels"][name] == len(stems) * w * h
        # synthetic night scenes: the darkest bins hold most pixels, as in the paper's Fig. 4
        assert np.argmax(doc["avg_pixels_per_image"][name]) <= 2
    assert sorted(p.name for p in out.iterdir()) == [
        "class_distribution.png", "class_mean_exposure.png", "class_pixels.csv", "exposure_distribution.png",
        "exposure_hist.csv", "stats.json"]
    # the CSV series `dvc plots` draws carry the same numbers as stats.json
    import csv

    rows = list(csv.DictReader((out / "exposure_hist.csv").open()))
    assert [float(r["test"]) for r in rows] == pytest.approx(doc["avg_pixels_per_image"]["test"])
    rows = list(csv.DictReader((out / "class_pixels.csv").open()))
    assert {r["class"]: int(r["train"]) for r in rows} == doc["class_pixels"]["train"]


def test_bar_chart_edge_cases(tmp_path):
    from egnet.data import charts as plots

    # all-zero / missing values on a log axis still make a chart; a short series is refused
    path = plots.class_chart(tmp_path / "c.png", {"train": [0] * 19, "test": [None] * 19}, "t", "y", log=True)
    assert cv2.imread(str(path)) is not None
    with pytest.raises(ValueError, match="9 values for 10 labels"):
        plots.exposure_chart(tmp_path / "e.png", {"train": [1.0] * 9}, "t", "y")
