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

import json
import os
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
RESOURCE_KEYS = ("cpu_request", "cpu_limit", "memory_request", "memory_limit")
#: MLflow tags that link a training run to its KFP run (set when the run starts, EGNET_RUN_TAGS)
KFP_TAGS = ("kfp_run_id", "kfp_run_name", "kfp_pipeline_version")
#: the tag the pipeline's exit handler sets on the training run: the KFP run's final state
FINAL_STATE_TAG = "kfp_final_state"
#: KFP final states of a run that ended well (MLMD ``COMPLETE``; kfp.local says ``SUCCEEDED``)
SUCCESS_STATES = ("COMPLETE", "SUCCEEDED")


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
    """A non-empty pipeline ``mlflow_uri`` wins over the pod's MLFLOW_TRACKING_URI.

    ``MLFLOW_RUN_ID`` is dropped: KFP 2.17's MLflow plugin (when a cluster enables it with
    ``injectUserEnvVars``) injects its own per-task run there, and ``mlflow.start_run()``
    would silently log the training into it instead of the run the steps manage.
    """
    if mlflow_uri:
        os.environ["MLFLOW_TRACKING_URI"] = mlflow_uri
    if os.environ.pop("MLFLOW_RUN_ID", None):
        print("ignoring MLFLOW_RUN_ID (KFP's MLflow plugin): the steps manage their own MLflow runs")


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


def train_pod_resources(nodes: int, gpus_per_node: int, *, training: dict[str, str], launcher: dict[str, str],
                        accelerator: str, image: str, cpu_image: str, node_selector: dict[str, str],
                        tolerations: list[dict[str, Any]]) -> dict[str, Any]:
    """What the train step's own pod asks for. One node: the training's GPUs (a count as a
    string: KFP resolves resource placeholders only from STRING values), CPU/memory, the CUDA
    image, the GPU node selector and tolerations. Several nodes: the pod only launches and
    watches the job, so no GPU, the ``step_*`` resources, the CPU image, any node (holding GPUs
    in a pod that only waits would waste them and can deadlock a small cluster). Every
    quantity is a string (``training``/``launcher``: the ``RESOURCE_KEYS``)."""
    if nodes > 1 or gpus_per_node < 1:
        pod = {"accelerator": "", "gpus": "0", "node_selector": {}, "tolerations": []}
        pod.update({k: str(launcher[k]) for k in RESOURCE_KEYS} if nodes > 1
                   else {k: str(training[k]) for k in RESOURCE_KEYS})
        return {**pod, "image": cpu_image}
    return {"accelerator": accelerator, "gpus": str(gpus_per_node),
            **{k: str(training[k]) for k in RESOURCE_KEYS}, "image": image,
            "node_selector": dict(node_selector), "tolerations": [dict(t) for t in tolerations]}


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


def cpu_image_of(image: str, cpu_image: str = "") -> str:
    """The image of the CPU steps: ``cpu_image``, else ``<image>-cpu`` (the tag ``make image``
    pushes beside the CUDA one). An image pinned by digest has no tag to extend: name it."""
    if cpu_image:
        return cpu_image
    if "@" in image:
        raise ConfigError(f"image {image}: pinned by digest, so the CPU image cannot be derived; "
                          "set pipeline.cpu_image (or --param cpu_image=...)")
    return f"{image}-cpu" if ":" in image.rsplit("/", 1)[-1] else f"{image}:latest-cpu"


def kfp_run_tags(run_id: str, run_name: str = "", pipeline_version: str = "") -> dict[str, str]:
    """The MLflow tags that link a training run to its KFP run (empty values left out)."""
    values = (run_id, run_name, pipeline_version)
    return {k: str(v) for k, v in zip(KFP_TAGS, values, strict=True) if v}


def train_args(data: str, split: str, out: str, quarantine: str | None, config: Sequence[str]) -> list[str]:
    """The ``egnet train`` arguments (after ``train``) of the train step."""
    q = ["--quarantine", quarantine] if quarantine else []
    return ["--data", data, "--split", split, "--out", out, *q, *config]


def training_job(kind: str, cluster: dict[str, Any], *, run_id: str, image: str, nodes: int,
                 gpus_per_node: int, args: list[str], mlflow_uri: str = "", tags: str = "",
                 owner: dict[str, Any] | None = None) -> dict[str, Any]:
    """The TrainJob / PyTorchJob (``kind``) the train step creates for ``nodes`` > 1, also what
    ``egnet pipeline render-job`` prints: named after the KFP run (``job_name(run_id)``), labelled
    with it, ``tags`` (JSON) as EGNET_RUN_TAGS in the pods. ``cluster``: :func:`trainjob.cluster_settings`."""
    from egnet.pipeline import trainjob
    from egnet.tracking.runs import RUN_TAGS_ENV

    spec = trainjob.JobSpec.from_cluster(cluster, name=trainjob.job_name(run_id), image=image, nodes=nodes,
                                         gpus_per_node=gpus_per_node, args=list(args), run_id=run_id,
                                         mlflow_uri=mlflow_uri, owner=owner,
                                         extra_env={RUN_TAGS_ENV: tags} if tags else {})
    return trainjob.build(kind, spec)


def run_training(*, data: str, split: str, quarantine: str | None, model_dir: str, nodes: int,
                 gpus_per_node: int, image: str, train_out: str, run_id: str, job_kind: str,
                 cluster: dict[str, Any], config: list[str], run: Runner, mlflow_uri: str = "",
                 run_name: str = "", pipeline_version: str = "",
                 jobs_factory: Callable[[str], Any] | None = None) -> dict[str, Any]:
    """Train in this process (one GPU or CPU), under ``torchrun`` in this pod (one node, N
    GPUs), or as a TrainJob/PyTorchJob of ``nodes`` pods; then put model.pt, mlflow_run_id and
    train_summary.json into ``model_dir``. Returns the train summary.

    The job name and the ``--out`` location derive from the KFP run id, so a retried step
    resumes from the run's checkpoints and re-attaches to its job instead of starting over
    (a job found Failed or Suspended is deleted and created again: egnet.pipeline.jobs). The
    MLflow run gets the KFP run id, run name and pipeline version as tags when it starts
    (``EGNET_RUN_TAGS``), so the exit handler finds it even when training fails. The job is
    owned by this pod (``EGNET_POD_NAME``/``EGNET_POD_UID``, from the downward API) when known.
    """
    from egnet.core.storage import Location
    from egnet.pipeline import trainjob
    from egnet.pipeline.jobs import TrainingJobs, run_job
    from egnet.tracking.runs import RUN_TAGS_ENV

    job = trainjob.job_name(run_id)
    out = train_location(train_out, job, model_dir)
    tags = json.dumps(kfp_run_tags(run_id, run_name, pipeline_version), sort_keys=True)
    os.environ[RUN_TAGS_ENV] = tags      # in-process and torchrun training read it here

    def argv(split_dir: str, q: str | None) -> list[str]:
        return ["train", *train_args(data, split_dir, out, q, config)]

    if nodes > 1:
        if not out.startswith("s3://"):
            raise ConfigError(f"nodes={nodes}: train_out must be s3://... (shared by the nodes), got {out!r}")
        split_pvc, q_pvc = _stage_on_pvc(split, quarantine, data, job, cluster["data_mount"])
        manifest = training_job(job_kind, cluster, run_id=run_id, image=image, nodes=nodes,
                                gpus_per_node=gpus_per_node, mlflow_uri=mlflow_uri, tags=tags,
                                args=train_args(data, split_pvc, out, q_pvc, config),
                                owner=trainjob.pod_owner())
        jobs = (jobs_factory or (lambda kind: TrainingJobs.in_cluster(kind)))(job_kind)
        run_job(jobs, manifest, timeout_s=float(cluster["wait_timeout_s"]),
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


# --------------------------------------------------------------------------- the exit handler


def finalize_run(state: str, run_id: str, run_name: str, *, nodes: int, job_kind: str,
                 cluster: dict[str, Any], params_file: str = "", profile: str = "",
                 overrides: Sequence[str] | None = (), experiment: str = "",
                 jobs_factory: Callable[[str], Any] | None = None,
                 log: Callable[[str], None] = print) -> dict[str, Any]:
    """The pipeline's exit handler (``dsl.ExitHandler``: it runs after the run succeeded, failed
    or was terminated). Stops the run's training job if it still runs (a cancelled run must
    not hold GPUs for up to ``active_deadline_s``) and deletes a finished one per
    ``pipeline.cleanup``; tags the run's MLflow training run ``kfp_final_state=<state>`` (and
    ends it as KILLED if it is still open); prints one status line. Never fails the run
    over an unreachable API: each problem is a line in the log."""
    from egnet.pipeline import trainjob

    ok = state in SUCCESS_STATES
    job, mlflow_run = "none", "none"
    if nodes > 1:
        job = _finalize_job(trainjob.job_name(run_id), job_kind, cluster, jobs_factory, log)
    try:
        mlflow_run = _finalize_mlflow(run_id, state, ok, params_file, profile, overrides, experiment)
    except Exception as exc:  # noqa: BLE001 - the run's outcome is decided; report, do not fail
        mlflow_run = f"not tagged ({str(exc).splitlines()[0][:200]})"
    line = f"run {run_name or '-'} ({run_id}): {state}; training job: {job}; MLflow run: {mlflow_run}"
    log(line)
    return {"state": state, "job": job, "mlflow_run": mlflow_run, "line": line}


def _finalize_job(name: str, job_kind: str, cluster: dict[str, Any],
                  jobs_factory: Callable[[str], Any] | None, log: Callable[[str], None]) -> str:
    from egnet.core.errors import EgnetError
    from egnet.pipeline.jobs import TrainingJobs, job_state

    try:
        jobs = (jobs_factory or (lambda kind: TrainingJobs.in_cluster(kind)))(job_kind)
        obj = jobs.get(name)
        if obj is None:
            return f"{name} not found (never created, or already deleted)"
        state = job_state(obj)
        if not state.done:
            jobs.delete(name)
            return f"{name} was {state.phase}: deleted (its pods stop now)"
        policy = cluster.get("cleanup", "never")
        if policy == "always" or (policy == "on_success" and state.phase == "succeeded"):
            jobs.delete(name)
            return f"{name} {state.phase}: deleted (cleanup {policy})"
        return f"{name} {state.phase}: kept (cleanup {policy})"
    except EgnetError as exc:
        log(f"training job {name}: {exc}")
        return f"{name}: unknown ({exc})"


def _finalize_mlflow(run_id: str, state: str, ok: bool, params_file: str, profile: str,
                     overrides: Sequence[str] | None, experiment: str) -> str:
    from egnet.core.config import load_config
    from egnet.tracking.client import client_for
    from egnet.tracking.runs import fast_http_env

    fast_http_env()     # an exit handler must not hang on MLflow's default minutes of retries
    cfg = load_config(params_file or None, profile or None,
                      [*(overrides or []), *([f"tracking.experiment={experiment}"] if experiment else [])])
    client = client_for(cfg)
    exp = client.get_experiment_by_name(cfg.tracking.experiment)
    runs = client.search_runs([exp.experiment_id], f"tags.{KFP_TAGS[0]} = '{run_id}'") if exp else []
    if not runs:
        return f"none tagged {KFP_TAGS[0]}={run_id} in experiment {cfg.tracking.experiment}"
    for r in runs:
        client.set_tag(r.info.run_id, FINAL_STATE_TAG, state)
        if r.info.status == "RUNNING" and not ok:
            client.set_terminated(r.info.run_id, "KILLED")
    return ", ".join(f"{r.info.run_id} tagged {FINAL_STATE_TAG}={state}" for r in runs)


# --------------------------------------------------------------------------- cross-links


def registration_links(reg: dict[str, Any], experiment_id: str = "", ui: str | None = None) -> str:
    """The register step's Markdown for the KFP UI: links to the MLflow run and model version.

    ``ui``: the MLflow UI's address as a browser reaches it (``MLFLOW_UI_URL``), else the
    tracking URI when it is http(s); links are left out when neither is known."""
    if ui is None:
        ui = os.environ.get("MLFLOW_UI_URL") or os.environ.get("MLFLOW_TRACKING_URI", "")
    base = ui.rstrip("/") if ui.startswith(("http://", "https://")) else ""
    name, version, run = reg["name"], reg["version"], reg["run_id"]
    run_ref = (f"[{run}]({base}/#/experiments/{experiment_id}/runs/{run})" if base and experiment_id
               else f"`{run}`")
    ver_ref = (f"[{name} v{version}]({base}/#/models/{name}/versions/{version})" if base
               else f"`{name} v{version}`")
    return "\n".join([
        f"# Registered {name} v{version}", "",
        f"- MLflow run: {run_ref}",
        f"- model version: {ver_ref} (aliases: {', '.join(reg.get('aliases') or []) or 'none'})",
        f"- model URI: `{reg.get('model_uri', f'models:/{name}/{version}')}`",
    ]) + "\n"


def experiment_of(run_id: str) -> str:
    """The MLflow experiment id of ``run_id`` ("" when the server does not answer)."""
    import mlflow

    try:
        return mlflow.MlflowClient().get_run(run_id).info.experiment_id
    except Exception:  # noqa: BLE001 - links are a convenience
        return ""


def confusion_matrix(evaluation_dir: str | Path) -> tuple[list[str], list[list[int]]]:
    """The evaluation's class confusion (rows: ground truth, columns: prediction; pixels of
    all exposure bins) as (class names, matrix) for a KFP ClassificationMetrics artifact.
    From ``confusion.npy`` ([bin, class, class + not-a-class]); the not-a-class column (an
    ignore-valued prediction) has no category of its own and is left out."""
    import numpy as np

    out = Path(evaluation_dir)
    names = list(json.loads((out / "metrics.json").read_text())["IoU"])
    counts = np.load(out / "confusion.npy")
    matrix = counts.sum(axis=0)[:, : len(names)]
    return names, [[int(v) for v in row] for row in matrix]


def record_evaluation(evaluation_dir: str | Path, metrics: Any, confusion: Any) -> dict[str, Any]:
    """The evaluate step's KFP artifacts: metrics.json's numbers into the Metrics artifact (the
    MLflow names), the class confusion into the ClassificationMetrics one. Returns metrics.json."""
    doc = json.loads((Path(evaluation_dir) / "metrics.json").read_text())
    log_metrics(metrics, evaluation_metrics(doc))
    names, matrix = confusion_matrix(evaluation_dir)
    confusion.log_confusion_matrix(names, matrix)
    return doc


# --------------------------------------------------------------------------- gate


def gate_decision(version: str, params_file: str = "", profile: str = "",
                  overrides: Sequence[str] | None = ()) -> str:
    """``egnet promote --version V --dry-run``: "promote" if the gate passes, "keep" if it refuses."""
    from egnet.core.config import load_config
    from egnet.registry.promotion import promote
    from egnet.tracking.client import client_for, mlflow_errors

    cfg = load_config(params_file or None, profile or None, list(overrides or []))
    try:
        with mlflow_errors(f"gate {cfg.register.model_name} v{version}"):  # e.g. a 403: one line
            promote(client_for(cfg), cfg.register.model_name, cfg, version, dry_run=True)
    except GateRefused as exc:
        print(f"gate: {exc}")
        return "keep"
    return "promote"


def champion_check(version: str, params_file: str = "", profile: str = "",
                   overrides: Sequence[str] | None = ()) -> str:
    """"reevaluate" when the champion has no per-image evidence on ``version``'s test images (its
    test data differ), else "ready" (the pipeline runs its evaluate-champion step only then)."""
    from egnet.core.config import load_config
    from egnet.registry.like_with_like import needs_reevaluation
    from egnet.tracking.client import client_for

    cfg = load_config(params_file or None, profile or None, list(overrides or []))
    needed, why = needs_reevaluation(client_for(cfg), cfg.register.model_name, version)
    print(f"like with like: {why}; {'re-evaluating the champion' if needed else 'nothing to re-evaluate'}")
    return "reevaluate" if needed else "ready"


def evaluate_champion(version: str, data: str, split: str, out: str, params_file: str = "", profile: str = "",
                      overrides: Sequence[str] | None = ()) -> str:
    """The champion evaluated on ``version``'s test data (DATA/SPLIT), logged as its own MLflow run and
    recorded on the champion version; the evaluation folder in ``out``. Returns the run id."""
    from egnet.core.config import load_config
    from egnet.registry.like_with_like import ensure_champion_evidence
    from egnet.tracking.client import client_for, mlflow_errors

    cfg = load_config(params_file or None, profile or None, list(overrides or []))
    with mlflow_errors("evaluate-champion"):
        return ensure_champion_evidence(client_for(cfg), cfg.register.model_name, version, cfg, data, split,
                                        out)


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
