"""Data steps: resolve-data, materialise (DVC repo + commit, or a PVC path), validate, split, stats, drift.

Plain functions: ``components.build(image)`` turns them into lightweight KFP components.
Each body imports egnet and runs one egnet command on artifact paths; no logic here.
"""

from typing import NamedTuple

from kfp.dsl import HTML, Artifact, Dataset, Input, Markdown, Metrics, Output


def resolve_data(data_repo: str, data_rev: str, data_repo_path: str, data_path: str, data_cache: str,
                 max_age_days: float) -> NamedTuple("Resolved", [("commit", str), ("data_key", str)]):
    """The commit ``data_rev`` names now and the key the cached data steps use (uncached, every run)."""
    from collections import namedtuple

    from egnet.pipeline.steps import resolve_data as resolve

    r = resolve(data_repo, data_rev, data_repo_path, data_path, data_cache, max_age_days)
    return namedtuple("Resolved", list(r))(**r)


def materialise(data_repo: str, data_commit: str, data_repo_path: str, data_path: str, data_cache: str,
                data_key: str, data: Output[Dataset]):
    """The data version to train on, as a Dataset pointer (dataset.json) to its root on the PVC;
    cached on ``data_key`` (the commit), so the data steps after it are cached too."""
    from egnet.pipeline.steps import materialise_data

    materialise_data(data_repo, data_commit, data_repo_path, data_path, data_cache, data, data_key)


def validate(data: Input[Dataset], params_file: str, profile: str, overrides: list,
             validated: Output[Dataset], report: Output[Markdown]):
    """`egnet data validate --quarantine`: bad pairs are set aside, later steps skip them."""
    import json

    from egnet.cli import run_step
    from egnet.pipeline import steps as k

    out = k.copy_pointer(data.path, validated.path)
    run_step(["data", "validate", k.data_root(data.path), "--report", out / "validate.json",
              "--quarantine", out / k.QUARANTINE], k.config_args(params_file, profile, overrides))
    doc = json.loads((out / "validate.json").read_text())
    validated.metadata.update(k.read_pointer(out), num_pairs=doc.get("num_pairs"),
                              num_good=doc.get("num_good"))
    k.write_text(report, k.validate_markdown(doc))


def split(data: Input[Dataset], params_file: str, profile: str, overrides: list, split: Output[Dataset]):
    """`egnet data split`: train.txt / test.txt (+ split_report.json)."""
    from egnet.cli import run_step
    from egnet.pipeline import steps as k

    q = k.quarantine_file(data.path)
    run_step(["data", "split", k.data_root(data.path), "--out", split.path,
              *(["--quarantine", q] if q else [])],
             k.config_args(params_file, profile, overrides))


def stats(data: Input[Dataset], split: Input[Dataset], params_file: str, profile: str, overrides: list,
          stats: Output[Artifact], report: Output[HTML]):
    """`egnet data stats`: class and exposure distributions per split (paper Figs. 3-4)."""
    from egnet.cli import run_step
    from egnet.pipeline import steps as k

    q = k.quarantine_file(data.path)
    run_step(["data", "stats", k.data_root(data.path), "--split", split.path, "--out", stats.path,
              *(["--quarantine", q] if q else [])], k.config_args(params_file, profile, overrides))
    k.write_text(report, k.stats_page(stats.path))


def drift(data: Input[Dataset], params_file: str, profile: str, overrides: list, mlflow_uri: str,
          drift: Output[Artifact], metrics: Output[Metrics]):
    """`egnet data drift` against the champion's training data; `drift.action` decides whether
    drift stops the run (fail) or is only recorded (flag)."""
    from egnet.cli import run_step
    from egnet.pipeline import steps as k

    k.use_tracking(mlflow_uri)
    doc = k.drift_step(k.data_root(data.path), drift.path, run_step, params_file, profile, overrides)
    drift.metadata.update(status=doc["status"], failed=",".join(doc["failed"]))
    k.log_metrics(metrics, {f"drift_{name}": m["value"] for name, m in doc["measures"].items()})
