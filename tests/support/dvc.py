"""Temporary git+DVC repositories driven by the real `git` and `dvc` CLIs.

``tool_env(tmp)`` isolates DVC (site cache, global config, no analytics) and git (author,
no global config) and puts this venv's ``bin/`` first on PATH so stages find ``egnet``.
``dir_md5(root)`` is an independent re-implementation of DVC's ``.dir`` hash (md5 of the
sorted JSON list of ``{"md5", "relpath"}`` entries), used to check hashes DVC reports.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.support import BIN, REPO


def tool_env(tmp: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for git/dvc/egnet subprocesses that touches nothing outside ``tmp``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_", "DVC_", "GIT_"))}
    env.update({
        "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        "DVC_NO_ANALYTICS": "1",
        "DVC_SITE_CACHE_DIR": str(tmp / ".dvc-site"),
        "DVC_GLOBAL_CONFIG_DIR": str(tmp / ".dvc-global"),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "test@example.com",
        "GIT_COMMITTER_NAME": "test", "GIT_COMMITTER_EMAIL": "test@example.com",
        "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
    })
    env.update(extra or {})
    return env


def isolate_inprocess(monkeypatch: pytest.MonkeyPatch, tmp: Path) -> None:
    """The same isolation for DVC's Python API called inside the test process."""
    for key in ("DVC_NO_ANALYTICS", "DVC_SITE_CACHE_DIR", "DVC_GLOBAL_CONFIG_DIR"):
        monkeypatch.setenv(key, tool_env(tmp)[key])


def run(cmd: list[str], cwd: Path, env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess:
    """Run a command; on an unexpected exit code fail with the tail of its output."""
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if check and proc.returncode != 0:
        tail = (proc.stdout + proc.stderr)[-4000:]
        pytest.fail(f"{' '.join(cmd)} (cwd {cwd}) exited {proc.returncode}:\n{tail}")
    return proc


def dvc(cwd: Path, env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return run([str(BIN / "dvc"), *args], cwd, env, check)


def git(cwd: Path, env: dict[str, str], *args: str) -> str:
    return run(["git", *args], cwd, env).stdout.strip()


def init_repo(path: Path, env: dict[str, str]) -> Path:
    """``git init`` + ``dvc init`` in ``path`` (created)."""
    path.mkdir(parents=True, exist_ok=True)
    git(path, env, "init", "-q", "-b", "main")
    dvc(path, env, "init", "-q")
    return path


def project_repo(path: Path, env: dict[str, str]) -> Path:
    """:func:`init_repo` holding this project's dvc.yaml, .dvcignore, .gitignore, configs/ and
    egnet/ (what `dvc repro` / `dvc exp run` run); params.yaml is the caller's to write."""
    import shutil

    repo = init_repo(path, env)
    for name in ("dvc.yaml", ".dvcignore", ".gitignore"):
        shutil.copy(REPO / name, repo / name)
    shutil.copytree(REPO / "configs", repo / "configs")
    shutil.copytree(REPO / "egnet", repo / "egnet", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return repo


def commit(path: Path, env: dict[str, str], message: str) -> str:
    """Commit everything git sees; returns the commit hash."""
    git(path, env, "add", "-A")
    git(path, env, "commit", "-q", "-m", message)
    return git(path, env, "rev-parse", "HEAD")


def dir_md5(root: Path) -> str:
    """DVC's hash of a directory, computed without DVC: ``<md5>.dir``."""
    entries = sorted(
        ({"md5": hashlib.md5(p.read_bytes()).hexdigest(), "relpath": p.relative_to(root).as_posix()}
         for p in root.rglob("*") if p.is_file()),
        key=lambda e: e["relpath"],
    )
    return hashlib.md5(json.dumps(entries, sort_keys=True).encode()).hexdigest() + ".dir"


def tree_bytes(root: Path) -> dict[str, bytes]:
    """relpath -> content of every file under ``root`` (for exact comparisons)."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
