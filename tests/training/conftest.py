"""Fixtures of the training tests: a module's sqlite tracking store, `egnet train` in a
subprocess, and a fault-injecting S3 proxy.

``s3_fault_proxy``: an HTTP proxy in front of the moto server that answers 503 SlowDown when
told to::

    proxy = s3_fault_proxy                 # started; its endpoint is AWS_ENDPOINT_URL for the test
    proxy.fail("ckpt_4", times=2)          # the first 2 writes whose path contains "ckpt_4"
    proxy.fail("ckpt_8")                   # every write whose path contains "ckpt_8"
    proxy.seen("ckpt_4")                   # requests (method, path, status) that matched

Only writes (PUT, POST: object PUTs and multipart initiate/part/complete) are failed; reads
pass through, as when S3 throttles a hot prefix's writes.
"""

from __future__ import annotations

import http.client
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.support import REPO, subprocess_env


@pytest.fixture(scope="module")
def tracking_db(tmp_path_factory) -> str:
    """A sqlite MLflow store created once per module (schema migrations take seconds)."""
    import mlflow

    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    mlflow.MlflowClient(uri).search_experiments()
    return uri


@pytest.fixture
def start_train() -> Iterator:
    """``start_train(argv, tracking_uri, log, **env) -> Popen``: `python -m egnet.cli <argv>` in
    the background, output to ``log``; killed at the end of the test if still running."""
    procs: list[subprocess.Popen] = []

    def start(argv: list[str], tracking_uri: str, log: Path, **extra_env: str) -> subprocess.Popen:
        with open(log, "w") as fh:
            proc = subprocess.Popen([sys.executable, "-m", "egnet.cli", *argv], cwd=REPO,
                                    env=subprocess_env(tracking_uri, **extra_env),
                                    stdout=fh, stderr=subprocess.STDOUT)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)


@pytest.fixture
def s3_fault_proxy(s3_env, monkeypatch) -> Iterator[S3FaultProxy]:
    """A started ``S3FaultProxy`` in front of the session's moto server, set as AWS_ENDPOINT_URL."""
    with S3FaultProxy(s3_env.endpoint) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
        yield proxy


SLOW_DOWN = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
             b"<Message>Please reduce your request rate.</Message><RequestId>egnet-fault</RequestId></Error>")
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"}


class S3FaultProxy:
    def __init__(self, upstream: str):
        self.upstream = urlsplit(upstream)
        self.rules: list[list] = []       # [substring, remaining failures or None for always]
        self.log: list[tuple[str, str, int]] = []
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                if self.command in ("PUT", "POST") and proxy._should_fail(self.path):
                    proxy._record(self.command, self.path, 503)
                    self.send_response(503)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(SLOW_DOWN)))
                    self.end_headers()
                    self.wfile.write(SLOW_DOWN)
                    return
                conn = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port, timeout=120)
                try:
                    headers = {k: v for k, v in self.headers.items()
                               if k.lower() not in HOP_BY_HOP | {"expect"}}
                    conn.request(self.command, self.path, body=body, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                finally:
                    conn.close()
                proxy._record(self.command, self.path, resp.status)
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in HOP_BY_HOP | {"content-length"}:
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def fail(self, substring: str, times: int | None = None) -> None:
        """Answer 503 SlowDown to writes whose path contains ``substring`` (``times`` times, or always)."""
        with self._lock:
            self.rules.append([substring, times])

    def clear(self) -> None:
        with self._lock:
            self.rules.clear()

    def seen(self, substring: str) -> list[tuple[str, str, int]]:
        with self._lock:
            return [r for r in self.log if substring in r[1]]

    def _should_fail(self, path: str) -> bool:
        with self._lock:
            for rule in self.rules:
                if rule[0] in path and (rule[1] is None or rule[1] > 0):
                    if rule[1] is not None:
                        rule[1] -= 1
                    return True
        return False

    def _record(self, method: str, path: str, status: int) -> None:
        with self._lock:
            self.log.append((method, path, status))

    def __enter__(self) -> S3FaultProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
