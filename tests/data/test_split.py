"""`egnet data split`: official folders, stratified re-split, quarantine, the real-release rule."""

from __future__ import annotations

import json

import numpy as np
import pytest

from egnet.cli import main as cli
from egnet.core.errors import DataError
from egnet.data import layout
from egnet.data import split as split_mod
from tests.support import SMALL_SIZE as SIZE
from tests.support.data import data_args, make_dataset


@pytest.fixture
def data_root(synth_root):
    """The session's synthetic dataset: 24 scenes at 256x128, 17 in train/ and 7 in val/."""
    return synth_root


def run(root, mode, seed=0, max_js=0.1, quarantine=None, size=SIZE):
    return split_mod.split(root, mode, seed, 0.3023, max_js, quarantine, size=size, workers=2)


def test_js_distance_hand_worked():
    assert split_mod.js_distance([3, 0], [0, 5]) == pytest.approx(1.0)
    assert split_mod.js_distance([1, 2, 3], [2, 4, 6]) == pytest.approx(0.0, abs=1e-7)
    # p = (1, 0), q = (1/2, 1/2): m = (3/4, 1/4); JSD = 1/2 KL(p|m) + 1/2 KL(q|m) in bits
    kl_p = np.log2(1 / 0.75)
    kl_q = 0.5 * np.log2(0.5 / 0.75) + 0.5 * np.log2(0.5 / 0.25)
    assert split_mod.js_distance([1, 0], [1, 1]) == pytest.approx(np.sqrt((kl_p + kl_q) / 2))
    assert split_mod.js_distance([0, 0], [0, 0]) == 0.0 and split_mod.js_distance([0, 0], [1, 0]) == 1.0


def test_official_uses_release_folders(data_root):
    train, test, report = run(data_root, "official")
    listing = layout.scan(data_root)
    assert train == sorted(p.stem for p in listing.pairs if p.split == "train")
    assert test == sorted(p.stem for p in listing.pairs if p.split == "val")
    assert report["counts"] == {"train": 17, "test": 7} and report["seed"] is None
    assert sum(report["sides"]["test"]["exposure_hist"]) == 7 * SIZE[0] * SIZE[1]


def test_stratified_is_deterministic_disjoint_complete_and_balanced(data_root):
    train, test, report = run(data_root, "stratified", seed=3)
    again = run(data_root, "stratified", seed=3)
    assert (train, test) == again[:2]
    assert not set(train) & set(test)
    assert set(train) | set(test) == {p.stem for p in layout.scan(data_root).pairs}
    assert len(test) == round(24 * 0.3023) == 7
    assert train == sorted(train) and test == sorted(test)
    # stated bound (the default gate); seeds 0-7 give 0.04-0.08 (class) and 0.03-0.04 (exposure)
    assert report["js_class"] < 0.1 and report["js_exposure"] < 0.1
    # and it balances better than the release folders of this data (official: class 0.128)
    official = run(data_root, "official")[2]
    assert report["js_class"] < official["js_class"]
    # the report's JS is the distance between the per-side histograms it lists
    sides = report["sides"]
    assert report["js_exposure"] == pytest.approx(
        split_mod.js_distance(sides["train"]["exposure_hist"], sides["test"]["exposure_hist"]))


def test_quarantined_stems_are_skipped_and_counted(data_root, tmp_path):
    q = tmp_path / "quarantine.txt"
    stems = sorted(p.stem for p in layout.scan(data_root).pairs)
    bad = [stems[3], stems[10]]
    q.write_text(f"{bad[0]}  # bad label\n{bad[1]}\nNot_0001\n")
    for mode in ("official", "stratified"):
        train, test, report = run(data_root, mode, quarantine=q)
        assert not set(bad) & set(train + test)
        assert sorted(train + test) == [s for s in stems if s not in bad]
        assert report["quarantined"] == {"count": 2, "stems": sorted(bad)}


def test_iterative_stratification_puts_rare_labels_on_both_sides():
    rng = np.random.default_rng(0)
    y = np.zeros((20, 3), dtype=bool)
    y[[4, 13], 0] = True        # a rare label on two images
    y[:, 1] = True              # a label every image has
    y[::2, 2] = True
    mask = split_mod.iterative_stratification(y, 6, rng)
    assert y[mask, 0].sum() == 1 and y[~mask, 0].sum() == 1
    assert abs(int(mask.sum()) - 6) <= 1


def test_real_release_rule_checks_official_counts(data_root, monkeypatch):
    # stand-ins for "more than 1,000 pairs" and 2,998 / 1,299 so no 4,297 files are needed
    monkeypatch.setattr(split_mod, "REAL_RELEASE_MIN_PAIRS", 20)
    monkeypatch.setattr(split_mod, "RELEASE_COUNTS", {"train": 18, "val": 6})
    with pytest.raises(DataError, match="train 17 / val 7; the official split is 18 / 6"):
        run(data_root, "official")
    assert run(data_root, "stratified")[2]["counts"]["test"] == 7  # stratified never checks folders
    monkeypatch.setattr(split_mod, "RELEASE_COUNTS", {"train": 17, "val": 7})
    assert run(data_root, "official")[2]["counts"] == {"train": 17, "test": 7}
    monkeypatch.setattr(split_mod, "REAL_RELEASE_MIN_PAIRS", 24)  # not above the threshold: no check
    monkeypatch.setattr(split_mod, "RELEASE_COUNTS", {"train": 1, "val": 1})
    assert run(data_root, "official")[2]["counts"] == {"train": 17, "test": 7}


def test_cli_writes_lists_and_report(data_root, tmp_path):
    out = tmp_path / "split"
    assert cli(data_args("data", "split", str(data_root), "--out", str(out), "--mode", "stratified",
                        "--seed", "5", size=SIZE)) == 0
    train = (out / "train.txt").read_text().split()
    test = (out / "test.txt").read_text().split()
    report = json.loads((out / "split_report.json").read_text())
    assert report["mode"] == "stratified" and report["seed"] == 5
    assert report["counts"] == {"train": len(train), "test": len(test)} and len(test) == 7
    assert (train, test) == run(data_root, "stratified", seed=5)[:2]


def test_js_gate_exits_1_naming_the_measure(data_root, tmp_path, capsys):
    out = tmp_path / "split"
    code = cli(data_args("data", "split", str(data_root), "--out", str(out), "--mode", "stratified",
                        "--set", "split.max_js_distance=0.000001", size=SIZE))
    err = capsys.readouterr().err
    assert code == 1 and "split.max_js_distance" in err
    assert "js_class" in err or "js_exposure" in err
    assert not out.exists()


def test_too_few_pairs_is_a_data_error(tmp_path):
    root = tmp_path / "data"
    make_dataset(root, 2, size=(64, 32))  # Town_0000 in val/, Town_0001 in train/
    (root / "quarantine.txt").write_text("Town_0000\n")
    with pytest.raises(DataError, match="train 1 / test 0 images"):
        run(root, "official", size=(64, 32))
    with pytest.raises(DataError, match="train 1 / test 0 images"):
        run(root, "stratified", size=(64, 32))
