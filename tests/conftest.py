"""Fixtures every folder uses: the synthetic dataset, real services on 127.0.0.1 (moto S3,
``mlflow server`` on sqlite or PostgreSQL), tiny checkpoints, in-process ``egnet`` runs.

Folder-only fixtures live in that folder's conftest.py (training/, registry/);
plain code the tests call directly is in tests/support/. The markers of the tests that start
services are declared in pyproject.toml and checked here at collection (``SERVICE_MARKERS``).
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
from collections.abc import Callable, Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.support import PARAMS, SMALL_SIZE, mlflow_env_restored, tiny_args
from tests.support.http_stub import Request, Stub, start_stub
from tests.support.services import (
    MlflowServer,
    MotoS3,
    Postgres,
    running_moto,
    running_postgres,
    start_mlflow_server,
)

# Two cores shared by torch, OpenCV and process pools: one thread each keeps tests predictable.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
# Never reach a hub from tests.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.pop("MLFLOW_TRACKING_URI", None)  # tests pass tracking URIs explicitly

#: service fixture -> the markers a test using it (directly or through other fixtures) must carry
SERVICE_MARKERS = {
    "moto_s3": {"s3"},
    "s3_env": {"s3"},
    "mlflow_server": {"mlflow", "s3"},
    "mlflow_backend": {"mlflow", "s3"},
    "postgres": {"postgres"},
    "mlflow_postgres_server": {"mlflow", "postgres", "s3"},
}


def pytest_configure(config: pytest.Config) -> None:
    """SIGTERM (a CI timeout, `timeout`, a killed job) stops the run like Ctrl-C: the fixtures'
    teardowns still stop the MLflow, moto and PostgreSQL servers they started, instead of leaving
    them (and their worker processes) running on a shared machine."""
    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupt)
    # ... in this process only: a forked child (a process pool's worker) dies of SIGTERM as usual,
    # so `Pool.terminate()` cannot wait for ever on a worker blocked where no Python code runs
    os.register_at_fork(after_in_child=lambda: signal.signal(signal.SIGTERM, signal.SIG_DFL))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Refuse a test that starts a service without the service's marker: `make test-fast`
    deselects by marker, and a fixture cannot mark the tests that use it."""
    missing = []
    for item in items:
        have = {m.name for m in item.iter_markers()}
        need = set().union(*(SERVICE_MARKERS.get(f, set()) for f in getattr(item, "fixturenames", ())))
        if need - have:
            missing.append(f"{item.nodeid}: {', '.join(sorted(need - have))}")
    if missing:
        raise pytest.UsageError("tests that start services without the markers (pytest.mark.<name>):\n  "
                                + "\n  ".join(missing))


# --------------------------------------------------------------------------- data


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
    assert main(["data", "split", str(synth_root), "--out", str(out), *tiny_args()]) == 0
    return out


# --------------------------------------------------------------------------- models


@pytest.fixture(scope="session")
def make_checkpoint():
    """``make_checkpoint(out_dir, seed=0, *overrides, run_id=None) -> model.pt``: an untrained
    (seeded) tiny-profile model saved as an egnet ``model.pt`` in ``out_dir`` (a train dir
    look-alike; with ``run_id`` also its ``mlflow_run_id``)."""

    def make(out_dir: Path, seed: int = 0, *overrides: str, run_id: str | None = None) -> Path:
        import torch

        from egnet.core.config import load_config
        from egnet.core.storage import Location
        from egnet.models import build_model
        from egnet.training.checkpoint import save_final

        cfg = load_config(PARAMS, "tiny", list(overrides))
        torch.manual_seed(seed)
        model = build_model(cfg.model)
        out_dir.mkdir(parents=True, exist_ok=True)
        save_final(Location.from_str(out_dir), model=model, cfg=cfg, iteration=0)
        if run_id is not None:
            (out_dir / "mlflow_run_id").write_text(run_id + "\n")
        return out_dir / "model.pt"

    return make


# --------------------------------------------------------------------------- HTTP stubs


@pytest.fixture
def json_stub() -> Iterator[Callable[[Callable[[Request], tuple[int, Any]]], Stub]]:
    """``json_stub(handle) -> Stub``: a loopback JSON API stub, started (tests/support/http_stub.py);
    stopped at the end of the test."""
    servers: list[ThreadingHTTPServer] = []
    yield lambda handle: start_stub(handle, servers)
    for server in servers:
        server.shutdown()
        server.server_close()


# --------------------------------------------------------------------------- egnet in-process


@pytest.fixture
def train_here(monkeypatch):
    """``train_here(argv, tracking_uri) -> (exit code, stderr)``: `egnet <argv>` in this
    process (no interpreter start-up), with MLFLOW_TRACKING_URI set for the test."""
    from egnet.cli import main

    def run(argv: list[str], tracking_uri: str) -> tuple[int, str]:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_uri)
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            code = main(argv)
        return code, err.getvalue()

    return run


@pytest.fixture(autouse=True)
def _isolate_mlflow_env() -> Iterator[None]:
    """A test that calls a step in-process must not point later tests at its (by then stopped)
    server through MLFLOW_TRACKING_URI or MLflow's module-level URI."""
    with mlflow_env_restored():
        yield


# --------------------------------------------------------------------------- services


@pytest.fixture(scope="session")
def moto_s3() -> Iterator[MotoS3]:
    """``moto.server.ThreadedMotoServer`` on a free port; ``.endpoint``, ``.env``, ``.client()``,
    ``.bucket()``."""
    with running_moto() as server:
        yield server


@pytest.fixture
def s3_env(moto_s3: MotoS3, monkeypatch: pytest.MonkeyPatch) -> MotoS3:
    """``moto_s3`` with its ``.env`` set in ``os.environ`` for the test."""
    for key, value in moto_s3.env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    return moto_s3


@pytest.fixture(scope="session")
def mlflow_server(moto_s3: MotoS3, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """``mlflow server`` with a sqlite store, artifacts proxied to ``s3://mlflow/mlartifacts`` on moto."""
    server = start_mlflow_server(tmp_path_factory.mktemp("mlflow-server"), moto_s3, "mlflow")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """A throw-away PostgreSQL on 127.0.0.1 (database ``mlflow`` made). Skipped, saying why,
    only where the server binaries (or the psycopg driver) are not installed."""
    with running_postgres() as server:
        yield server


@pytest.fixture(scope="session")
def mlflow_postgres_server(postgres: Postgres, moto_s3: MotoS3,
                           tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """``mlflow server --backend-store-uri postgresql+psycopg://...``, artifacts proxied to moto S3."""
    server = start_mlflow_server(tmp_path_factory.mktemp("mlflow-pg-server"), moto_s3, "mlflow-pg",
                                 backend_uri=postgres.database("egnet_tests"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def mlflow_backend(request: pytest.FixtureRequest) -> MlflowServer:
    """The session's MLflow server on each backend store in turn: tests taking it run twice
    (the PostgreSQL case carries the ``postgres`` marker)."""
    return request.getfixturevalue("mlflow_server" if request.param == "sqlite" else "mlflow_postgres_server")
