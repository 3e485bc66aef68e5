"""Real services for tests, on 127.0.0.1: a moto S3 server, ``mlflow server``, PostgreSQL.

The classes and start-up code; the fixtures that run them (``moto_s3``, ``s3_env``,
``mlflow_server``, ``postgres``, ``mlflow_postgres_server``, ``mlflow_backend``) are in
tests/conftest.py.

- ``MotoS3``: ``.endpoint``, ``.env`` (AWS_* variables a client or subprocess needs),
  ``.client()``, ``.bucket()``.
- ``MlflowServer``: ``mlflow server`` with a sqlite (or given) backend store and artifacts
  proxied to ``s3://<bucket>/mlartifacts`` on moto; ``.uri``, ``.stop()``, ``.start()`` (same
  port and store: a restart). ``start_mlflow_server(root, ...)`` starts one, e.g. for a test
  that stops it mid-run.
- ``Postgres``: a running throw-away server; ``["host"]``, ``["port"]``, ``["user"]``,
  ``["password"]``, ``.database(name)`` -> SQLAlchemy URL. ``running_postgres()`` runs one
  (Debian's server binaries, as the ``postgres`` user when tests run as root).
- ``free_port()``: a port nothing listens on (yet).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support import BIN


def free_port() -> int:
    """A free port on 127.0.0.1 (nothing listens there until someone binds it)."""
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


@contextlib.contextmanager
def running_moto() -> Iterator[MotoS3]:
    """A ``moto.server.ThreadedMotoServer`` on a free port, stopped on exit."""
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


@dataclass
class MlflowServer:
    root: Path
    artifacts_destination: str
    env: dict[str, str]
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None
    backend_uri: str | None = None   # None: a sqlite file in ``root``
    app_name: str | None = None      # e.g. "basic-auth" (then ``env`` holds its admin and ini path)

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def backend_store_uri(self) -> str:
        return self.backend_uri or f"sqlite:///{self.root / 'mlflow.db'}"

    @property
    def backend(self) -> str:
        """``sqlite`` or ``postgresql``: the backend store's kind (test ids, messages)."""
        return self.backend_store_uri.split(":", 1)[0].split("+", 1)[0]

    def start(self, timeout_s: float = 90.0) -> MlflowServer:
        self.root.mkdir(parents=True, exist_ok=True)
        log = open(self.root / "server.log", "ab")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen(
            [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(self.port),
             "--backend-store-uri", self.backend_store_uri,
             "--artifacts-destination", self.artifacts_destination, "--workers", "1",
             *(["--app-name", self.app_name] if self.app_name else [])],
            # no GenAI job runner (huey consumers): egnet uses none, and they cost ~1 GB per server
            stdout=log, stderr=subprocess.STDOUT,
            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **self.env},
            start_new_session=True,  # its own process group: stop() ends the server and its workers
        )
        log.close()
        try:  # interrupted while waiting (Ctrl-C, SIGTERM): the fixture never yields, so stop it here
            self._wait_healthy(timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_healthy(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                log = (self.root / "server.log").read_text()[-3000:]
                raise RuntimeError(f"mlflow server exited early:\n{log}")
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as resp:
                    if resp.status == 200:
                        return
            time.sleep(0.3)
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


def start_mlflow_server(root: Path, moto: MotoS3 | None = None, bucket: str | None = None,
                        backend_uri: str | None = None) -> MlflowServer:
    """Start a server whose artifacts go to S3 on ``moto`` (or to ``root/artifacts`` without it);
    its backend store is ``backend_uri`` (default: a sqlite file in ``root``)."""
    if moto is not None:
        dest = f"s3://{moto.bucket(bucket)}/mlartifacts"
        env = dict(moto.env)
    else:
        dest, env = str(root / "artifacts"), {}
    return MlflowServer(root=root, artifacts_destination=dest, env=env, backend_uri=backend_uri).start()


# --------------------------------------------------------------------------- PostgreSQL


def pg_bin() -> Path | None:
    """Folder of initdb/postgres: on PATH, or Debian's /usr/lib/postgresql/<major>/bin."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    debian = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                    key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0)
    return debian[-1].parent if debian else None


@dataclass
class Postgres:
    """A running throw-away server; ``pg["port"]`` etc. for code that wants a mapping."""

    host: str
    port: str
    user: str
    password: str

    def __getitem__(self, key: str) -> str:
        return getattr(self, key)

    def database(self, name: str) -> str:
        """Create database ``name`` (if new); its SQLAlchemy URL for MLflow (psycopg 3 driver)."""
        import psycopg

        with psycopg.connect(host=self.host, port=self.port, user=self.user, password=self.password,
                             dbname="postgres", autocommit=True) as conn:
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is None:
                conn.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql+psycopg://{self.user}:{self.password}@{self.host}:{self.port}/{name}"


@contextlib.contextmanager
def running_postgres() -> Iterator[Postgres]:
    """PostgreSQL on 127.0.0.1 (a free port, data in a temporary folder, password login as user
    ``mlflow``; database ``mlflow`` made). Tests run as root in CI, and postgres refuses root: the
    server then runs as the ``postgres`` user the Debian package creates."""
    import pwd
    import tempfile

    pg = pg_bin()
    if pg is None:
        pytest.skip("PostgreSQL server binaries not installed (Debian: apt-get install postgresql)")
    pytest.importorskip("psycopg", reason="psycopg (the MLflow server's PostgreSQL driver) not installed")
    import psycopg

    user = None
    if os.geteuid() == 0:
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no `postgres` user to run the server as")
    # not under pytest's tmp_path: as root that is a 0700 folder the server's user cannot enter
    tmp = Path(tempfile.mkdtemp(prefix="egnet-pg-"))
    data, sock, pwfile = tmp / "pgdata", tmp / "pgsock", tmp / "pw"
    sock.mkdir()
    password = "pw-" + os.urandom(8).hex()
    pwfile.write_text(password)
    if user:
        for p in (tmp, sock, pwfile):
            os.chown(p, user.pw_uid, user.pw_gid)
    run_as = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []} if user else {}
    init = subprocess.run([str(pg / "initdb"), "-D", str(data), "-U", "mlflow", "--auth=scram-sha-256",
                           f"--pwfile={pwfile}", "--no-sync"], capture_output=True, text=True, timeout=180,
                          **run_as)
    if init.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise RuntimeError(f"initdb failed:\n{init.stdout}{init.stderr}")
    port = free_port()
    log = open(tmp / "server.log", "wb")  # noqa: SIM115 - closed with the process
    if user:
        os.chown(tmp / "server.log", user.pw_uid, user.pw_gid)
    # durability off: a test database is thrown away, and fsyncs cost seconds on a shared disk
    proc = subprocess.Popen([str(pg / "postgres"), "-D", str(data), "-h", "127.0.0.1", "-p", str(port),
                             "-k", str(sock), "-c", "fsync=off", "-c", "synchronous_commit=off",
                             "-c", "full_page_writes=off", "-c", "max_connections=200"],
                            stdout=log, stderr=subprocess.STDOUT, **run_as)
    log.close()
    server = Postgres("127.0.0.1", str(port), "mlflow", password)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                psycopg.connect(host=server.host, port=port, user=server.user, password=password,
                                dbname="postgres", connect_timeout=2).close()
                break
            except psycopg.OperationalError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("postgres did not start:\n"
                                       + (tmp / "server.log").read_text()[-3000:]) from None
                time.sleep(0.2)
        server.database("mlflow")  # the name the k8s overlays' MLflow Deployment uses
        yield server
    finally:
        proc.send_signal(signal.SIGINT)  # "fast" shutdown: does not wait for clients to disconnect
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)
        shutil.rmtree(tmp, ignore_errors=True)
