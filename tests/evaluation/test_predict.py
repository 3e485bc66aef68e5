"""egnet predict: output files, sizes, encodings; evaluate == score(predict) for the same model."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from egnet.cli import main
from egnet.data.labels import TRAIN_TO_LABEL, colorize, to_train_ids
from tests.support import read_json, tiny_args


def _val_images(root: Path) -> list[Path]:
    return sorted((root / "NightCity-images" / "images" / "val").glob("*.png"))


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, make_checkpoint) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "train", seed=5)


def test_predict_writes_labelids_colour_and_exposure_at_input_size(synth_root, ckpt, tmp_path) -> None:
    src = _val_images(synth_root)[0]
    odd = tmp_path / "odd_size.png"  # not the inference size, not 2:1
    cv2.imwrite(str(odd), cv2.resize(cv2.imread(str(src)), (200, 120), interpolation=cv2.INTER_AREA))
    out = tmp_path / "pred"
    assert main(["predict", str(src), str(odd), "--model", str(ckpt), "--out", str(out), *tiny_args()]) == 0

    for path, (w, h) in ((src, (256, 128)), (odd, (200, 120))):
        lab = cv2.imread(str(out / f"{path.stem}_labelIds.png"), cv2.IMREAD_UNCHANGED)
        assert lab.shape == (h, w) and lab.dtype == np.uint8
        assert set(np.unique(lab)) <= set(TRAIN_TO_LABEL[:19].tolist())  # only the 19 classes' labelIds
        colour = cv2.cvtColor(cv2.imread(str(out / "color" / f"{path.stem}_color.png")), cv2.COLOR_BGR2RGB)
        assert np.array_equal(colour, colorize(to_train_ids(lab)))
        exp = cv2.imread(str(out / "exposure" / f"{path.stem}_exposure.png"), cv2.IMREAD_UNCHANGED)
        assert exp.shape == (h, w) and exp.dtype == np.uint8
    doc = read_json(out / "predictions.json")
    assert [e["size"] for e in doc["images"]] == [[256, 128], [200, 120]]
    assert doc["model"]["kind"] == "checkpoint" and doc["protocol"]["name"] == "paper"


def test_model_without_exposure_head_writes_no_exposure_maps(synth_root, make_checkpoint, tmp_path) -> None:
    ckpt = make_checkpoint(tmp_path / "train", 0, "model.variant=no_exposure_stream")
    out = tmp_path / "pred"
    assert main(["predict", str(_val_images(synth_root)[0]), "--model", str(ckpt), "--out", str(out),
                 *tiny_args()]) == 0
    assert not (out / "exposure").exists()
    assert "exposure" not in read_json(out / "predictions.json")["images"][0]


def test_evaluate_equals_score_of_predict_output(synth_root, split_dir, ckpt, tmp_path) -> None:
    """Same model, same protocol: evaluate's in-memory numbers == egnet score on predict's PNGs."""
    stems = (split_dir / "test.txt").read_text().split()
    images = [p for p in _val_images(synth_root) if p.stem in stems]
    assert len(images) == len(stems)
    assert main(["evaluate", "--data", str(synth_root), "--split", str(split_dir), "--model", str(ckpt),
                 "--out", str(tmp_path / "eval"), *tiny_args("evaluate.num_qualitative=0")]) == 0
    assert main(["predict", *map(str, images), "--model", str(ckpt), "--out", str(tmp_path / "pred"),
                 *tiny_args()]) == 0
    assert main(["score", str(tmp_path / "pred"), "--data", str(synth_root), "--split", str(split_dir),
                 "--out", str(tmp_path / "score"), "--ids", "labelIds", *tiny_args()]) == 0
    ev, sc = read_json(tmp_path / "eval" / "metrics.json"), read_json(tmp_path / "score" / "metrics.json")
    assert ev["num_images"] == sc["num_images"] == len(stems)
    assert ev["mIoU"] == pytest.approx(sc["mIoU"], abs=1e-12)
    assert ev["mEF1"] == pytest.approx(sc["mEF1"], abs=1e-12)
    assert ev["pixel_acc"] == pytest.approx(sc["pixel_acc"], abs=1e-12)
    assert ev["EF1"] == pytest.approx(sc["EF1"], abs=1e-12)
    assert ev["IoU"] == pytest.approx(sc["IoU"], abs=1e-12)


def test_two_images_with_one_stem_are_refused(synth_root, ckpt, tmp_path, capsys) -> None:
    src = _val_images(synth_root)[0]
    other = tmp_path / "copy" / src.name
    other.parent.mkdir()
    other.write_bytes(src.read_bytes())
    code = main(["predict", str(src), str(other), "--model", str(ckpt), "--out", str(tmp_path / "p"),
                 *tiny_args()])
    assert code == 2 and "same file name" in capsys.readouterr().err
    assert not (tmp_path / "p").exists()
