"""The train step: its pod's resources, and training in this process, under ``torchrun`` in the
pod, or as a TrainJob/PyTorchJob of several nodes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from egnet.core.errors import ConfigError, StepFailed
from egnet.pipeline.steps.common import KFP_TAGS, MODEL_FILES, QUARANTINE, RESOURCE_KEYS, Runner


def train_metrics(summary: dict[str, Any]) -> dict[str, Any]:
    """train_summary.json -> last logged losses, last validation and throughput."""
    out = {k: v for k, v in (summary.get("final") or {}).items() if k != "iteration"}
    out.update({k: v for k, v in ((summary.get("val") or [{}])[-1] or {}).items() if k != "iteration"})
    out.update({"iterations": summary.get("iteration"), "wall_s": summary.get("wall_s"),
                "world_size": summary.get("world_size")})
    return out


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
