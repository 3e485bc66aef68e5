"""Shared fixtures. Services (MLflow, moto S3) are real processes on 127.0.0.1."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Two cores shared by torch, OpenCV and process pools: one thread each keeps tests predictable.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
# Never reach a hub from tests.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.pop("MLFLOW_TRACKING_URI", None)  # tests pass tracking URIs explicitly

# moto S3 and mlflow server fixtures, registered once so session scope really means one per session
pytest_plugins = ["tests._servers", "tests._helpers_registry"]

REPO = Path(__file__).resolve().parents[1]
SMALL_SIZE = (256, 128)
#: --set overrides that make any step work on the small synthetic data
SMALL = [f"data.image_size=[{SMALL_SIZE[0]},{SMALL_SIZE[1]}]"]


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory) -> Path:
    """A small synthetic NightCity dataset (256x128, 24 scenes), made once per session. Read-only."""
    from egnet.data.synth import synthesize

    root = tmp_path_factory.mktemp("synth") / "nightcity"
    synthesize(root, num=24, seed=7, size=SMALL_SIZE)
    return root


@pytest.fixture(scope="session")
def split_dir(synth_root, tmp_path_factory) -> Path:
    """Official split of ``synth_root`` (train.txt, test.txt)."""
    from egnet.cli import main

    out = tmp_path_factory.mktemp("split") / "split"
    assert main(["data", "split", str(synth_root), "--out", str(out), "--params", str(REPO / "params.yaml"),
                 *sum((["--set", s] for s in SMALL), [])]) == 0
    return out


@pytest.fixture(autouse=True)
def _isolate_mlflow_env():
    """`mlflow.set_tracking_uri` also sets MLFLOW_TRACKING_URI in os.environ: a test that
    calls a step in-process must not point later tests at its (by then stopped) server."""
    keys = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_EXPERIMENT_NAME")
    saved = {k: os.environ.get(k) for k in keys}
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    import sys

    if "mlflow" in sys.modules:  # only if the test used it; importing mlflow costs seconds
        import mlflow
        from mlflow.tracking._tracking_service import utils as tracking_utils

        if mlflow.active_run() is not None:
            mlflow.end_run()
        tracking_utils._tracking_uri = None  # the module-level URI set_tracking_uri keeps
