"""Data versions on the dataset PVC: write-once folders keyed by commit, reclaimed by age.

Layout under ``data_cache`` (params.yaml ``pipeline.data_cache``)::

    <data_cache>/<16 hex of repo + path>/<commit>/        the data at that commit (never modified)
    <data_cache>/<16 hex of repo + path>/<commit>.gen     its generation id; mtime = last use
    <data_cache>/<16 hex of repo + path>/.tmp-<commit>-*  a fetch in progress
    <data_cache>/.egnet-cache.lock                         serialises resolve and reclaim

- :func:`resolve` (the pipeline's uncached ``resolve-data`` step, every run): the rev to a
  commit, the version's generation (created when the folder does not exist yet), its last
  use, and the reclaim of versions no run has used for ``max_age_days``. Returns the
  ``data_key`` the cached steps after it key on: ``git:<commit>#<generation>``. A new
  generation after a reclaim gives a new key, so no cached step can hand on a pointer to a
  folder that is gone.
- :func:`fetch_once` (the ``materialise`` step, cached on ``data_key``): fetch into a private
  temporary folder, then one ``rename`` into place. Two runs fetching the same commit
  at the same time both finish; the first rename wins, the other run drops its copy and
  uses the winner's. A folder in place is never replaced or deleted while it is in use:
  only :func:`reclaim` deletes, and only versions unused for ``max_age_days`` (it renames
  them aside first, so nobody ever sees a half-deleted version under its name).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

LOCK = ".egnet-cache.lock"
GEN = ".gen"
TMP = ".tmp-"
TRASH = ".trash-"
DAY_S = 86400.0


@dataclass(frozen=True)
class Resolved:
    commit: str       # full commit id ("" for data_path)
    data_key: str     # identity the cached steps key on
    folder: str       # where the version is (or will be) on the PVC


def repo_dir(data_cache: str | Path, repo: str, path: str) -> Path:
    """The folder holding the versions of ``path`` in ``repo``."""
    return Path(data_cache) / hashlib.sha256(f"{repo}\n{path}".encode()).hexdigest()[:16]


def version_dir(data_cache: str | Path, repo: str, path: str, commit: str) -> Path:
    return repo_dir(data_cache, repo, path) / commit


@contextlib.contextmanager
def _locked(data_cache: Path) -> Iterator[None]:
    from filelock import FileLock

    data_cache.mkdir(parents=True, exist_ok=True)
    with FileLock(str(data_cache / LOCK)):
        yield


def _generation(folder: Path) -> str:
    """The version's generation id: read, or created (a new one when the folder is not there).
    Its file's mtime is set to now: the version's last use."""
    gen = folder.with_name(folder.name + GEN)
    text = gen.read_text().strip() if gen.is_file() else ""
    if not text:
        text = uuid.uuid4().hex[:12]
        gen.write_text(text + "\n")
    os.utime(gen)
    return text


def resolve(repo: str, rev: str, path: str, data_cache: str, max_age_days: float,
            log: Callable[[str], None] = print, now: Callable[[], float] = time.time) -> Resolved:
    """The commit ``rev`` names now, the version's ``data_key``, and reclaim of unused versions."""
    from egnet.data.versioning import resolve_commit

    commit = resolve_commit(repo, rev or None)
    folder = version_dir(data_cache, repo, path, commit)
    with _locked(Path(data_cache)):
        folder.parent.mkdir(parents=True, exist_ok=True)
        generation = _generation(folder)
        for gone in reclaim(data_cache, max_age_days, keep={folder}, now=now()):
            log(f"reclaimed {gone} (unused for more than {max_age_days:g} days)")
    state = "on the PVC" if folder.is_dir() else "to fetch"
    log(f"data {repo}@{rev or 'HEAD'} = commit {commit} ({state}: {folder})")
    return Resolved(commit, f"git:{commit}#{generation}", str(folder))


def reclaim(data_cache: str | Path, max_age_days: float, keep: set[Path] = frozenset(),
            now: float | None = None) -> list[Path]:
    """Delete versions whose last use is older than ``max_age_days`` (0: none), and fetches
    abandoned that long ago. Call with the cache lock held. Returns the versions deleted."""
    if not max_age_days:
        return []
    cutoff = (time.time() if now is None else now) - max_age_days * DAY_S
    keep = {Path(k).resolve() for k in keep}
    gone: list[Path] = []
    for rdir in sorted(p for p in Path(data_cache).iterdir() if p.is_dir() and not p.name.startswith(".")):
        for gen in sorted(rdir.glob("*" + GEN)):
            folder = gen.with_name(gen.name[: -len(GEN)])
            if folder.resolve() in keep or gen.stat().st_mtime >= cutoff:
                continue
            if folder.is_dir():
                _remove(folder)
                gone.append(folder)
            gen.unlink(missing_ok=True)
        for left in rdir.iterdir():
            if left.name.startswith(TRASH) or (left.name.startswith(TMP) and left.stat().st_mtime < cutoff):
                shutil.rmtree(left, ignore_errors=True)
    return gone


def _remove(folder: Path) -> None:
    """Rename aside, then delete: the version's name never shows a half-deleted folder."""
    trash = folder.with_name(f"{TRASH}{folder.name}-{uuid.uuid4().hex[:8]}")
    os.rename(folder, trash)
    shutil.rmtree(trash, ignore_errors=True)


def fetch_once(repo: str, commit: str, path: str, data_cache: str,
               fetch: Callable[..., Path] | None = None, log: Callable[[str], None] = print) -> Path:
    """The version's folder, fetched now unless it is there: write-once, the first rename wins."""
    from egnet.data import versioning

    folder = version_dir(data_cache, repo, path, commit)
    if folder.is_dir():
        log(f"reusing {folder} ({repo}@{commit})")
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f"{TMP}{commit}-{uuid.uuid4().hex[:8]}")
    try:
        log(f"fetching {path} of {repo}@{commit} into {folder}")
        got = (fetch or versioning.materialise)(repo, commit, path, out=tmp / "data")
        try:
            os.rename(got, folder)
        except OSError as exc:
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY) or not folder.is_dir():
                raise
            log(f"{folder}: fetched by another run meanwhile; using that copy")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder
