"""egnet evaluate and the shared inference (egnet/evaluation/inference.py), without an MLflow server.

MLflow logging into the training run is tested against a real server in tests/registry/test_registry.py.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from egnet.cli import main
from egnet.core.errors import ConfigError
from egnet.evaluation import inference
from egnet.evaluation.evaluate import qualitative_indices
from egnet.tracking import registered
from tests.support import read_json, tiny_args
from tests.support.services import free_port


class PixelLinear(nn.Module):
    """A 1x1 conv 'segmenter' that records the input sizes it sees (flip-equivariant)."""

    has_exposure_head = True

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv2d(3, 19, 1)
        self.seen: list[tuple[int, int]] = []

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        self.seen.append(tuple(x.shape[-2:]))
        return {"out": self.conv(x), "exposure": x.amax(1, keepdim=True)}


def _image(w: int = 64, h: int = 32, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def test_paper_protocol_matches_an_independent_opencv_pipeline() -> None:
    model = PixelLinear().eval()
    img = _image()
    infer, out = (48, 40), (64, 32)  # (width, height): W != H catches a swapped order
    pred = inference.predict(model, inference.to_tensor(img, torch.device("cpu")), out, infer)["paper"]
    assert model.seen == [(40, 48)]
    assert tuple(pred.train_ids.shape) == (32, 64)

    # independent: OpenCV bilinear (half-pixel centres) on numpy, the 1x1 conv as a matrix product
    x = cv2.resize(img.astype(np.float32) / 255.0, infer, interpolation=cv2.INTER_LINEAR)
    w = model.conv.weight.detach().numpy()[:, :, 0, 0]
    b = model.conv.bias.detach().numpy()
    logits = x @ w.T + b                                   # 40x48x19
    up = np.stack([cv2.resize(logits[..., c], out, interpolation=cv2.INTER_LINEAR) for c in range(19)], -1)
    expected = up.argmax(-1)
    agree = (pred.train_ids.numpy() == expected).mean()
    assert agree > 0.995, agree  # float32 rounding may flip a near-tie or two, nothing more

    # the exposure head's map, resized to the output size, in [0, 1]
    assert tuple(pred.exposure.shape) == (32, 64)
    assert 0.0 <= float(pred.exposure.min()) and float(pred.exposure.max()) <= 1.0


def test_extra_modes_run_their_own_sizes_and_keep_paper_apart() -> None:
    model = PixelLinear().eval()
    x = inference.to_tensor(_image(), torch.device("cpu"))
    out = inference.predict(model, x, (64, 32), (40, 20), ["paper", "native", "flip", "multiscale"],
                            (0.5, 1.0, 2.0))
    # paper (40x20), native (64x32), flip (40x20), multiscale: 20x10 and 80x40 (1.0 reuses paper's pass)
    assert model.seen == [(20, 40), (32, 64), (20, 40), (10, 20), (40, 80)]
    assert set(out) == {"paper", "native", "flip", "multiscale"}
    # a flip-equivariant model: averaging with the flipped pass changes nothing
    assert torch.equal(out["flip"].train_ids, out["paper"].train_ids)
    with pytest.raises(ConfigError):
        inference.predict(model, x, (64, 32), (40, 20), ["tta"])


def test_qualitative_indices_spread_over_the_list() -> None:
    assert qualitative_indices(10, 3) == [0, 4, 9]  # linspace(0, 9, 3) = 0, 4.5 -> 4 (banker's), 9
    assert qualitative_indices(2, 4) == [0, 1]
    assert qualitative_indices(5, 0) == [] and qualitative_indices(0, 3) == []


def test_parse_models_uri() -> None:
    assert registered.parse_models_uri("models:/egnet-nightcity@champion") == \
        ("egnet-nightcity", None, "champion")
    assert registered.parse_models_uri("models:/egnet-nightcity/12") == ("egnet-nightcity", "12", None)
    for bad in ("models:/egnet-nightcity", "models:/a/b/3", "models:/@x", "models:/m/latest"):
        with pytest.raises(ConfigError):
            registered.parse_models_uri(bad)


def test_training_run_id_found_from_file_dir_and_checkpoint(tmp_path: Path) -> None:
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "mlflow_run_id").write_text("abc123\n")
    assert inference.training_run_id(str(tmp_path)) == "abc123"
    assert inference.training_run_id(str(tmp_path / "model.pt")) == "abc123"
    assert inference.training_run_id(str(tmp_path / "checkpoints" / "ckpt_10.pt")) == "abc123"
    assert inference.training_run_id(str(tmp_path / "checkpoints")) is None


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, make_checkpoint) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "train", seed=3)


def test_evaluate_writes_metrics_charts_and_source(synth_root, split_dir, ckpt, tmp_path, capsys) -> None:
    out = tmp_path / "eval"
    assert main(["evaluate", "--data", str(synth_root), "--split", str(split_dir),
                 "--model", str(ckpt.parent), "--out", str(out),
                 *tiny_args("evaluate.extra_modes=[flip]", "evaluate.num_qualitative=2")]) == 0
    m = read_json(out / "metrics.json")
    n_test = len((split_dir / "test.txt").read_text().split())
    assert m["num_images"] == n_test
    assert len(m["EF1"]) == 10 and len(m["IoU"]) == 19
    assert 0 <= m["mIoU"] <= 1 and 0 <= m["mEF1"] <= 1 and 0 <= m["pixel_acc"] <= 1
    assert m["protocol"]["name"] == "paper" and m["protocol"]["infer_size"] == [256, 128]
    assert set(m["modes"]) == {"flip"} and set(m["protocol"]["extra_modes"]) == {"flip"}
    for name in ("confusion_matrix.png", "ef1_per_bin.png", "iou_per_class.png", "qualitative.png"):
        img = cv2.imread(str(out / name))
        assert img is not None and img.shape[0] > 100, name
    src = read_json(out / "model_source.json")
    assert src["kind"] == "checkpoint" and src["run_id"] is None and src["logged_to_run"] is None
    assert not any(p.name.startswith(".eval.tmp") for p in tmp_path.iterdir())  # atomic: no leftovers

    # the headline numbers are the paper protocol's whatever extra modes run beside it
    out2 = tmp_path / "eval_plain"
    assert main(["evaluate", "--data", str(synth_root), "--split", str(split_dir), "--model", str(ckpt),
                 "--out", str(out2), *tiny_args("evaluate.num_qualitative=0")]) == 0
    m2 = read_json(out2 / "metrics.json")
    assert m2["mIoU"] == m["mIoU"] and m2["EF1"] == m["EF1"] and m2["modes"] == {}
    assert not (out2 / "qualitative.png").exists()


@pytest.mark.parametrize("damage", ["truncated", "random", "pickled_module"])
def test_corrupt_or_foreign_checkpoint_is_one_clear_line(synth_root, split_dir, ckpt, tmp_path, capsys,
                                                         damage) -> None:
    bad = tmp_path / "train" / "model.pt"
    bad.parent.mkdir()
    if damage == "truncated":
        bad.write_bytes(ckpt.read_bytes()[:5000])
    elif damage == "random":
        bad.write_bytes(np.random.default_rng(0).bytes(4096))
    else:
        torch.save(nn.Linear(2, 2), bad)  # a pickled module: weights_only loading must refuse it
    image = next((synth_root / "NightCity-images").rglob("*.png"))
    for argv in (["evaluate", "--data", str(synth_root), "--split", str(split_dir),
                  "--out", str(tmp_path / "e")],
                 ["predict", str(image), "--out", str(tmp_path / "p")]):
        capsys.readouterr()
        code = main([*argv, "--model", str(bad), *tiny_args()])
        err = capsys.readouterr().err.strip()
        assert code == 1
        assert err.startswith("egnet: error:") and "\n" not in err and str(bad) in err, err
        assert "Traceback" not in err
    assert not (tmp_path / "e").exists() and not (tmp_path / "p").exists()


def test_unknown_model_spec_is_a_usage_error(synth_root, split_dir, tmp_path, capsys) -> None:
    code = main(["evaluate", "--data", str(synth_root), "--split", str(split_dir), "--model", "http://x/y",
                 "--out", str(tmp_path / "e"), *tiny_args()])
    assert code == 2 and "--model http://x/y" in capsys.readouterr().err


def test_unreachable_tracking_server_fails_before_inference(synth_root, split_dir, ckpt, tmp_path,
                                                            capsys) -> None:
    train = tmp_path / "train"
    train.mkdir()
    (train / "model.pt").write_bytes(ckpt.read_bytes())
    (train / "mlflow_run_id").write_text("0123456789abcdef0123456789abcdef\n")
    code = main(["evaluate", "--data", str(synth_root), "--split", str(split_dir), "--model", str(train),
                 "--out", str(tmp_path / "e"), *tiny_args(f"tracking.uri=http://127.0.0.1:{free_port()}")])
    err = capsys.readouterr().err
    assert code == 2 and "not reachable" in err and not (tmp_path / "e").exists()


def test_run_unknown_to_the_tracking_store_is_a_warning(synth_root, split_dir, ckpt, tmp_path,
                                                        caplog) -> None:
    train = tmp_path / "train"
    train.mkdir()
    (train / "model.pt").write_bytes(ckpt.read_bytes())
    (train / "mlflow_run_id").write_text("0123456789abcdef0123456789abcdef\n")
    out = tmp_path / "e"
    assert main(["evaluate", "--data", str(synth_root), "--split", str(split_dir), "--model", str(train),
                 "--out", str(out), *tiny_args(f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
                                              "evaluate.num_qualitative=0")]) == 0
    src = read_json(out / "model_source.json")
    assert src["run_id"] == "0123456789abcdef0123456789abcdef" and src["logged_to_run"] is None
    assert "not found" in caplog.text
