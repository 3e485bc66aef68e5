"""What the Kubeflow Pipelines components (components/*.py) call: glue, no step logic.

A component runs one ``egnet`` CLI command on artifact paths (``egnet.cli.run_step``, which
raises StepFailed on a non-zero exit), and uses the helpers here for what KFP adds around it: the
Dataset pointer, the Markdown/HTML reports, the KFP Metrics artifact, and the train
step's choice between one process, ``torchrun`` in the pod, and a TrainJob/PyTorchJob.

The Dataset artifact of the data steps is a **pointer**: ``dataset.json`` naming the
data root on the dataset PVC (NightCity is 4 GB; copying it through the artifact store
at every step would cost more than the steps). Small outputs (split lists, quarantine,
stats, metrics, models) are real artifacts.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from egnet.core.errors import ConfigError, DataError, GateRefused, StepFailed

POINTER = "dataset.json"
QUARANTINE = "quarantine.txt"
MODEL_FILES = ("model.pt", "mlflow_run_id", "train_summary.json")
#: what the train step's pod asks for when it only launches and watches a multi-node job
LAUNCHER_RESOURCES = {"cpu_request": "500m", "cpu_limit": "1", "memory_request": "1Gi", "memory_limit": "2Gi"}


#: runs ``egnet <argv> <config>`` and raises StepFailed on a non-zero exit (``egnet.cli.run_step``)
Runner = Callable[[Sequence[str], Sequence[str]], int]


# --------------------------------------------------------------------------- running egnet


def config_args(params_file: str = "", profile: str = "", overrides: Sequence[str] | None = (),
                experiment: str = "") -> list[str]:
    """The common ``--params/--profile/--set`` arguments; empty values are left out."""
    args: list[str] = []
    if params_file:
        args += ["--params", params_file]
    if profile:
        args += ["--profile", profile]
    for item in overrides or []:
        args += ["--set", str(item)]
    if experiment:
        args += ["--set", f"tracking.experiment={experiment}"]
    return args


def use_tracking(mlflow_uri: str) -> None:
    """A non-empty pipeline ``mlflow_uri`` wins over the pod's MLFLOW_TRACKING_URI."""
    if mlflow_uri:
        os.environ["MLFLOW_TRACKING_URI"] = mlflow_uri


# --------------------------------------------------------------------------- data pointer


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


def _is_commit(rev: str) -> bool:
    return re.fullmatch(r"[0-9a-f]{40}", rev or "") is not None


def materialise_data(data_repo: str, data_rev: str, data_repo_path: str, data_path: str, data_cache: str,
                     out: Any) -> dict[str, Any]:
    """Make the data available and point ``out`` at it.

    With ``data_repo``: fetch ``data_repo_path`` at ``data_rev`` (DVC, no checkout) into
    ``data_cache/<hash of repo, rev, path>``; a folder already fetched for the same
    commit is reused. Without: use ``data_path`` as it is. Either way the pointer carries
    the ``data_version`` tag (``dvc:md5:...`` or ``content:...``).
    """
    from egnet.data import versioning

    if data_repo:
        key = hashlib.sha256(f"{data_repo}\n{data_rev}\n{data_repo_path}".encode()).hexdigest()[:16]
        root = Path(data_cache) / key
        marker = root / versioning.MARKER
        fetched = json.loads(marker.read_text()) if marker.is_file() else {}
        if _is_commit(data_rev) and fetched.get("rev") == data_rev:
            print(f"reusing {root} ({data_repo}@{data_rev})")
        else:
            print(f"fetching {data_repo_path} of {data_repo}@{data_rev or 'default branch'} into {root}",
                  flush=True)
            versioning.materialise(data_repo, data_rev or None, data_repo_path, out=root)
        source = {"repo": data_repo, "rev": data_rev, "path": data_repo_path}
    else:
        root = Path(data_path)
        if not root.is_dir():
            raise DataError(f"data_path {data_path}: not a directory (and no data_repo given)")
        source = {"path": data_path}
    doc = write_pointer(out, root, data_version=versioning.data_version(root), **source)
    print(f"data {doc['root']} ({doc['data_version']})")
    return doc


# --------------------------------------------------------------------------- reports and metrics


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


def write_text(artifact: Any, text: str) -> None:
    Path(artifact.path).parent.mkdir(parents=True, exist_ok=True)
    Path(artifact.path).write_text(text)


def log_metrics(metrics: Any, values: dict[str, Any]) -> dict[str, float]:
    """Log every finite number of ``values`` to a KFP Metrics artifact; returns what was logged."""
    logged = {}
    for name, value in values.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value == value:
            metrics.log_metric(name, float(value))
            logged[name] = float(value)
    return logged


def evaluation_metrics(doc: dict[str, Any]) -> dict[str, float]:
    """metrics.json -> the names the evaluation logs into the MLflow run (``test_*``), the same
    names in the KFP Metrics artifact."""
    from egnet.evaluation.evaluate import mlflow_metrics

    return mlflow_metrics(doc)


def train_metrics(summary: dict[str, Any]) -> dict[str, Any]:
    """train_summary.json -> last logged losses, last validation and throughput."""
    out = {k: v for k, v in (summary.get("final") or {}).items() if k != "iteration"}
    out.update({k: v for k, v in ((summary.get("val") or [{}])[-1] or {}).items() if k != "iteration"})
    out.update({"iterations": summary.get("iteration"), "wall_s": summary.get("wall_s"),
                "world_size": summary.get("world_size")})
    return out


# --------------------------------------------------------------------------- train


def train_pod_resources(nodes: int, gpus_per_node: int, cpu_request: str, cpu_limit: str,
                        memory_request: str, memory_limit: str) -> dict[str, Any]:
    """What the train step's own pod requests: the training's resources when it trains in
    the pod (one node), a launcher's when a multi-node job does the work. Holding GPUs in a
    pod that only waits would waste them and can deadlock a small cluster."""
    if nodes > 1:
        return {"gpus": 0, **LAUNCHER_RESOURCES}
    return {"gpus": gpus_per_node, "cpu_request": cpu_request, "cpu_limit": cpu_limit,
            "memory_request": memory_request, "memory_limit": memory_limit}


def torchrun_command(nproc: int, argv: Sequence[str]) -> list[str]:
    """``torchrun --standalone --nproc_per_node=N -m egnet.cli <argv>`` with this interpreter."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "-m", "egnet.cli", *argv]


def train_location(train_out: str, job: str, model_dir: str) -> str:
    """Where `egnet train --out` writes: ``<train_out>/<job>`` (``${VAR}`` expanded), or the
    Model artifact itself when ``train_out`` is empty (local runs)."""
    if not train_out:
        return model_dir
    out = os.path.expandvars(train_out)
    if "$" in out:
        raise ConfigError(f"train_out {train_out!r}: variable not set in this pod's environment")
    return f"{out.rstrip('/')}/{job}"


def _stage_on_pvc(split_dir: str, quarantine: str | None, data: str, job: str,
                  data_mount: str) -> tuple[str, str | None]:
    """Copy the split lists (and quarantine) where the training pods can read them: the PVC."""
    mount = Path(data_mount)
    if not Path(data).resolve().is_relative_to(mount.resolve()):
        raise ConfigError(f"multi-node training reads the data from the PVC at {data_mount}; "
                          f"{data} is not on it")
    stage = mount / "runs" / job
    shutil.copytree(split_dir, stage / "split", dirs_exist_ok=True)
    q = None
    if quarantine:
        q = str(stage / QUARANTINE)
        shutil.copyfile(quarantine, q)
    return str(stage / "split"), q


def run_training(*, data: str, split: str, quarantine: str | None, model_dir: str, nodes: int,
                 gpus_per_node: int, image: str, train_out: str, run_id: str, job_kind: str,
                 cluster: dict[str, Any], config: list[str], run: Runner, mlflow_uri: str = "",
                 jobs_factory: Callable[[str], Any] | None = None) -> dict[str, Any]:
    """Train in this process (one GPU or CPU), under ``torchrun`` in this pod (one node, N
    GPUs), or as a TrainJob/PyTorchJob of ``nodes`` pods; then put model.pt, mlflow_run_id and
    train_summary.json into ``model_dir``. Returns the train summary.

    The job name and the ``--out`` location derive from the KFP run id, so a retried step
    resumes from the run's checkpoints and re-attaches to its job instead of starting over.
    """
    from egnet.core.storage import Location
    from egnet.pipeline import trainjob
    from egnet.pipeline.jobs import TrainingJobs, run_job

    job = trainjob.job_name(run_id)
    out = train_location(train_out, job, model_dir)

    def argv(split_dir: str, q: str | None) -> list[str]:
        return ["train", "--data", data, "--split", split_dir, "--out", out,
                *(["--quarantine", q] if q else []), *config]

    if nodes > 1:
        if not out.startswith("s3://"):
            raise ConfigError(f"nodes={nodes}: train_out must be s3://... (shared by the nodes), got {out!r}")
        split_pvc, q_pvc = _stage_on_pvc(split, quarantine, data, job, cluster["data_mount"])
        spec = trainjob.JobSpec.from_cluster(cluster, name=job, image=image, nodes=nodes,
                                             gpus_per_node=gpus_per_node, args=argv(split_pvc, q_pvc)[1:],
                                             run_id=run_id, mlflow_uri=mlflow_uri)
        jobs = (jobs_factory or (lambda kind: TrainingJobs.in_cluster(kind)))(job_kind)
        run_job(jobs, trainjob.build(job_kind, spec), timeout_s=float(cluster["wait_timeout_s"]),
                         poll_s=float(cluster["poll_s"]), cleanup=cluster["cleanup"])
    elif gpus_per_node > 1:
        cmd = torchrun_command(gpus_per_node, argv(split, quarantine))
        print(" ".join(cmd), flush=True)
        code = subprocess.run(cmd, check=False).returncode
        if code != 0:
            raise StepFailed(f"torchrun egnet train exited with {code}")
    else:
        run(argv(split, quarantine), ())
    if out != model_dir:
        loc = Location.from_str(out)
        Path(model_dir).mkdir(parents=True, exist_ok=True)
        for name in MODEL_FILES:
            loc.get(name, Path(model_dir) / name)
    summary = json.loads((Path(model_dir) / "train_summary.json").read_text())
    summary["train_out"] = out
    return summary


# --------------------------------------------------------------------------- gate


def gate_decision(version: str, params_file: str = "", profile: str = "",
                  overrides: Sequence[str] | None = ()) -> str:
    """``egnet promote --version V --dry-run``: "promote" if the gate passes, "keep" if it refuses."""
    from egnet.core.config import load_config
    from egnet.registry.promotion import promote
    from egnet.tracking.client import client_for

    cfg = load_config(params_file or None, profile or None, list(overrides or []))
    try:
        promote(client_for(cfg), cfg.register.model_name, cfg, version, dry_run=True)
    except GateRefused as exc:
        print(f"gate: {exc}")
        return "keep"
    return "promote"


# --------------------------------------------------------------------------- drift and reports


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


def evaluation_page(evaluation_dir: str | Path, run: Runner, config: Sequence[str] = ()) -> str:
    """The evaluate step's HTML: ``egnet report RUN_ID`` (also logged into the training run)
    when evaluate logged into a run, else the metrics table and charts."""
    from egnet.core.html import simple_page
    from egnet.metrics import format_table

    out = Path(evaluation_dir)
    run_id = json.loads((out / "model_source.json").read_text()).get("logged_to_run")
    if run_id:
        run(["report", run_id, "--out", str(out / "report")], config)
        return (out / "report" / "report.html").read_text()
    doc = json.loads((out / "metrics.json").read_text())
    return simple_page("EGNet evaluation (test split)", format_table(doc), sorted(out.glob("*.png")))
