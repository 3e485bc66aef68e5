"""A loopback JSON HTTP stub for API tests (the KFP API, the Kubernetes API, an MLflow server's
refusals), since none of those servers runs here; the fixture ``json_stub`` (tests/conftest.py)
starts and stops them.

``start_stub(handle, servers) -> Stub`` serves ``handle(request) -> (status, JSON body)`` on
127.0.0.1 and records every request (a ``Request``: method, path, query, headers lower-cased,
raw body, its ``json``, and ``extra`` for what a handler keeps); the test reads ``stub.url``,
``stub.requests`` and ``stub.find(method, path)``. A body of ``bytes`` is sent as it is, as
``text/plain`` (e.g. a pod's log).
"""

from __future__ import annotations

import json
import threading
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]          # names lower-cased
    raw: bytes
    json: Any = None
    extra: dict[str, Any] = field(default_factory=dict)   # what a handler wants to keep (e.g. an upload)


@dataclass
class Stub:
    url: str
    requests: list[Request]

    def find(self, method: str, path: str) -> list[Request]:
        return [r for r in self.requests if r.method == method and r.path == path]


def start_stub(handle: Callable[[Request], tuple[int, Any]], servers: list[ThreadingHTTPServer]) -> Stub:
    requests: list[Request] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # quiet
            pass

        def _serve(self) -> None:
            url = urllib.parse.urlsplit(self.path)
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            req = Request(self.command, url.path, urllib.parse.parse_qs(url.query),
                          {k.lower(): v for k, v in self.headers.items()}, raw)
            if raw and self.headers.get("Content-Type", "").startswith("application/json"):
                req.json = json.loads(raw)
            requests.append(req)
            code, body = handle(req)
            raw = isinstance(body, bytes)
            data = body if raw else json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "text/plain" if raw else "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _serve

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    servers.append(server)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return Stub(f"http://127.0.0.1:{server.server_address[1]}", requests)
