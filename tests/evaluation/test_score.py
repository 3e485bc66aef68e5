"""`egnet score`: perfect predictions score 1, labelIds/trainIds detection, bad prediction sets."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from egnet.cli import main as cli
from egnet.core.errors import DataError
from egnet.data import exposure, labels, layout
from egnet.evaluation.score import detect_ids
from egnet.metrics import ExposureConfusion
from tests.support import tiny_args
from tests.support.data import data_args, make_dataset

SIZE = (64, 32)


@pytest.fixture()
def dataset(tmp_path) -> tuple[Path, Path, list[layout.Pair]]:
    """9 random pairs at 64x32 (3 in val = the test split), and a split dir naming them."""
    root = tmp_path / "data"
    pairs = [p for p in make_dataset(root, 9, size=SIZE, seed=3) if p.split == "val"]
    split = tmp_path / "split"
    split.mkdir()
    (split / "test.txt").write_text("".join(f"{p.stem}\n" for p in pairs))
    return root, split, pairs


def _gt(pair: layout.Pair) -> np.ndarray:
    return cv2.imread(str(pair.label), cv2.IMREAD_UNCHANGED)


def _noisy(pair: layout.Pair, seed: int) -> np.ndarray:
    """The gt labelIds with a third of the pixels replaced by random labelIds (void ids included)."""
    rng = np.random.default_rng(seed)
    pred = _gt(pair).copy()
    noise = rng.random(pred.shape) < 0.33
    pred[noise] = rng.choice(sorted(labels.VALID_LABEL_IDS), size=int(noise.sum()))
    return pred


def _write(pred_dir: Path, name: str, array: np.ndarray) -> None:
    pred_dir.mkdir(parents=True, exist_ok=True)
    layout.write_png(pred_dir / name, array, rgb=False)


def _score(root, split, pred_dir, out=None, *extra) -> int:
    args = ["score", str(pred_dir), "--data", str(root), "--split", str(split), *extra]
    if out is not None:
        args += ["--out", str(out)]
    return cli(data_args(*args, size=SIZE))


@pytest.mark.parametrize("ids", ["labelIds", "trainIds"])
def test_perfect_predictions_score_one(dataset, tmp_path, capsys, ids):
    root, split, pairs = dataset
    preds = tmp_path / "preds"
    for p in pairs:
        gt = _gt(p)
        if ids == "labelIds":
            _write(preds, f"{p.stem}_labelIds.png", gt)
        else:
            _write(preds, f"{p.stem}.png", labels.to_train_ids(gt))  # void -> 255
    assert _score(root, split, preds, tmp_path / "out") == 0
    printed = capsys.readouterr().out
    assert f"predictions: {ids} (detected)" in printed
    m = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert m["mIoU"] == 1.0 and m["mEF1"] == 1.0 and m["pixel_acc"] == 1.0
    assert m["num_images"] == 3 and m["prediction_ids"] == ids and m["ef1_average"] == "weighted"
    present = {labels.CLASS_NAMES[t] for p in pairs for t in np.unique(labels.to_train_ids(_gt(p)))
               if t != 255}
    assert {k for k, v in m["IoU"].items() if v is not None} == present
    assert all(v == 1.0 for k, v in m["IoU"].items() if k in present)
    assert len(m["EF1"]) == 10 and "mIoU 100.0%" in printed


def test_noisy_predictions_match_the_engine_in_both_encodings(dataset, tmp_path):
    """score() (raw-value counts folded after detection) == ExposureConfusion.update on the arrays."""
    root, split, pairs = dataset
    acc = ExposureConfusion()
    for i, p in enumerate(pairs):
        pred = _noisy(p, i)
        _write(tmp_path / "as_label", f"{p.stem}_labelIds.png", pred)
        _write(tmp_path / "as_train", f"{p.stem}.png", labels.to_train_ids(pred))
        image = torch.from_numpy(layout.read_image(p.image)).permute(2, 0, 1)
        acc.update(torch.from_numpy(labels.to_train_ids(pred)).long(),
                   torch.from_numpy(labels.to_train_ids(_gt(p))).long(), exposure.bin_index_torch(image))
    from egnet.evaluation.score import score

    stems = [p.stem for p in pairs]
    for average in ("weighted", "macro", "micro"):
        expected = acc.compute(average)
        for folder, kind in (("as_label", "labelIds"), ("as_train", "trainIds")):
            got = score(tmp_path / folder, root, stems, SIZE, average, workers=2)
            assert got.pop("prediction_ids") == kind and got.pop("labels_resized") == 0
            assert got == expected
    assert 0.2 < expected["mIoU"] < 0.9


def test_override_ids_and_palette_predictions(dataset, tmp_path, capsys):
    root, split, pairs = dataset
    preds = tmp_path / "preds"
    preds.mkdir()
    for p in pairs:  # trainIds written as a palette PNG, as some tools do
        im = Image.fromarray(labels.to_train_ids(_gt(p)), mode="P")
        im.putpalette(labels.PALETTE.ravel().tolist())
        im.save(preds / f"{p.stem}.png")
    assert _score(root, split, preds, None, "--ids", "trainIds") == 0
    assert "predictions: trainIds (given by --ids)" in capsys.readouterr().out
    assert _score(root, split, preds, None, "--ids", "labelIds") == 1
    assert "255, which is no labelId" in capsys.readouterr().err


def test_missing_predictions_exit_1_naming_them(dataset, tmp_path, capsys):
    root, split, pairs = dataset
    preds = tmp_path / "preds"
    _write(preds, f"{pairs[0].stem}.png", _gt(pairs[0]))
    assert _score(root, split, preds, tmp_path / "out") == 1
    err = capsys.readouterr().err
    assert err.startswith("egnet: error:") and "2 of 3 prediction(s) missing" in err
    assert pairs[1].stem in err and pairs[2].stem in err and pairs[0].stem not in err
    assert not (tmp_path / "out").exists()


def test_mis_sized_predictions_exit_1_naming_them(dataset, tmp_path, capsys):
    root, split, pairs = dataset
    preds = tmp_path / "preds"
    for i, p in enumerate(pairs):
        gt = _gt(p)
        _write(preds, f"{p.stem}.png", gt if i else cv2.resize(gt, (32, 16), interpolation=cv2.INTER_NEAREST))
    assert _score(root, split, preds) == 1
    err = capsys.readouterr().err
    assert f"1 prediction(s) are not 64x32: {pairs[0].stem}.png (32x16)" in err


def test_colour_and_mixed_predictions_exit_1(dataset, tmp_path, capsys):
    root, split, pairs = dataset
    colour = tmp_path / "colour"
    for p in pairs:
        colour.mkdir(exist_ok=True)
        layout.write_png(colour / f"{p.stem}.png", labels.colorize(labels.to_train_ids(_gt(p))))
    assert _score(root, split, colour) == 1
    assert "3 channels" in capsys.readouterr().err
    mixed = tmp_path / "mixed"
    for p in pairs:
        pred = labels.to_train_ids(_gt(p))
        pred[0, :8] = 26  # car as a labelId beside trainIds' 255
        _write(mixed, f"{p.stem}.png", pred)
    assert _score(root, split, mixed) == 1
    assert "mix 255 (trainIds) with [26]" in capsys.readouterr().err
    odd = tmp_path / "odd"
    for p in pairs:
        pred = _gt(p)
        pred[-1, -3:] = 40  # neither encoding has 40
        _write(odd, f"{p.stem}.png", pred)
    assert _score(root, split, odd) == 1
    assert "values [40] are neither labelIds" in capsys.readouterr().err


def test_nightcity_plus_labels_are_resized(dataset, tmp_path, capsys):
    root, split, pairs = dataset
    preds = tmp_path / "preds"
    for p in pairs:
        gt = _gt(p)
        _write(preds, f"{p.stem}_labelIds.png", gt)
        big = np.kron(gt, np.ones((2, 2), dtype=np.uint8))  # 2x, as NightCity+ val labels
        layout.write_png(p.label, big, rgb=False)
    assert _score(root, split, preds, tmp_path / "out") == 0
    assert "3 label(s) were 2x the image size" in capsys.readouterr().out
    m = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert m["labels_resized"] == 3 and m["mIoU"] == 1.0


def test_prefers_labelids_name_when_both_exist(dataset, tmp_path):
    root, split, pairs = dataset
    preds = tmp_path / "preds"
    for p in pairs:
        _write(preds, f"{p.stem}_labelIds.png", _gt(p))
        # a viewer copy
        layout.write_png(preds / f"{p.stem}.png", labels.colorize(labels.to_train_ids(_gt(p))))
    assert _score(root, split, preds) == 0
    shutil.rmtree(preds)
    assert _score(root, split, preds) == 1  # the folder itself is gone


@pytest.mark.parametrize(("values", "expected"), [
    ({0, 1, 2, 10, 18, 255}, "trainIds"),        # 255 present
    ({0, 7, 8, 11, 21, 23, 26}, "labelIds"),     # ids above 18
    ({0, 7, 8, 11, 17}, "trainIds"),             # within 0..18: trainIds (documented choice)
    (set(), "trainIds"),
])
def test_detect_ids_rule(values, expected):
    assert detect_ids(values) == expected


@pytest.mark.parametrize(("values", "ids", "message"), [
    ({0, 40}, "auto", "neither labelIds"),
    ({1, 255, 33}, "auto", "mix 255"),
    ({1, 19}, "trainIds", "no trainIds"),
    ({1, 255}, "labelIds", "no labelId"),
])
def test_detect_ids_refuses(values, ids, message):
    with pytest.raises(DataError, match=message):
        detect_ids(values, ids)


def test_ground_truth_as_prediction_scores_one_on_synthetic_data(synth_root, split_dir, tmp_path, capsys):
    """The shared synthetic dataset (256x128): copying the test labels as predictions gives 1.0."""
    stems = layout.read_split_list(split_dir / "test.txt")
    pairs = layout.pairs_by_stem(synth_root)
    preds = tmp_path / "preds"
    preds.mkdir()
    for stem in stems:
        shutil.copy(pairs[stem].label, preds / f"{stem}_labelIds.png")
    args = ["score", str(preds), "--data", str(synth_root), "--split", str(split_dir),
            "--out", str(tmp_path / "out"), *tiny_args()]
    assert cli(args) == 0
    m = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert m["num_images"] == len(stems) > 0 and m["prediction_ids"] == "labelIds"
    assert m["mIoU"] == 1.0 and m["mEF1"] == 1.0 and m["pixel_acc"] == 1.0
    assert sum(v is not None for v in m["EF1"]) >= 3  # night scenes span several exposure bins
    assert "predictions: labelIds (detected)" in capsys.readouterr().out
