"""Helpers for training tests: tiny settings, a shared MLflow store, running `egnet train`."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PARAMS = REPO / "params.yaml"
BIN = Path(sys.executable).parent

#: the quick profile made tiny: 64 px crops of 256x128 images, resnet18 at stride 32
TINY = [
    "data.image_size=[256,128]",
    "model.backbone=resnet18", "model.output_stride=32", "model.backbone_weights=none",
    "train.batch_size=4", "train.crop_size=64", "train.scale_min=0.75", "train.scale_max=1.25",
    "train.eval_size=[128,64]", "train.val_max_images=2", "train.log_every=1",
    "train.val_every=1000", "train.checkpoint_every=1000", "train.workers=0",
]


def sets(*overrides: str) -> list[str]:
    out: list[str] = []
    for o in [*TINY, *overrides]:
        out += ["--set", o]
    return out


def train_argv(data: Path, split: Path, out: str | Path, *overrides: str, resume: bool = True) -> list[str]:
    argv = ["train", "--data", str(data), "--split", str(split), "--out", str(out),
            "--params", str(PARAMS), "--profile", "quick", *sets(*overrides)]
    return argv if resume else [*argv, "--no-resume"]


def env(tracking_uri: str, **extra: str) -> dict[str, str]:
    e = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "MLFLOW_TRACKING_URI": tracking_uri,
         "PYTHONPATH": str(REPO), **extra}
    return e


def run_train(argv: list[str], tracking_uri: str, timeout: float = 300, **extra_env: str) -> subprocess.CompletedProcess:
    """`python -m egnet.cli <argv>` in a subprocess; returns the completed process (text output)."""
    return subprocess.run([sys.executable, "-m", "egnet.cli", *argv], env=env(tracking_uri, **extra_env),
                          capture_output=True, text=True, timeout=timeout, cwd=REPO)


def run_train_here(argv: list[str], tracking_uri: str, monkeypatch: pytest.MonkeyPatch) -> tuple[int, str]:
    """`egnet <argv>` in this process (no interpreter start-up); returns (exit code, stderr)."""
    import contextlib
    import io

    from egnet.cli import main

    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(argv)
    return code, err.getvalue()


def start_train(argv: list[str], tracking_uri: str, log: Path, **extra_env: str) -> subprocess.Popen:
    fh = open(log, "w")  # noqa: SIM115 - owned by the process
    proc = subprocess.Popen([sys.executable, "-m", "egnet.cli", *argv], env=env(tracking_uri, **extra_env),
                            stdout=fh, stderr=subprocess.STDOUT, cwd=REPO)
    fh.close()
    return proc


def wait_for(predicate, proc: subprocess.Popen | None = None, timeout: float = 240, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process exited ({proc.returncode}) before {what}")
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def tracking_db(tmp_path_factory) -> str:
    """A sqlite MLflow store created once per module (schema migrations take seconds)."""
    import mlflow

    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    mlflow.MlflowClient(uri).search_experiments()
    return uri
