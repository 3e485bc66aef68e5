"""The data steps: the Dataset pointer, resolve-data and materialise, the validation and stats
reports, drift against the champion's reference."""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from egnet.core.errors import DataError
from egnet.pipeline.steps.common import POINTER, QUARANTINE, Runner, config_args


def write_pointer(artifact: Any, root: str | Path, **info: Any) -> dict[str, Any]:
    """Make ``artifact`` (a KFP Dataset) a pointer to the data at ``root``; returns the document."""
    doc = {"root": str(Path(root).resolve()), **info}
    out = Path(artifact.path)
    out.mkdir(parents=True, exist_ok=True)
    (out / POINTER).write_text(json.dumps(doc, indent=2) + "\n")
    artifact.metadata.update({k: v for k, v in doc.items() if isinstance(v, (str, int, float, bool))})
    return doc


def copy_pointer(src_artifact: str | Path, dst_artifact: str | Path) -> Path:
    """Make ``dst_artifact`` point where ``src_artifact`` points (a step that annotates the data,
    e.g. validate's quarantine list beside the pointer); returns its folder."""
    out = Path(dst_artifact)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(Path(src_artifact) / POINTER, out / POINTER)
    return out


def read_pointer(artifact_path: str | Path) -> dict[str, Any]:
    path = Path(artifact_path) / POINTER
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: not a dataset pointer ({exc})") from None


def data_root(artifact_path: str | Path) -> str:
    """The data root a Dataset pointer names."""
    return read_pointer(artifact_path)["root"]


def quarantine_file(artifact_path: str | Path) -> str | None:
    q = Path(artifact_path) / QUARANTINE
    return str(q) if q.exists() else None


def resolve_data(data_repo: str, data_rev: str, data_repo_path: str, data_path: str, data_cache: str,
                 max_age_days: float) -> dict[str, str]:
    """The ``resolve-data`` step (uncached, every run): what data this run uses, as strings the
    cached steps after it key on. ``data_repo``: ``data_rev`` (tag, branch, "" = HEAD) resolved
    to its commit, and ``data_key`` = ``git:<commit>#<generation>`` (egnet.pipeline.datacache;
    also reclaims versions unused for ``max_age_days``). No repo: ``data_key`` =
    ``path:<data_path>#<its data_version>``, which changes when the files do."""
    from egnet.data import versioning
    from egnet.pipeline import datacache

    if data_repo:
        r = datacache.resolve(data_repo, data_rev, data_repo_path, data_cache, max_age_days)
        return {"commit": r.commit, "data_key": r.data_key}
    root = Path(data_path)
    if not root.is_dir():
        raise DataError(f"data_path {data_path}: not a directory (and no data_repo given)")
    version = versioning.data_version(root)
    print(f"data {root} ({version})")
    return {"commit": "", "data_key": f"path:{root.resolve()}#{version}"}


def materialise_data(data_repo: str, data_commit: str, data_repo_path: str, data_path: str, data_cache: str,
                     out: Any, data_key: str = "") -> dict[str, Any]:
    """Make the data available and point ``out`` at it.

    With ``data_repo``: the version of ``data_repo_path`` at ``data_commit`` (a tag or branch
    is resolved first; the pipeline passes the commit ``resolve-data`` found) in its
    write-once folder ``data_cache/<repo+path hash>/<commit>``, fetched with DVC (no checkout)
    unless it is there. Without: ``data_path`` as it is. Either way the pointer carries the
    ``data_version`` tag (``git:<commit>``, ``dvc:md5:...`` or ``content:...``) and ``data_key``.
    """
    from egnet.data import versioning
    from egnet.pipeline import datacache

    if data_repo:
        commit = versioning.resolve_commit(data_repo, data_commit or None)
        root = datacache.fetch_once(data_repo, commit, data_repo_path, data_cache)
        source = {"repo": data_repo, "commit": commit, "path": data_repo_path}
    else:
        root = Path(data_path)
        if not root.is_dir():
            raise DataError(f"data_path {data_path}: not a directory (and no data_repo given)")
        source = {"path": data_path}
    doc = write_pointer(out, root, data_version=versioning.data_version(root), data_key=data_key, **source)
    print(f"data {doc['root']} ({doc['data_version']})")
    return doc


def validate_markdown(report: dict[str, Any], max_problems: int = 20) -> str:
    """The `egnet data validate` JSON report as Markdown."""
    problems = report.get("problems") or []
    lines = [f"# Data validation: {'ok' if report.get('ok') else 'problems found'}", "",
             f"- pairs: {report.get('num_pairs')}", f"- problems: {len(problems)}",
             f"- quarantined stems: {len(report.get('bad_stems') or [])}"]
    if problems:
        lines += ["", "| file | kind | message |", "|---|---|---|"]
        lines += [f"| {p.get('file')} | {p.get('kind')} | {str(p.get('message')).replace('|', '/')} |"
                  for p in problems[:max_problems]]
        if len(problems) > max_problems:
            lines.append(f"\n... and {len(problems) - max_problems} more (validate.json)")
    return "\n".join(lines) + "\n"


def stats_page(stats_dir: str | Path) -> str:
    """The stats step's HTML: stats.json (its start) and the charts of `egnet data stats`."""
    from egnet.core.html import simple_page

    out = Path(stats_dir)
    return simple_page("NightCity statistics", (out / "stats.json").read_text()[:20000],
                       sorted(out.glob("*.png")))


def drift_step(root: str, out: str, run: Runner, params_file: str = "", profile: str = "",
               overrides: Sequence[str] | None = ()) -> dict[str, Any]:
    """``egnet data drift ROOT --reference models:/<register.model_name>@champion``.

    No champion yet (first run): recorded as skipped. Drift past the thresholds stops the
    pipeline with ``drift.action: fail`` (the CLI exits 1) and only warns with ``flag``.
    Returns drift.json.
    """
    from egnet.core.config import load_config

    cfg = load_config(params_file or None, profile or None, list(overrides or []))
    run(["data", "drift", root, "--reference", f"models:/{cfg.register.model_name}@champion", "--out", out,
         "--allow-missing-reference"], config_args(params_file, profile, overrides))
    return json.loads((Path(out) / "drift.json").read_text())


def log_stats_reference(run_id: str, stats_dir: str | Path) -> None:
    """Log the split's stats.json into the training run: the champion's drift reference later."""
    from egnet.tracking.runs import log_data_stats

    log_data_stats(run_id, Path(stats_dir) / "stats.json")
