"""Data versions: which exact NightCity data a run used, and how to get it back.

``data_version(data_root, split_dir)`` is the MLflow ``data_version`` tag:

- ``dvc:md5:<hash>.dir`` when DVC tracks ``data_root`` (``<data_root>.dvc`` beside it, or a
  ``dvc.yaml`` stage output recorded in ``dvc.lock``) and the workspace still matches what
  DVC recorded. This is the hash ``dvc pull`` / ``dvc get --rev <git_commit>`` restores.
- ``git:<commit>`` for a copy ``materialise`` fetched at a revision (the pipeline resolves a
  tag or branch to its commit first): the data as the git+DVC repo had it at that commit
  (``dvc get <repo> <path> --rev <commit>``). The copy carries a marker with the commit, the
  repo, the path and the DVC hash, so the version travels with the data into containers
  that have no git checkout; a copy of a repo's working tree (no revision) gets the
  ``dvc:md5:`` hash from the marker instead.
- ``content:<sha256 prefix>`` otherwise: a hash of the split lists and the byte sizes of
  every listed image and label. Deterministic and cheap, but nothing can fetch data by it.

``dvc_add(path)`` runs ``dvc add`` (used by ``egnet data import --dvc-add``);
``resolve_commit(repo_url, rev)`` turns a branch or tag into the commit it names now (no
clone: the refs a ``git ls-remote`` lists); ``materialise(repo_url, rev, ...)`` fetches a data
version from a git+DVC repo without a checkout, e.g. in a pipeline step.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from egnet.core.errors import DataError

log = logging.getLogger(__name__)

DVC_PREFIX = "dvc:md5:"
GIT_PREFIX = "git:"
CONTENT_PREFIX = "content:"
#: written by ``materialise`` inside the copy: a root-level dot file, so the layout scan ignores it
MARKER = ".egnet-data-version.json"
SPLIT_LISTS = ("train.txt", "test.txt")


# --- the tag -------------------------------------------------------------


def find_dvc_root(path: str | Path) -> Path | None:
    """The nearest directory at or above ``path`` holding a ``.dvc/`` folder, or None."""
    p = Path(path).resolve()
    for candidate in (p, *p.parents):
        if (candidate / ".dvc").is_dir():
            return candidate
    return None


def _dvc_file_hash(data_root: Path) -> str | None:
    """``outs[0].md5`` of ``<data_root>.dvc`` (the file ``dvc add`` writes), if there is one."""
    import yaml

    dvc_file = data_root.with_name(data_root.name + ".dvc")
    if not dvc_file.is_file():
        return None
    try:
        outs = (yaml.safe_load(dvc_file.read_text()) or {}).get("outs") or []
        return str(outs[0]["md5"]) if outs and outs[0].get("md5") else None
    except (yaml.YAMLError, AttributeError, KeyError, IndexError, TypeError):
        raise DataError(f"{dvc_file}: not a valid .dvc file (expected outs[0].md5)") from None


def tracked_hash(data_root: str | Path) -> tuple[str, str | None] | None:
    """(recorded md5, current md5 or None if it could not be computed) for a DVC-tracked dir.

    Recorded: from ``<data_root>.dvc`` or ``dvc.lock``. Current: recomputed by DVC itself,
    which reuses the hashes in its state database (keyed by inode/mtime/size), so this
    costs a stat per file, not a re-read, once the data has been added or reproduced.
    None when ``data_root`` is not an output DVC tracks.
    """
    data_root = Path(data_root).resolve()
    root = find_dvc_root(data_root)
    if root is None:
        return None
    recorded = _dvc_file_hash(data_root)
    try:
        from dvc.repo import Repo

        with Repo(os.fspath(root)) as repo:
            for out in repo.index.outs:
                if Path(out.fs_path).resolve() != data_root:
                    continue
                if not out.hash_info or not out.hash_info.value:
                    return None  # declared (e.g. a stage output) but never produced
                current = out.get_hash()
                return out.hash_info.value, current.value if current else None
    except Exception as exc:  # noqa: BLE001 - an unreadable repo must not stop training
        if recorded:
            log.warning("%s: could not check the data against DVC (%s); using the recorded hash",
                        data_root, exc)
            return recorded, None
        return None
    return (recorded, None) if recorded else None


def read_marker(data_root: str | Path) -> dict[str, Any] | None:
    """What ``materialise`` recorded about a copy (md5, commit, repo, path, ...), if the file
    count and total bytes still match it; None for data it did not fetch or that changed since."""
    data_root = Path(data_root)
    marker = data_root / MARKER
    if not marker.is_file():
        return None
    try:
        info = json.loads(marker.read_text())
        md5, nfiles, size = info["md5"], info.get("nfiles"), info.get("size")
    except (json.JSONDecodeError, KeyError, TypeError):
        log.warning("%s: unreadable; ignoring it", marker)
        return None
    files = [p for p in data_root.rglob("*") if p.is_file() and p.name != MARKER]
    if nfiles is not None and size is not None:
        if len(files) != nfiles or sum(p.stat().st_size for p in files) != size:
            log.warning("%s: the data no longer matches the fetched version %s", data_root, md5)
            return None
    return info


def _marker_version(data_root: Path) -> str | None:
    """``git:<commit>`` (or ``dvc:md5:<hash>`` without a commit) of an unchanged ``materialise`` copy."""
    info = read_marker(data_root)
    if info is None:
        return None
    commit = info.get("commit")
    return GIT_PREFIX + commit if commit else DVC_PREFIX + str(info["md5"])


def content_hash(data_root: str | Path, split_dir: str | Path | None = None) -> str:
    """sha256 over the split lists and the byte sizes of every listed image and label (hex, 32 chars).

    Without ``split_dir``: over every (non-quarantined) pair of the layout instead.
    Sizes rather than file contents: cheap on 4,297 pairs, and any re-encoded or replaced
    file almost surely changes size. Same data + same lists -> same hash on any machine.
    """
    from egnet.data.layout import pairs_by_stem, read_split_list, select

    pairs = pairs_by_stem(data_root)
    if split_dir is None:
        lists = {"all": sorted(pairs.values(), key=lambda p: (p.split, p.stem))}
    else:
        lists = {}
        for name in SPLIT_LISTS:
            path = Path(split_dir) / name
            lists[name] = select(pairs, read_split_list(path), str(path))
    digest = hashlib.sha256()
    for name, chosen in lists.items():
        digest.update(f"[{name}]\n".encode())
        for pair in chosen:
            digest.update(
                f"{pair.split}/{pair.stem} {pair.image.stat().st_size} {pair.label.stat().st_size}\n".encode()
            )
    return digest.hexdigest()[:32]


def data_version(data_root: str | Path, split_dir: str | Path | None = None) -> str:
    """The ``data_version`` tag for a run on ``data_root`` with the lists in ``split_dir``.

    ``dvc:md5:<hash>.dir`` if DVC tracks the data and it is unchanged since DVC recorded it;
    ``git:<commit>`` for an unchanged ``materialise`` copy of a revision (``dvc:md5:`` for one of
    a working tree); else ``content:<hash>`` (see ``content_hash``).
    The split lists are not part of a DVC hash: they follow from the data, params.yaml and
    the code at the run's ``git_commit``.
    """
    data_root = Path(data_root)
    if not data_root.is_dir():
        raise DataError(f"{data_root}: data directory not found")
    tracked = tracked_hash(data_root)
    if tracked is not None:
        recorded, current = tracked
        if current is None or current == recorded:
            return DVC_PREFIX + recorded
        log.warning(
            "%s has changed since DVC recorded it (%s, now %s): run `dvc add %s` (or `dvc repro`) "
            "so the run can be traced to its data; tagging a content hash instead",
            data_root, recorded, current, data_root,
        )
    else:
        marked = _marker_version(data_root)
        if marked:
            return marked
    return CONTENT_PREFIX + content_hash(data_root, split_dir)


# --- dvc add -------------------------------------------------------------


def dvc_command() -> list[str]:
    """How to call the dvc CLI of this environment (``python -m dvc``: no PATH lookup)."""
    return [sys.executable, "-m", "dvc"]


def dvc_add(path: str | Path) -> str:
    """``dvc add path`` in the DVC repo containing it; returns ``dvc:md5:<hash>.dir``.

    Writes ``<path>.dvc`` and adds ``path`` to the .gitignore beside it; the caller (or the
    user) commits those two files. Raises DataError if ``path`` is not inside a DVC repo
    or dvc fails (its last error line is in the message).
    """
    path = Path(path).resolve()
    if not path.exists():
        raise DataError(f"{path}: nothing to `dvc add` (not found)")
    root = find_dvc_root(path)
    if root is None:
        raise DataError(f"{path}: not inside a DVC repository "
                        "(run `git init && dvc init` at the project root)")
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    proc = subprocess.run([*dvc_command(), "add", "-q", os.fspath(path)], cwd=root, env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
        raise DataError(f"dvc add {path}: {lines[-1] if lines else f'exit {proc.returncode}'}")
    md5 = _dvc_file_hash(path)
    if not md5:
        raise DataError(f"dvc add {path}: no hash in {path.name}.dvc afterwards")
    return DVC_PREFIX + md5


# --- materialise ---------------------------------------------------------


def _remote_config_from_env() -> dict[str, Any] | None:
    """S3 endpoint for MinIO & co. from the environment; credentials stay in AWS_* for boto."""
    endpoint = os.environ.get("EGNET_DVC_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL_S3") \
        or os.environ.get("AWS_ENDPOINT_URL")
    return {"endpointurl": endpoint} if endpoint else None


def is_commit(rev: str | None) -> bool:
    """A full 40-hex git commit id (what ``resolve_commit`` returns)."""
    return bool(rev) and len(rev) == 40 and all(c in "0123456789abcdef" for c in rev)


def resolve_commit(repo_url: str, rev: str | None = None) -> str:
    """The commit ``rev`` names in ``repo_url`` now: a full commit id as it is; a branch, a tag
    (annotated tags peeled to their commit) or ``refs/...`` from the repo's refs (``git
    ls-remote``, no clone); None or "": the default branch (HEAD). DataError (one line) for a
    repo that cannot be read or a rev it does not have (an abbreviated commit included)."""
    if is_commit(rev):
        return str(rev)
    where = f"{repo_url}@{rev or 'HEAD'}"
    try:
        refs = _list_refs(repo_url)
    except Exception as exc:  # noqa: BLE001 - dulwich raises many kinds; one line for the user
        raise DataError(f"{where}: cannot list the refs of the repo: {_why(exc)}") from None
    names = ["HEAD"] if not rev else (
        [rev] if rev.startswith("refs/") else [f"refs/heads/{rev}", f"refs/tags/{rev}"])
    for name in names:
        peeled = refs.get(name + "^{}")   # an annotated tag: the commit it points at
        if peeled or refs.get(name):
            return peeled or refs[name]
    raise DataError(f"{where}: no such branch or tag (a commit must be given as its full 40-hex id)")


def _list_refs(repo_url: str) -> dict[str, str]:
    """``git ls-remote``: ref name -> object id, with ``<tag>^{}`` -> commit for annotated tags."""
    from dulwich import porcelain
    from dulwich.repo import Repo

    local = repo_url[len("file://"):] if repo_url.startswith("file://") else repo_url
    if "://" not in local and Path(local).exists():   # a path: peel the tags ourselves
        with Repo(local) as repo:
            refs = {k.decode(): v.decode() for k, v in repo.get_refs().items()}
            for name in [n for n in refs if n.startswith("refs/tags/")]:
                peeled = repo.get_peeled(name.encode()).decode()
                if peeled != refs[name]:
                    refs[name + "^{}"] = peeled
            return refs
    result = porcelain.ls_remote(repo_url, include_tags=True)   # the server lists peeled tags itself
    refs = getattr(result, "refs", result)                       # a plain dict before dulwich 0.23
    return {k.decode(): v.decode() for k, v in refs.items() if v}


def materialise(
    repo_url: str,
    rev: str | None = None,
    path: str = "data/nightcity",
    *,
    out: str | Path,
    remote_config: dict[str, Any] | None = None,
) -> Path:
    """Fetch ``path`` of a git+DVC repo at ``rev`` into ``out``, without a checkout.

    ``repo_url``: a local repo path or a git URL; ``rev``: commit, branch or tag (None: the
    working tree of a local repo, the default branch of a URL). DVC-tracked data comes from
    the DVC cache or the repo's default remote; S3 credentials come from AWS_* (or
    ``remote_config``), the endpoint from ``remote_config["endpointurl"]``, else
    EGNET_DVC_ENDPOINT_URL / AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL. ``out`` is replaced
    atomically and gets a marker file so ``data_version`` tags the copy with the commit (or,
    for a working tree, its DVC hash).
    """
    from dvc.api import DVCFileSystem

    from egnet.core.files import atomic_dir

    remote_config = remote_config if remote_config is not None else _remote_config_from_env()
    where = f"{repo_url}@{rev or 'workspace'}"
    fs = DVCFileSystem(repo_url, rev=rev, remote_config=remote_config)  # lazy: opens on first use
    try:
        try:
            is_dir = fs.isdir(path)
            dvc_info = fs.info(path).get("dvc_info") or {} if is_dir else {}
            resolved = fs.repo.get_rev() if rev else None
        except Exception as exc:  # noqa: BLE001 - dvc/scmrepo raise many kinds; one line for the user
            raise DataError(f"{where}: cannot open as a git+DVC repo: {_why(exc)}") from None
        if not is_dir:
            raise DataError(f"{where}: no directory '{path}'")
        with atomic_dir(out) as tmp:
            try:
                # trailing slash: copy the folder's contents into tmp (not tmp/<name>/)
                fs.get(path.rstrip("/") + "/", os.fspath(tmp), recursive=True)
            except Exception as exc:  # noqa: BLE001
                raise DataError(f"{where}: fetching '{path}' failed: {_why(exc)}") from None
            files = [p for p in tmp.rglob("*") if p.is_file()]
            if dvc_info.get("md5"):
                marker = {
                    "md5": dvc_info["md5"], "repo": repo_url, "rev": resolved, "path": path,
                    "commit": resolved if is_commit(resolved) else None,
                    "nfiles": len(files), "size": sum(p.stat().st_size for p in files),
                }
                (tmp / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
    finally:
        fs.close()
    return Path(out)



def _why(exc: BaseException) -> str:
    """The most specific message in an exception chain (DVC wraps e.g. git errors as 'SCM error')."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
