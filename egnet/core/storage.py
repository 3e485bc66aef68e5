"""Where a step's outputs go: a local directory or ``s3://bucket/prefix``.

``Location.from_str(out)`` gives one interface for both: ``put`` (upload a local
file), ``get`` (download), ``list``, ``exists``, ``write`` (write through a local
temporary file, then publish). Every publish is all-or-nothing: locally a
temporary sibling is renamed into place; on S3 a PUT makes the whole object
appear at once. So a reader never sees half a checkpoint.

S3 uses boto3 with its usual configuration: endpoint from ``AWS_ENDPOINT_URL``
(or ``AWS_ENDPOINT_URL_S3``; MinIO, moto), credentials from ``AWS_ACCESS_KEY_ID``
/ ``AWS_SECRET_ACCESS_KEY`` or any other boto3 source. Throttling (503 SlowDown) and
other transient errors are retried by botocore's ``standard`` mode with exponential
back-off and jitter, up to S3_MAX_ATTEMPTS attempts per request (``AWS_MAX_ATTEMPTS`` /
``AWS_RETRY_MODE`` override both); what still fails is one DataError naming the object,
and the previous checkpoint stays as it was.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from egnet.core.errors import ConfigError, DataError


class Location:
    """An output root; names below it are '/'-separated relative paths (``checkpoints/ckpt_100.pt``)."""

    uri: str

    @staticmethod
    def from_str(out: str | Path) -> Location:
        text = str(out)
        if text.startswith("s3://"):
            return S3Location(text)
        if "://" in text:
            raise ConfigError(f"--out {text}: only local paths and s3://bucket/prefix are supported")
        return LocalLocation(Path(text))

    @property
    def is_local(self) -> bool:
        return isinstance(self, LocalLocation)

    def child(self, name: str) -> str:
        """Printable URI of ``name`` below this location."""
        return f"{self.uri.rstrip('/')}/{name}"

    def put(self, local: Path, name: str) -> None:
        raise NotImplementedError

    def get(self, name: str, local: Path) -> None:
        raise NotImplementedError

    def list(self, prefix: str = "") -> list[str]:
        """Names (relative) of the files in folder ``prefix`` (and below), sorted."""
        raise NotImplementedError

    def exists(self, name: str) -> bool:
        raise NotImplementedError

    def delete(self, name: str) -> None:
        raise NotImplementedError

    def write(self, name: str, writer: Callable[[Path], None]) -> None:
        """Call ``writer(tmp_path)`` on a local temporary file, then publish it as ``name``."""
        fd, tmp = tempfile.mkstemp(prefix=".egnet-", suffix=".tmp", dir=self._tmp_dir(name))
        os.close(fd)
        try:
            writer(Path(tmp))
            self._publish(Path(tmp), name)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def write_text(self, name: str, text: str) -> None:
        self.write(name, lambda p: p.write_text(text))

    def read_text(self, name: str) -> str:
        with self.fetch(name) as p:
            return p.read_text()

    @contextlib.contextmanager
    def fetch(self, name: str) -> Iterator[Path]:
        """A local path holding ``name`` for the duration of the block (a download for S3)."""
        with tempfile.TemporaryDirectory(prefix="egnet-fetch-") as d:
            local = Path(d) / Path(name).name
            self.get(name, local)
            yield local

    # hooks
    def _tmp_dir(self, name: str) -> str | None:
        return None

    def _publish(self, tmp: Path, name: str) -> None:
        self.put(tmp, name)


class LocalLocation(Location):
    def __init__(self, root: Path):
        self.root = Path(root)
        self.uri = str(self.root)

    def path(self, name: str) -> Path:
        return self.root / name

    def _tmp_dir(self, name: str) -> str:
        # same directory as the target: os.replace is then an atomic rename
        target = self.path(name).parent
        if target.exists() and not target.is_dir():
            raise DataError(f"{target}: exists and is not a directory")
        target.mkdir(parents=True, exist_ok=True)
        return str(target)

    def _publish(self, tmp: Path, name: str) -> None:
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, self.path(name))

    def put(self, local: Path, name: str) -> None:
        self.write(name, lambda p: shutil.copyfile(local, p))

    def get(self, name: str, local: Path) -> None:
        src = self.path(name)
        if not src.is_file():
            raise DataError(f"{src}: not found")
        shutil.copyfile(src, local)

    @contextlib.contextmanager
    def fetch(self, name: str) -> Iterator[Path]:
        p = self.path(name)
        if not p.is_file():
            raise DataError(f"{p}: not found")
        yield p

    def list(self, prefix: str = "") -> list[str]:
        base = self.path(prefix) if prefix else self.root
        if not base.is_dir():
            return []
        return sorted(
            p.relative_to(self.root).as_posix()
            for p in base.rglob("*")
            if p.is_file() and not p.name.startswith(".")
        )

    def exists(self, name: str) -> bool:
        return self.path(name).is_file()

    def delete(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path(name).unlink()


S3_MAX_ATTEMPTS = 10  # ~2 minutes of backed-off retries: rides out a throttling burst, not an outage


class S3Location(Location):
    def __init__(self, uri: str):
        rest = uri[len("s3://"):]
        bucket, _, prefix = rest.partition("/")
        if not bucket:
            raise ConfigError(f"--out {uri}: expected s3://bucket/prefix")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.uri = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        self._client = None

    @property
    def client(self):
        if self._client is None:
            import boto3
            from botocore.config import Config

            # boto3 reads AWS_ENDPOINT_URL(_S3) and the credential chain itself; retries: ours
            # unless the environment chose (a Config's retries would override it)
            chosen = os.environ.get("AWS_MAX_ATTEMPTS") or os.environ.get("AWS_RETRY_MODE")
            retries = None if chosen else Config(retries={"mode": "standard",
                                                          "total_max_attempts": S3_MAX_ATTEMPTS})
            self._client = boto3.client("s3", config=retries)
        return self._client

    def key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def _call(self, what: str, fn, *args, **kwargs):
        from boto3.exceptions import S3UploadFailedError
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn(*args, **kwargs)
        except S3UploadFailedError as exc:
            # upload_file wraps the ClientError: "Failed to upload X to Y: ..."
            detail = str(exc).split(": ", 1)[-1]
            raise DataError(f"{self.uri}: {what} failed: {detail}") from None
        except ClientError as exc:
            err = exc.response.get("Error", {})
            raise DataError(f"{self.uri}: {what} failed: "
                            f"{err.get('Code')} {err.get('Message', '')}".rstrip()) from None
        except BotoCoreError as exc:
            raise DataError(f"{self.uri}: {what} failed: {exc}") from None

    def put(self, local: Path, name: str) -> None:
        self._call(f"upload of {name}", self.client.upload_file, str(local), self.bucket, self.key(name))

    def get(self, name: str, local: Path) -> None:
        self._call(f"download of {name}", self.client.download_file, self.bucket, self.key(name), str(local))

    def list(self, prefix: str = "") -> list[str]:
        # a folder: "checkpoints" lists checkpoints/..., never checkpoints_old/...
        start = (self.key(prefix.strip("/") + "/") if prefix.strip("/")
                 else (self.prefix + "/" if self.prefix else ""))
        cut = len(self.prefix) + 1 if self.prefix else 0
        names: list[str] = []
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=start)
        for page in self._call("listing", list, pages):
            names += [obj["Key"][cut:] for obj in page.get("Contents", [])]
        return sorted(n for n in names if n and not n.rsplit("/", 1)[-1].startswith("."))

    def exists(self, name: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self.key(name))
            return True
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise DataError(f"{self.child(name)}: {exc}") from None

    def delete(self, name: str) -> None:
        self._call(f"delete of {name}", self.client.delete_object, Bucket=self.bucket, Key=self.key(name))
