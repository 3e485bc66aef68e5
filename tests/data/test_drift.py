"""`egnet data drift`: hand-worked measures, the synthetic data against itself and against a
brightened / darkened / relabelled copy, and a `models:/NAME@champion` reference through a real
`mlflow server` (sqlite store, artifacts on moto S3)."""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

import cv2
import numpy as np
import pytest

from egnet.cli import main
from egnet.core.config import load_config
from egnet.data import drift
from egnet.data.drift import Distribution
from egnet.tracking import runs as tracking
from tests.support import PARAMS, tiny_args


def args(*extra: str, sets: tuple[str, ...] = ()) -> list[str]:
    return [*extra, *tiny_args("stats.workers=1", "drift.workers=1", *sets)]


def _dist(hist, pixels, means) -> Distribution:
    return Distribution(1, np.asarray(hist, float), np.asarray(pixels, float), np.asarray(means, float))


# --------------------------------------------------------------------------- hand-worked


def test_measures_hand_worked() -> None:
    pixels = np.zeros(19)
    pixels[[0, 1]] = [50, 50]                                 # road, sidewalk
    means = np.full(19, np.nan)
    means[[0, 1]] = [0.2, 0.3]
    ref = _dist(np.eye(10)[0] * 100, pixels, means)           # every pixel in bin 0
    new_means = means.copy()
    new_means[[0, 1]] = [0.25, 0.1]
    new = _dist(np.eye(10)[3] * 7, pixels, new_means)         # every pixel in bin 3
    m = drift.measure(ref, new, min_class_fraction=0.01)
    assert m["js_exposure"]["value"] == pytest.approx(1.0)    # disjoint supports: JS distance 1 (base 2)
    assert m["wasserstein_exposure"]["value"] == pytest.approx(0.3)   # all mass moved 3 bins of 0.1
    assert m["js_class"]["value"] == pytest.approx(0.0)
    assert m["class_mean_exposure_shift"]["value"] == pytest.approx(0.2)
    assert m["class_mean_exposure_shift"]["class"] == "sidewalk"
    assert m["class_mean_exposure_shift"]["per_class"] == pytest.approx({"road": 0.05, "sidewalk": -0.2})

    # half the mass moves one bin: JS distance = sqrt(JSD), mixture M = (0.75, 0.25), by hand
    half = _dist([50, 50, 0, 0, 0, 0, 0, 0, 0, 0], pixels, means)
    m = drift.measure(ref, half, 0.01)
    jsd = 0.5 * (1 * np.log2(1 / 0.75)) + 0.5 * (0.5 * np.log2(0.5 / 0.75) + 0.5 * np.log2(0.5 / 0.25))
    assert m["js_exposure"]["value"] == pytest.approx(np.sqrt(jsd))
    assert m["wasserstein_exposure"]["value"] == pytest.approx(0.05)

    # a class under min_class_fraction on one side is not compared
    few = pixels.copy()
    few[1] = 0.4                                              # sidewalk: 0.4 / 50.4 < 1%
    m = drift.measure(ref, _dist(np.eye(10)[0], few, new_means), 0.01)
    assert m["class_mean_exposure_shift"]["class"] == "road"

    judged = drift.judge(drift.measure(ref, new, 0.01), load_config(PARAMS).drift)
    assert [n for n, v in judged.items() if not v["passed"]] == [
        "js_exposure", "wasserstein_exposure", "class_mean_exposure_shift"]


# --------------------------------------------------------------------------- synthetic data


@pytest.fixture(scope="module")
def reference(synth_root, split_dir, tmp_path_factory) -> Path:
    """`egnet data stats` of the synthetic data: the reference stats.json."""
    out = tmp_path_factory.mktemp("drift") / "stats"
    assert main(args("data", "stats", str(synth_root), "--split", str(split_dir), "--out", str(out))) == 0
    return out / "stats.json"


def _copy(src: Path, dst: Path, image_fn=None, label_fn=None) -> Path:
    shutil.copytree(src, dst)
    for fn, folder, flag in ((image_fn, "NightCity-images", cv2.IMREAD_COLOR),
                             (label_fn, "NightCity-label", cv2.IMREAD_UNCHANGED)):
        if fn is not None:
            for p in (dst / folder).rglob("*.png"):
                assert cv2.imwrite(str(p), fn(cv2.imread(str(p), flag)))
    return dst


def _scaled(factor: float):
    return lambda img: np.clip(img.astype(np.float32) * factor, 0, 255).astype(np.uint8)


def _independent_exposure_hist(root: Path, stems: set[str] | None = None) -> np.ndarray:
    """Pixels per exposure bin straight from the PNGs: floor(10 * max(R,G,B) / 255), 1.0 in bin 9."""
    hist = np.zeros(10)
    for p in sorted((root / "NightCity-images").rglob("*.png")):
        if stems is not None and p.stem not in stems:
            continue
        v = cv2.imread(str(p)).max(axis=2).astype(np.float64) / 255.0
        hist += np.bincount(np.minimum((v * 10 + 1e-9).astype(int), 9).ravel(), minlength=10)
    return hist


def test_synthetic_data_against_itself_passes(synth_root, reference, tmp_path, capsys) -> None:
    out = tmp_path / "drift"
    assert main(args("data", "drift", str(synth_root), "--reference", str(reference), "--out", str(out))) == 0
    doc = json.loads((out / "drift.json").read_text())
    assert doc["passed"] and doc["failed"] == [] and doc["status"] == "passed"
    assert set(doc["measures"]) == set(drift.MEASURES)
    assert doc["reference"]["kind"] == "file" and doc["reference"]["split"] == "train"
    assert doc["new_data"]["num_images"] == 24   # all pairs, train and val folders
    for name, m in doc["measures"].items():
        assert m["threshold"] == getattr(load_config(PARAMS).drift, name)
        assert m["passed"] and 0 <= m["value"] <= m["threshold"]
    for png in ("exposure_overlay.png", "class_overlay.png", "class_mean_exposure.png"):
        assert cv2.imread(str(out / png)) is not None
    # the new data's stats.json is itself a valid reference: the same data gives distance 0
    again = tmp_path / "again"
    assert main(args("data", "drift", str(synth_root), "--reference", str(out), "--out", str(again))) == 0
    measures = json.loads((again / "drift.json").read_text())["measures"]
    assert all(measures[n]["value"] == pytest.approx(0.0, abs=1e-7) for n in drift.MEASURES)


@pytest.mark.parametrize("factor", [2.5, 0.4], ids=["brightened", "darkened"])
def test_brightened_or_darkened_copy_fails_naming_the_exposure_measures(
        synth_root, split_dir, reference, tmp_path, capsys, factor) -> None:
    copy = _copy(synth_root, tmp_path / "copy", image_fn=_scaled(factor))
    out = tmp_path / "drift"
    assert main(args("data", "drift", str(copy), "--reference", str(reference), "--out", str(out))) == 1
    err = capsys.readouterr().err
    doc = json.loads((out / "drift.json").read_text())
    expected = ["js_exposure", "wasserstein_exposure", "class_mean_exposure_shift"]
    assert doc["failed"] == expected and not doc["passed"]
    assert doc["measures"]["js_class"]["passed"]              # the labels did not change
    assert err.startswith("egnet: error: data drift") and len(err.strip().splitlines()) == 1
    assert all(name in err for name in expected) and "js_class" not in err

    # the values against an independent computation from the PNGs (reference: the train split)
    train = set((split_dir / "train.txt").read_text().split())
    ref_hist = _independent_exposure_hist(synth_root, train)
    new_hist = _independent_exposure_hist(copy)
    p, q = ref_hist / ref_hist.sum(), new_hist / new_hist.sum()
    mid = (p + q) / 2
    kl = lambda a, b: np.sum(np.where(a > 0, a * np.log2(np.where(a > 0, a, 1) / b), 0.0))  # noqa: E731
    js = np.sqrt((kl(p, mid) + kl(q, mid)) / 2)
    assert doc["measures"]["js_exposure"]["value"] == pytest.approx(js, abs=1e-9)
    w1 = np.abs(np.cumsum(p) - np.cumsum(q))[:-1].sum() * 0.1   # 1-D earth mover's: area between the CDFs
    assert doc["measures"]["wasserstein_exposure"]["value"] == pytest.approx(w1, abs=1e-9)
    shift = doc["measures"]["class_mean_exposure_shift"]
    direction = np.sign(factor - 1)
    assert np.sign(shift["per_class"][shift["class"]]) == direction


def test_relabelled_copy_fails_on_the_class_distribution_only(synth_root, reference, tmp_path,
                                                               capsys) -> None:
    road, sidewalk = 7, 8                                   # labelIds
    relabel = lambda lab: np.where(lab == road, sidewalk, lab).astype(np.uint8)  # noqa: E731
    copy = _copy(synth_root, tmp_path / "copy", label_fn=relabel)
    assert main(args("data", "drift", str(copy), "--reference", str(reference),
                     "--out", str(tmp_path / "d"))) == 1
    doc = json.loads((tmp_path / "d" / "drift.json").read_text())
    assert doc["failed"] == ["js_class"]
    assert "js_class" in capsys.readouterr().err


def test_flag_action_warns_and_exits_zero(synth_root, reference, tmp_path, capsys) -> None:
    copy = _copy(synth_root, tmp_path / "copy", image_fn=_scaled(2.5))
    out = tmp_path / "drift"
    assert main(args("data", "drift", str(copy), "--reference", str(reference), "--out", str(out),
                     sets=("drift.action=flag",))) == 0
    assert "warning" in capsys.readouterr().err
    assert json.loads((out / "drift.json").read_text())["status"] == "drift"


def test_bad_reference_is_a_one_line_error_and_writes_nothing(synth_root, tmp_path, capsys) -> None:
    out = tmp_path / "drift"
    assert main(args("data", "drift", str(synth_root), "--reference", str(tmp_path / "nope.json"),
                     "--out", str(out))) == 2
    assert "nope.json" in capsys.readouterr().err and not out.exists()
    bad = tmp_path / "bad.json"
    bad.write_text('{"exposure_hist": {"train": [1, 2]}}')
    assert main(args("data", "drift", str(synth_root), "--reference", str(bad), "--out", str(out))) == 1
    err = capsys.readouterr().err
    assert "bad.json" in err and len(err.strip().splitlines()) == 1 and not out.exists()


# --------------------------------------------------------------------------- models:/ reference


@pytest.mark.slow
@pytest.mark.mlflow
@pytest.mark.s3
def test_registered_champion_reference_through_mlflow_server(
        mlflow_server, synth_root, reference, tmp_path, capsys, monkeypatch) -> None:
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.uri)
    client = mlflow.MlflowClient(tracking_uri=mlflow_server.uri, registry_uri=mlflow_server.uri)
    exp = client.create_experiment(f"drift-{uuid.uuid4().hex[:8]}")
    name = f"egnet-drift-{uuid.uuid4().hex[:8]}"
    client.create_registered_model(name)

    def version_of(run_id: str) -> str:
        return client.create_model_version(name, source=f"runs:/{run_id}/model", run_id=run_id).version

    with_stats = client.create_run(exp).info.run_id
    assert tracking.log_data_stats(with_stats, reference, mlflow_server.uri) == "data/stats.json"
    client.set_registered_model_alias(name, "champion", version_of(with_stats))
    out = tmp_path / "drift"
    assert main(args("data", "drift", str(synth_root), "--reference", f"models:/{name}@champion",
                     "--out", str(out))) == 0
    doc = json.loads((out / "drift.json").read_text())
    assert doc["passed"]
    assert doc["reference"]["run_id"] == with_stats
    assert doc["reference"]["kind"] == "registry" and doc["reference"]["stats"].endswith("data/stats.json")
    local = doc["measures"]
    by_file = drift.check_drift(synth_root, drift.Reference.from_file(str(reference)),
                                load_config(PARAMS, "tiny", ["drift.workers=1"]))
    assert {n: local[n]["value"] for n in drift.MEASURES} == {n: by_file["measures"][n]["value"]
                                                                for n in drift.MEASURES}

    # brightened data against the champion: exit 1 naming the measures
    copy = _copy(synth_root, tmp_path / "bright", image_fn=_scaled(2.5))
    assert main(args("data", "drift", str(copy), "--reference", f"models:/{name}@champion")) == 1
    assert "js_exposure" in capsys.readouterr().err

    # a champion whose run has no stats.json: the error names the artifact drift expects
    bare = client.create_run(exp).info.run_id
    client.set_registered_model_alias(name, "champion", version_of(bare))
    assert main(args("data", "drift", str(synth_root), "--reference", f"models:/{name}@champion")) == 1
    assert "data/stats.json" in capsys.readouterr().err

    # no such alias (first pipeline run: no champion yet): exit 2, or a skip when allowed
    assert main(args("data", "drift", str(synth_root), "--reference", f"models:/{name}@nobody")) == 2
    assert "nobody" in capsys.readouterr().err
    assert main(args("data", "drift", str(synth_root), "--reference", f"models:/{name}@nobody",
                     "--out", str(tmp_path / "skip"), "--allow-missing-reference")) == 0
    assert json.loads((tmp_path / "skip" / "drift.json").read_text())["status"] == "skipped"
