"""Plain code the tests call directly; the fixtures live in the conftest.py files.

This module: where things are (``REPO``, ``PARAMS``, ``BIN``), the ``tiny`` profile's command
line (``tiny_args``, ``train_argv``) and the environment of an ``egnet`` subprocess. The other
modules, one topic each: ``data`` (hand-made datasets), ``services`` (moto S3, ``mlflow server``,
PostgreSQL), ``dvc`` (temporary git+DVC repositories), ``k8s`` (rendering k8s/ with the real
kubectl and validating it), ``egnet_no_dropout`` (a script), ``evidence`` (hand-made per-image
counts for the promotion gate), ``host_syncs`` (counting the calls that make the host wait for
the device), ``count_host_syncs`` (``egnet`` with that counter, a script), ``operators`` (each
node's command and environment as the Kubeflow controllers build them) and ``http_stub`` (a
loopback JSON API that records its calls; not ``http``: the scripts here run with this folder
first on sys.path, where that name would hide the standard library's).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

#: the repository root: subprocesses run here with PYTHONPATH=REPO (this checkout, not the venv's)
REPO = Path(__file__).resolve().parents[2]
PARAMS = REPO / "params.yaml"
#: this venv's bin/ (egnet, mlflow, dvc, torchrun)
BIN = Path(sys.executable).parent
#: the shared synthetic dataset's image size (``synth_root``); configs/tiny.yaml says the same
SMALL_SIZE = (256, 128)
#: the test profile, configs/tiny.yaml: the quick profile shrunk to seconds of training
TINY = "tiny"


def sets(*overrides: str) -> list[str]:
    """``--set`` for each override."""
    return [arg for o in overrides for arg in ("--set", o)]


def tiny_args(*overrides: str, profile: str = TINY) -> list[str]:
    """``--params/--profile/--set`` for any step on the shared synthetic data."""
    return ["--params", str(PARAMS), "--profile", profile, *sets(*overrides)]


def train_argv(data: Path, split: Path, out: str | Path, *overrides: str, resume: bool = True) -> list[str]:
    """``egnet train`` on ``data``/``split`` into ``out`` with the tiny profile."""
    argv = ["train", "--data", str(data), "--split", str(split), "--out", str(out), *tiny_args(*overrides)]
    return argv if resume else [*argv, "--no-resume"]


def read_json(path: str | Path) -> dict:
    return json.loads(Path(path).read_text())


def subprocess_env(tracking_uri: str | None = None, **extra: str) -> dict[str, str]:
    """The environment of an ``egnet`` subprocess: this checkout first on the path, one thread."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    if tracking_uri is not None:
        env["MLFLOW_TRACKING_URI"] = tracking_uri
    return {**env, **extra}


def wait_for(predicate: Callable[[], bool], proc=None, timeout: float = 240, what: str = "") -> None:
    """Poll ``predicate`` until it holds; fail if ``proc`` (a Popen) exits first or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process exited ({proc.returncode}) before {what}")
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@contextlib.contextmanager
def mlflow_env_restored() -> Iterator[None]:
    """``mlflow.set_tracking_uri`` (which the steps call) also sets MLFLOW_TRACKING_URI in
    os.environ and a module-level URI: whatever runs a step in-process inside this block must
    not point later tests at its (by then stopped) server."""
    keys = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_EXPERIMENT_NAME")
    saved = {k: os.environ.get(k) for k in keys}
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        if "mlflow" in sys.modules:  # only if something used it; importing mlflow costs seconds
            import mlflow
            from mlflow.tracking._model_registry import utils as registry_utils
            from mlflow.tracking._tracking_service import utils as tracking_utils

            if mlflow.active_run() is not None:
                mlflow.end_run()
            tracking_utils._tracking_uri = None  # the module-level URI set_tracking_uri keeps
            registry_utils._registry_uri = None  # ... and set_registry_uri (egnet's client_for sets it)
