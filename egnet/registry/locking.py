"""Cross-process locks that serialise writes to the model registry (docs/registry.md, "Racing").

MLflow has no atomic alias move and no compare-and-set on model versions, and clients
reach it over HTTP only (a PostgreSQL advisory lock on the server's database is out of
their reach). So ``egnet register`` (find-or-create of a run's version) and
``egnet promote`` (decide + move aliases) take a lock named by a URI:

    ""                           no lock: one writer at a time is the operator's job
    file:///path/x.lock, /path   ``flock`` on that file (the ``filelock`` package): processes
                                 of one host, or a share with working POSIX locks. The kernel
                                 drops the lock when its holder dies, so there is never a stale lock.
    s3://bucket/key              a lease object made by a conditional PUT
                                 (``If-None-Match: *``): pods of a cluster sharing a bucket
                                 (AWS S3, MinIO, Ceph RGW with conditional writes)

S3 lease: the object holds JSON ``{owner, what, acquired_at, expires_at}`` (UNIX seconds).
The holder renews it every ``ttl_s / 3`` (a PUT with ``If-Match`` its ETag) and deletes it
(``If-Match`` again) on release. A waiter polls with jittered back-off; a lease whose
``expires_at`` has passed (its holder died without releasing) is taken over with a PUT
``If-Match`` the stale ETag, so of several waiters exactly one wins. After every PUT the
lease is read back after a short pause: a store whose conditional writes are not atomic
(moto's server checks, then writes) is caught when a second writer overwrote ours.
Clocks of the pods must agree to well under ``ttl_s`` (NTP).

Locks are re-entrant within a thread: ``promote`` holds the lock around its decision and
the alias move it calls takes it again without blocking.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from egnet.core.config import Config
from egnet.core.errors import ConfigError, DataError, EgnetError

log = logging.getLogger(__name__)

LOCK_ENV = "EGNET_REGISTRY_LOCK"   # wins over register.lock_uri, as MLFLOW_TRACKING_URI over tracking.uri
READBACK_S = 0.1                   # pause before reading a just-written lease back
_held = threading.local()          # uri -> depth, per thread (re-entrancy)


class LockTimeout(EgnetError):
    """The lock stayed held by someone else for ``timeout_s`` (exit 1)."""


@dataclass(frozen=True)
class LockSpec:
    """Which lock (``uri``, ``$VAR``s expanded), how long a lease lives, how long to wait (seconds)."""

    uri: str
    ttl_s: float
    timeout_s: float

    @classmethod
    def resolve(cls, uri: str, ttl_s: float, timeout_s: float) -> LockSpec:
        """``$EGNET_REGISTRY_LOCK`` if set, else ``uri``; ``$VAR``s expanded (pods name their bucket
        in the environment); ConfigError for an unset variable or an unknown scheme."""
        raw = os.environ.get(LOCK_ENV, uri)
        text = os.path.expandvars(raw).strip()
        if "$" in text:
            raise ConfigError(f"registry lock {raw!r}: a variable is not set in this environment")
        if text and "://" in text and not text.startswith(("file://", "s3://")):
            raise ConfigError(f"registry lock {raw!r}: expected file:///path or s3://bucket/key")
        if text.startswith("s3://") and "/" not in text[len("s3://"):].strip("/"):
            raise ConfigError(f"registry lock {raw!r}: expected s3://bucket/key")
        return cls(text, ttl_s, timeout_s)


#: no lock: dry runs, which change nothing, and callers that serialise writers themselves
NO_LOCK = LockSpec("", 0.0, 0.0)


def lock_spec(cfg: Config) -> LockSpec:
    """The registry lock of ``cfg``: ``register.lock_uri`` (``$EGNET_REGISTRY_LOCK`` wins) with the
    ``register.lock_ttl_s`` / ``lock_timeout_s`` of params.yaml."""
    r = cfg.register
    return LockSpec.resolve(r.lock_uri, r.lock_ttl_s, r.lock_timeout_s)


@contextlib.contextmanager
def registry_lock(name: str, spec: LockSpec) -> Iterator[None]:
    """Serialise register and promote/rollback across processes on the lock ``spec`` names (none
    for an empty URI; docs/registry.md, "Racing"). Re-entrant within a thread."""
    with held(spec, f"registry {name}"):
        yield


def _depth() -> dict[str, int]:
    if not hasattr(_held, "depth"):
        _held.depth = {}
    return _held.depth


@contextlib.contextmanager
def held(spec: LockSpec | None, what: str = "registry") -> Iterator[None]:
    """Hold the lock ``spec`` names for the block (no lock for None or an empty URI).

    Raises LockTimeout when it cannot be had within ``spec.timeout_s``.
    """
    if spec is None or not spec.uri:
        yield
        return
    depth = _depth()
    if depth.get(spec.uri):
        depth[spec.uri] += 1
        try:
            yield
        finally:
            depth[spec.uri] -= 1
        return
    lock = S3Lease(spec, what) if spec.uri.startswith("s3://") else FileLock(spec, what)
    lock.acquire()
    depth[spec.uri] = 1
    try:
        yield
    finally:
        depth.pop(spec.uri, None)
        lock.release()


# --------------------------------------------------------------------------- file


class FileLock:
    """``flock(LOCK_EX)`` on a file through the ``filelock`` package; waits up to ``timeout_s``."""

    def __init__(self, spec: LockSpec, what: str):
        import filelock

        self.spec = spec
        self.path = Path(spec.uri[len("file://"):] if spec.uri.startswith("file://") else spec.uri)
        self.what = what
        self._lock = filelock.FileLock(str(self.path))

    def acquire(self) -> None:
        import filelock

        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            try:
                self._lock.acquire(timeout=0)
            except filelock.Timeout:
                log.warning("waiting for registry lock %s (held by another process)", self.path)
                self._lock.acquire(timeout=self.spec.timeout_s, poll_interval=0.05)
        except filelock.Timeout:
            raise LockTimeout(f"registry lock {self.path}: still held by another process after "
                              f"{self.spec.timeout_s:.0f} s") from None
        except OSError as exc:
            raise DataError(f"registry lock {self.path}: cannot open ({exc.strerror})") from None

    def release(self) -> None:
        self._lock.release()


# --------------------------------------------------------------------------- S3


def _code(exc: Any) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


class S3Lease:
    """A lease object in S3 made with conditional writes; see the module docstring."""

    CONFLICT = {"PreconditionFailed", "412", "ConditionalRequestConflict", "409"}

    def __init__(self, spec: LockSpec, what: str):
        import boto3

        self.spec = spec
        self.bucket, _, self.key = spec.uri[len("s3://"):].partition("/")
        self.what = what
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.client = boto3.client("s3")  # endpoint and credentials: boto3's own configuration
        self.etag: str | None = None
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    # --- one request each
    def _body(self) -> bytes:
        now = time.time()
        return json.dumps({"owner": self.owner, "what": self.what, "acquired_at": round(now, 3),
                           "expires_at": round(now + self.spec.ttl_s, 3)}).encode()

    def _put(self, **cond: str) -> str | None:
        """Conditional PUT of our lease; its ETag, or None when the condition failed."""
        from botocore.exceptions import ClientError

        try:
            return self.client.put_object(Bucket=self.bucket, Key=self.key, Body=self._body(),
                                          ContentType="application/json", **cond)["ETag"]
        except ClientError as exc:
            if _code(exc) in self.CONFLICT:
                return None
            raise self._error("write", exc) from None

    def _get(self) -> tuple[dict[str, Any], str] | None:
        """(lease, ETag), or None when there is no lease object."""
        from botocore.exceptions import ClientError

        try:
            resp = self.client.get_object(Bucket=self.bucket, Key=self.key)
            body = resp["Body"].read()
        except ClientError as exc:
            if _code(exc) in ("NoSuchKey", "404", "NotFound"):
                return None
            raise self._error("read", exc) from None
        try:
            lease = json.loads(body)
            if not isinstance(lease, dict):
                raise ValueError
        except ValueError:
            lease = {"owner": "?", "expires_at": 0}  # not ours to understand: treat as expired
        return lease, resp["ETag"]

    def _error(self, verb: str, exc: Any) -> DataError:
        err = exc.response.get("Error", {})
        return DataError(f"registry lock {self.spec.uri}: {verb} failed: {err.get('Code')} "
                         f"{err.get('Message', '')}".rstrip())

    def _mine(self, etag: str | None) -> bool:
        """Read back after a pause: is the lease still ours (no non-atomic double win)?"""
        if etag is None:
            return False
        time.sleep(READBACK_S)
        got = self._get()
        return got is not None and got[0].get("owner") == self.owner

    # --- protocol
    def acquire(self) -> None:
        deadline = time.monotonic() + self.spec.timeout_s
        delay, warned = 0.1, False
        while True:
            etag = self._put(IfNoneMatch="*")
            if etag is None:
                got = self._get()  # None: released between our PUT and GET; retried below
                if got is not None and float(got[0].get("expires_at", 0)) < time.time():
                    log.warning("registry lock %s: lease of %s expired at %s; taking it over", self.spec.uri,
                                got[0].get("owner"), _utc(got[0].get("expires_at")))
                    etag = self._put(IfMatch=got[1])
            if self._mine(etag):
                self.etag = etag
                break
            if time.monotonic() >= deadline:
                got = self._get()
                holder = (f"{got[0].get('owner')} ({got[0].get('what')}) "
                          f"since {_utc(got[0].get('acquired_at'))}" if got else "someone")
                raise LockTimeout(f"registry lock {self.spec.uri}: held by {holder}; gave up after "
                                  f"{self.spec.timeout_s:.0f} s")
            if not warned:
                got = self._get()
                log.warning("waiting for registry lock %s held by %s", self.spec.uri,
                            got[0].get("owner") if got else "someone")
                warned = True
            time.sleep(delay * random.uniform(0.5, 1.5))
            delay = min(delay * 1.5, 2.0)
        self._stop.clear()
        self._renewer = threading.Thread(target=self._renew, name="egnet-lock-renewal", daemon=True)
        self._renewer.start()

    def _renew(self) -> None:
        while not self._stop.wait(self.spec.ttl_s / 3):
            try:
                etag = self._put(IfMatch=self.etag) if self.etag else None
            except EgnetError as exc:
                log.warning("%s (will retry)", exc)
                continue
            if etag is None:
                log.warning("registry lock %s: our lease was taken over (held past its expiry?)",
                            self.spec.uri)
                self.etag = None
                return
            self.etag = etag

    def release(self) -> None:
        from botocore.exceptions import ClientError

        self._stop.set()
        if self._renewer is not None:
            self._renewer.join(timeout=30)
        if self.etag is None:
            return
        try:
            try:
                self.client.delete_object(Bucket=self.bucket, Key=self.key, IfMatch=self.etag)
            except ClientError as exc:
                if _code(exc) not in ("NotImplemented", "InvalidArgument", "501"):
                    raise
                got = self._get()  # a store without conditional deletes: check, then delete
                if got is not None and got[0].get("owner") == self.owner:
                    self.client.delete_object(Bucket=self.bucket, Key=self.key)
        except ClientError as exc:
            if _code(exc) in self.CONFLICT:
                log.warning("registry lock %s: lease was taken over before release", self.spec.uri)
            elif _code(exc) not in ("NoSuchKey", "404"):
                log.warning("registry lock %s: release failed (%s); it expires in %.0f s", self.spec.uri,
                            _code(exc), self.spec.ttl_s)
        self.etag = None


def _utc(ts: Any) -> str:
    try:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(float(ts)))
    except (TypeError, ValueError):
        return "?"
