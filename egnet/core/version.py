"""What is running: the egnet package version, the git commit of its source, the torch/CUDA build.

``egnet --version`` prints :func:`version_text`; every MLflow run egnet starts carries
:func:`version_tags` (``egnet_version``, ``torch_version``, ``torch_cuda``) beside
``git_commit``, so a run (and the model registered from it) says which code and which
torch build produced it.
"""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGE_DIR = Path(__file__).resolve().parents[1]


def package_version() -> str:
    """The installed distribution's version (pyproject.toml), else ``unknown``."""
    try:
        return metadata.version("egnet")
    except metadata.PackageNotFoundError:
        return "unknown"


def _git(*args: str, cwd: Path) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def git_commit(cwd: str | Path | None = None) -> str:
    """The commit of the egnet source that is running: ``git rev-parse HEAD`` where the package
    lives, if that is a git checkout of this project (a venv inside another repository is not),
    else env ``EGNET_GIT_COMMIT`` (the images set it), else ``unknown``."""
    where = Path(cwd) if cwd is not None else PACKAGE_DIR
    out = _git("rev-parse", "--show-toplevel", "HEAD", cwd=where)
    if out and len(lines := out.splitlines()) == 2:
        top, commit = lines
        if cwd is not None or (Path(top).resolve() / "egnet").resolve() == PACKAGE_DIR:
            return commit
    return os.environ.get("EGNET_GIT_COMMIT", "unknown")


def _dirty() -> bool:
    """Uncommitted changes to tracked files of the checkout the package runs from."""
    return bool(_git("status", "--porcelain", "--untracked-files=no", cwd=PACKAGE_DIR))


def torch_build() -> dict[str, Any]:
    """``torch`` version, the CUDA / cuDNN it was built with (None: a CPU build), GPUs visible now."""
    import torch

    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {"torch": torch.__version__, "cuda": torch.version.cuda, "cudnn": cudnn,
            "gpus": torch.cuda.device_count() if torch.version.cuda else 0}


def _cuda_text(build: dict[str, Any]) -> str:
    if not build["cuda"]:
        return "CPU build (no CUDA)"
    v = build["cudnn"]
    cudnn = f", cuDNN {v // 10000}.{v % 10000 // 100}.{v % 100}" if v else ""  # 90100 -> 9.1.0
    return f"CUDA {build['cuda']}{cudnn}, {build['gpus']} GPU(s) visible"


def version_text() -> str:
    """What ``egnet --version`` prints: three lines."""
    commit = git_commit()
    state = " with uncommitted changes" if commit != "unknown" and _dirty() else ""
    build = torch_build()
    return "\n".join([
        f"egnet {package_version()} (git {commit}{state})",
        f"torch {build['torch']}, {_cuda_text(build)}",
        f"python {platform.python_version()} ({platform.system()} {platform.machine()})",
    ])


def version_tags() -> dict[str, str]:
    """The tags every MLflow run egnet starts carries besides ``git_commit``."""
    build = torch_build()
    return {"egnet_version": package_version(), "torch_version": build["torch"],
            "torch_cuda": build["cuda"] or "none"}
