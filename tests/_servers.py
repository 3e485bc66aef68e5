"""Real services for tests: a moto S3 server and an ``mlflow server``, both on 127.0.0.1.

Import the fixtures into a test module (no conftest needed)::

    from tests._servers import mlflow_server, moto_s3, s3_env  # noqa: F401

- ``moto_s3`` (session): ``moto.server.ThreadedMotoServer`` on a free port; ``.endpoint``,
  ``.env`` (AWS_* variables a client or subprocess needs), ``.client()``, ``.bucket()``.
- ``s3_env`` (function): ``moto_s3`` with its ``.env`` set in ``os.environ`` for the test.
- ``mlflow_server`` (session): ``mlflow server`` with a sqlite backend store and artifacts
  proxied to ``s3://<bucket>/mlartifacts`` on the moto server; ``.uri``, ``.stop()``,
  ``.start()`` (same port and store: a restart).
- ``start_mlflow_server(root, ...)``: the same, for a test that needs its own server
  (e.g. to stop it mid-run).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class MotoS3:
    endpoint: str
    env: dict[str, str]

    def client(self):
        import boto3

        return boto3.client(
            "s3", endpoint_url=self.endpoint, region_name=self.env["AWS_DEFAULT_REGION"],
            aws_access_key_id=self.env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=self.env["AWS_SECRET_ACCESS_KEY"],
        )

    def bucket(self, name: str | None = None) -> str:
        """Create (or reuse) a bucket; a fresh unique one when ``name`` is None."""
        name = name or f"test-{uuid.uuid4().hex[:12]}"
        with contextlib.suppress(Exception):
            self.client().create_bucket(Bucket=name)
        return name


@pytest.fixture(scope="session")
def moto_s3() -> Iterator[MotoS3]:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    env = {
        "AWS_ENDPOINT_URL": endpoint,
        "MLFLOW_S3_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    try:
        yield MotoS3(endpoint, env)
    finally:
        server.stop()


@pytest.fixture
def s3_env(moto_s3: MotoS3, monkeypatch: pytest.MonkeyPatch) -> MotoS3:
    for key, value in moto_s3.env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    return moto_s3


@dataclass
class MlflowServer:
    root: Path
    artifacts_destination: str
    env: dict[str, str]
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def backend_store_uri(self) -> str:
        return f"sqlite:///{self.root / 'mlflow.db'}"

    def start(self, timeout_s: float = 90.0) -> MlflowServer:
        self.root.mkdir(parents=True, exist_ok=True)
        log = open(self.root / "server.log", "ab")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen(
            [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(self.port),
             "--backend-store-uri", self.backend_store_uri,
             "--artifacts-destination", self.artifacts_destination, "--workers", "1"],
            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **self.env},
            start_new_session=True,  # its own process group: stop() ends the server and its workers
        )
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited early:\n{(self.root / 'server.log').read_text()[-3000:]}")
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as resp:
                    if resp.status == 200:
                        return self
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"mlflow server not healthy after {timeout_s:.0f} s")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=15)


def start_mlflow_server(root: Path, moto: MotoS3 | None = None, bucket: str | None = None) -> MlflowServer:
    """Start a server whose artifacts go to S3 on ``moto`` (or to ``root/artifacts`` without it)."""
    if moto is not None:
        dest = f"s3://{moto.bucket(bucket)}/mlartifacts"
        env = dict(moto.env)
    else:
        dest, env = str(root / "artifacts"), {}
    return MlflowServer(root=root, artifacts_destination=dest, env=env).start()


@pytest.fixture(scope="session")
def mlflow_server(moto_s3: MotoS3, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    server = start_mlflow_server(tmp_path_factory.mktemp("mlflow-server"), moto_s3, "mlflow")
    try:
        yield server
    finally:
        server.stop()
