"""The NightCity EGNet retraining pipeline (Kubeflow Pipelines v2).

    materialise -> validate -> split -> stats -> train -> evaluate -> register -> gate
                                                                   -> promote (only if the gate says so)

:func:`build_pipeline` makes the pipeline function from a resolved config: the
``pipeline`` section of params.yaml gives the parameter defaults, the image and the
Kubernetes settings, all read at compile time. ``egnet pipeline compile`` writes
``pipelines/nightcity_training.yaml``; ``egnet pipeline run --local`` runs the same function
under ``kfp.local``; ``egnet pipeline submit`` / ``schedule`` upload it (docs/pipeline.md).

Kubernetes settings (kfp-kubernetes; kfp.local ignores them), per step only what it uses
(:func:`configure`): the project image everywhere; the dataset PVC for the data, train and
evaluate steps; the endpoints ConfigMap, the S3 Secret (materialise, train) and the
optional MLflow Secret (train onwards) as environment variables, with the label
``egnet.io/pipeline-access: "true"`` the MLflow/MinIO NetworkPolicies admit; GPU nodes for
train and evaluate (accelerator, node selector, toleration, ``/dev/shm`` in memory,
CPU/memory requests). The train step's pod is sized by ``train_resources``: the training's
GPUs and CPU/memory for one node, a launcher's (no GPU) when ``nodes > 1`` and a TrainJob
does the work. Values taken from parameters or task outputs compile to the ``resource*``
placeholder fields only, which KFP backends resolve from 2.4 on (kubeflow/pipelines#11501);
older backends ignore them.
"""

# no `from __future__ import annotations`: kfp reads the pipeline signature's real types
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from kfp import dsl, kubernetes
from kfp.dsl import Artifact

import components
from egnet.core.config import Config

COMPILED = Path(__file__).resolve().with_name("nightcity_training.yaml")
DESCRIPTION = ("NightCity night-time segmentation (EGNet): DVC data -> validate -> split -> "
               "exposure stats -> train (GPU, multi-node via Kubeflow Trainer) -> "
               "evaluate (mIoU, EF1, mEF1) -> MLflow register -> champion/challenger gate -> promote")
SHM_VOLUME = "dshm"
#: environment each step gets from the endpoints ConfigMap (docs/deploy.md), the S3 and MLflow Secrets
ENDPOINT_KEYS = ("MLFLOW_TRACKING_URI", "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION", "S3_BUCKET")
S3_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
MLFLOW_KEYS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")


class Outputs(NamedTuple):
    decision: str           # "promote" or "keep": what the gate decided
    registration: Artifact  # registration.json: name, version, run_id, aliases, model_uri
    evaluation: Artifact    # the evaluate step's folder: metrics.json, charts


#: the ``pipeline`` params the train step needs to build a TrainJob / PyTorchJob
CLUSTER_KEYS = (
    "accelerator", "gpu_node_selector_key", "gpu_node_selector_value", "gpu_toleration_key",
    "gpu_toleration_value", "gpu_toleration_effect", "shm_size", "cpu_request", "cpu_limit", "memory_request",
    "memory_limit", "data_pvc", "data_mount", "s3_secret", "mlflow_secret", "endpoints_configmap",
    "service_account", "trainjob_runtime", "cleanup", "wait_timeout_s", "poll_s", "active_deadline_s",
)


def _cluster_settings(cfg: Config) -> dict[str, Any]:
    """The train step's TrainJob settings (a constant in the YAML: numbers arrive as floats)."""
    return {k: getattr(cfg.pipeline, k) for k in CLUSTER_KEYS}


def configure(task: dsl.PipelineTask, cfg: Config, image: Any, *, pvc: bool = False, gpus: Any = None,
              s3: bool = False, mlflow: bool = False, cache: bool = True) -> dsl.PipelineTask:
    """Kubernetes settings of one step; each step gets only what it uses.

    ``pvc``: the dataset PVC at ``data_mount``. ``gpus``: a GPU node (accelerator count,
    node selector, toleration, ``/dev/shm`` in memory). ``s3`` / ``mlflow``: the endpoints
    ConfigMap as env, plus the S3 Secret / the optional MLflow Secret, and the label the
    MLflow/MinIO NetworkPolicies admit. ``cache=False``: outputs that depend on more than
    the inputs (a moving rev, training, the registry).
    """
    p = cfg.pipeline
    task.set_container_image(image)
    kubernetes.add_pod_label(task, "app.kubernetes.io/part-of", "egnet")
    if not cache:
        task.set_caching_options(False)
    if pvc:
        kubernetes.mount_pvc(task, p.data_pvc, mount_path=p.data_mount)
    if s3 or mlflow:
        kubernetes.add_pod_label(task, "egnet.io/pipeline-access", "true")
        kubernetes.use_config_map_as_env(task, p.endpoints_configmap, {k: k for k in ENDPOINT_KEYS})
    if s3:
        kubernetes.use_secret_as_env(task, p.s3_secret, {k: k for k in S3_KEYS})
    if mlflow and p.mlflow_secret:
        kubernetes.use_secret_as_env(task, p.mlflow_secret, {k: k for k in MLFLOW_KEYS}, optional=True)
    if gpus is not None:
        task.set_accelerator_type(p.accelerator).set_accelerator_limit(gpus)
        if p.gpu_node_selector_key:
            kubernetes.add_node_selector(task, p.gpu_node_selector_key, p.gpu_node_selector_value)
        if p.gpu_toleration_key:
            kubernetes.add_toleration(task, key=p.gpu_toleration_key,
                                      operator="Equal" if p.gpu_toleration_value else "Exists",
                                      value=p.gpu_toleration_value or None, effect=p.gpu_toleration_effect)
        kubernetes.empty_dir_mount(task, SHM_VOLUME, mount_path="/dev/shm", medium="Memory",
                                   size_limit=p.shm_size)
    return task


def build_pipeline(cfg: Config) -> Callable[..., Any]:
    """The pipeline function, with parameter defaults and task settings from ``cfg``."""
    p = cfg.pipeline
    c = components.build(p.image)
    cluster = _cluster_settings(cfg)

    @dsl.pipeline(name=p.name, description=DESCRIPTION)
    def nightcity_training(
        data_repo: str = p.data_repo,
        data_rev: str = p.data_rev,
        data_repo_path: str = p.data_repo_path,
        data_path: str = p.data_path,
        data_cache: str = p.data_cache,
        profile: str = cfg.profile,
        overrides: list = [],  # noqa: B006 - a KFP parameter default, never mutated
        params_file: str = "",
        experiment: str = cfg.tracking.experiment,
        mlflow_uri: str = "",
        nodes: int = p.nodes,
        gpus_per_node: int = p.gpus_per_node,
        image: str = p.image,
        train_out: str = p.train_out,
        job_kind: str = p.job_kind,
    ) -> Outputs:
        """Parameters: data (``data_repo`` + ``data_rev``, else ``data_path`` on the PVC), the
        config (``profile``, ``overrides`` as ``section.key=value`` strings, ``params_file``
        inside the image, empty: its params.yaml), MLflow (``experiment``, ``mlflow_uri``,
        empty: the ConfigMap's), training scale (``nodes``, ``gpus_per_node``, ``job_kind``),
        ``image`` and ``train_out`` (s3://.../runs: checkpoints, resumable)."""
        conf = {"params_file": params_file, "profile": profile, "overrides": overrides}
        mlf = {**conf, "mlflow_uri": mlflow_uri}

        mat = configure(c.materialise(data_repo=data_repo, data_rev=data_rev, data_repo_path=data_repo_path,
                                      data_path=data_path, data_cache=data_cache),
                        cfg, image, pvc=True, s3=True, cache=False)
        val = configure(c.validate(data=mat.outputs["data"], **conf), cfg, image, pvc=True)
        data = val.outputs["validated"]
        spl = configure(c.split(data=data, **conf), cfg, image, pvc=True)
        split = spl.outputs["split"]
        sts = configure(c.stats(data=data, split=split, **conf), cfg, image, pvc=True)
        # new data against the champion's training data; drift.action: fail stops here
        dft = configure(c.drift(data=data, **mlf), cfg, image, pvc=True, mlflow=True, cache=False)

        res = configure(c.train_resources(nodes=nodes, gpus_per_node=gpus_per_node, cpu_request=p.cpu_request,
                                          cpu_limit=p.cpu_limit, memory_request=p.memory_request,
                                          memory_limit=p.memory_limit), cfg, image)
        trn = configure(c.train(data=data, split=split, stats=sts.outputs["stats"], **mlf,
                                experiment=experiment, nodes=nodes, gpus_per_node=gpus_per_node, image=image,
                                train_out=train_out, job_kind=job_kind,
                                run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER, cluster=cluster),
                        cfg, image, pvc=True, gpus=res.outputs["gpus"], s3=True, mlflow=True, cache=False)
        trn.set_cpu_request(res.outputs["cpu_request"]).set_cpu_limit(res.outputs["cpu_limit"])
        trn.set_memory_request(res.outputs["memory_request"]).set_memory_limit(res.outputs["memory_limit"])
        # stats: the documented order (statistics are on record before training); res: kfp adds no
        # dependency for values used only in resource placeholders
        trn.after(sts, dft, res)
        if p.train_retries:  # a retry resumes from the run's checkpoints (train_out/<job>)
            trn.set_retry(num_retries=p.train_retries, backoff_duration="60s")

        evl = configure(c.evaluate(data=data, split=split, model=trn.outputs["model"], **mlf),
                        cfg, image, pvc=True, gpus=1, mlflow=True)
        evl.set_cpu_request(p.cpu_request).set_memory_request(p.memory_request)
        reg = configure(c.register(model=trn.outputs["model"], evaluation=evl.outputs["evaluation"], **mlf),
                        cfg, image, mlflow=True, cache=False)
        version = reg.outputs["Output"]
        gate = configure(c.gate(version=version, **mlf), cfg, image, mlflow=True, cache=False)
        with dsl.If(gate.output == "promote", name="gate-passed"):
            configure(c.promote(version=version, **mlf), cfg, image, mlflow=True, cache=False)
        return Outputs(decision=gate.output, registration=reg.outputs["registration"],
                       evaluation=evl.outputs["evaluation"])

    return nightcity_training


def compile_pipeline(cfg: Config, package_path: str | Path = COMPILED) -> Path:
    """Compile the pipeline for ``cfg`` to ``package_path`` (YAML)."""
    from kfp import compiler

    compiler.Compiler().compile(build_pipeline(cfg), str(package_path))
    return Path(package_path)
