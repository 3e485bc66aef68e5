"""The NightCity EGNet retraining pipeline (Kubeflow Pipelines v2).

    resolve-data -> materialise -> validate -> split -> stats -> drift -> train -> evaluate -> register
      -> gate -> promote (only if the gate says so)            ... and, however the run ends: finalize

:func:`build_pipeline` makes the pipeline function from a resolved config: the
``pipeline`` section of params.yaml gives the parameter defaults, the images and the
Kubernetes settings, all read at compile time. ``egnet pipeline compile`` writes
``pipelines/nightcity_training.yaml``; ``egnet pipeline run --local`` runs the same function
under ``kfp.local``; ``egnet pipeline submit`` / ``schedule`` upload it (docs/pipeline.md).
It needs a KFP backend **2.17.0** or newer (:data:`MIN_BACKEND`; ``submit`` checks).

What the backend does with it (kubeflow/pipelines 2.17.0, read from its source):

- **Exit handler**: every step runs inside ``dsl.ExitHandler(finalize)``; the Argo compiler
  makes ``finalize`` an exit lifecycle hook that runs after success, failure, "Terminate run"
  and the run deadline (``backend/src/v2/compiler/argocompiler/dag.go``). It stops a training
  job that still runs and records the final state. (A pipeline with an exit handler cannot
  return outputs: ``run --local`` reads them from the steps' folders.)
- **Resource placeholders** resolve only from STRING values (``backend/src/v2/driver/resolve.go``
  ``resolvePodSpecInputRuntimeParameter`` returns ``GetStringValue()``: an int GPU count gives
  no GPU limit at all, an int CPU/memory fails the task). Every value that reaches a resource
  field, the train task's image, node selector and tolerations comes from ``train-resources``
  as a string (or JSON), or is a compile-time constant.
- **Retries**: Argo counts ``backoff.maxDuration`` from the first attempt's start and kills a
  retry at that deadline (argo-workflows v4.0.5 ``workflow/controller/operator.go``
  ``processNodeRetries``); kfp's default is 3600 s. The train task's window is
  ``pipeline.train_retry_window_s`` (>= ``active_deadline_s``, checked in the config).
- **Caching** keys on input parameter values and input artifact ids, image and command
  (``backend/src/v2/cacheutils/cache.go``); ``cache_key`` is ignored by every release up to
  2.17.x. So ``resolve-data`` (uncached) turns the rev into a commit and a ``data_key``;
  ``materialise`` is cached on it and the data steps after it hit through its artifact.
- **PipelineConfig** (2.17.0): the run's deadline and how long its pods stay afterwards
  (``run_deadline_s``, ``run_ttl_s``).
- **Security**: every step runs as the image's non-root user (``set_security_context``, 2.16.0);
  the 2.17.0 compiler adds no-privilege-escalation, drop ALL and seccomp RuntimeDefault, so
  step pods pass Pod Security ``restricted`` (the overlays' namespace label). kfp-kubernetes
  has no read-only root filesystem setting; the training pods have one.

Kubernetes settings (kfp-kubernetes; kfp.local ignores them), per step only what it uses
(:func:`configure`): the CPU image (``cpu_image``) everywhere except train and evaluate (CUDA
``image``), pulled with ``pipeline.image_pull_secrets`` when set; CPU/memory requests and
limits on every step (three tiers from params.yaml); the dataset PVC for the data steps,
train and evaluate; the endpoints ConfigMap, the S3 Secret and the optional MLflow Secret as
environment variables, with the label ``egnet.io/pipeline-access: "true"`` the MLflow/MinIO
NetworkPolicies admit; the registry lock (``EGNET_REGISTRY_LOCK``, an s3:// lease) with the
pipeline's S3 key on register, gate and promote; GPU nodes for train (one node) and
evaluate.
"""

# no `from __future__ import annotations`: kfp reads the pipeline signature's real types
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kfp import dsl, kubernetes

import components
from egnet.core.config import Config
from egnet.pipeline.steps import cpu_image_of
from egnet.pipeline.trainjob import POD_NAME_ENV, POD_UID_ENV, UID, cluster_settings, toleration

COMPILED = Path(__file__).resolve().with_name("nightcity_training.yaml")
DESCRIPTION = ("NightCity night-time segmentation (EGNet): DVC data -> validate -> split -> "
               "exposure stats -> train (GPU, multi-node via Kubeflow Trainer) -> "
               "evaluate (mIoU, EF1, mEF1) -> MLflow register -> champion/challenger gate -> promote")
#: the oldest KFP backend this pipeline works on (docs/pipeline.md, "Backend version")
MIN_BACKEND = "2.17.0"
SHM_VOLUME = "dshm"
#: environment each step gets from the endpoints ConfigMap (docs/deploy.md), the S3 and MLflow Secrets
ENDPOINT_KEYS = ("MLFLOW_TRACKING_URI", "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION", "S3_BUCKET")
#: ConfigMap keys a deployment may leave out (mapped optional): the registry lock, the MLflow UI address
OPTIONAL_KEYS = ("EGNET_REGISTRY_LOCK", "MLFLOW_UI_URL")
S3_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
MLFLOW_KEYS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")

#: the CPU/memory fields of a step's resources (the tiers in params.yaml's ``pipeline`` section)
RESOURCES = ("cpu_request", "cpu_limit", "memory_request", "memory_limit")


def _cluster_settings(cfg: Config) -> dict[str, Any]:
    """The train step's TrainJob settings (a constant in the YAML: numbers arrive as floats);
    ``egnet pipeline render-job`` builds its manifest from the same dict."""
    return cluster_settings(cfg)


def resources(cfg: Config, tier: str) -> dict[str, str]:
    """CPU/memory requests and limits of a tier (``data_``, ``step_`` or ``""``: training/evaluate)."""
    return {k: getattr(cfg.pipeline, tier + k) for k in RESOURCES}


def _gpu_node(cfg: Config) -> tuple[dict[str, str], list[dict[str, str]]]:
    p = cfg.pipeline
    selector = {p.gpu_node_selector_key: p.gpu_node_selector_value} if p.gpu_node_selector_key else {}
    tolerations = ([toleration(p.gpu_toleration_key, p.gpu_toleration_value, p.gpu_toleration_effect)]
                   if p.gpu_toleration_key else [])
    return selector, tolerations


def configure(task: dsl.PipelineTask, cfg: Config, image: Any, *, res: dict[str, Any], pvc: bool = False,
              gpu_node: bool = False, s3: bool = False, mlflow: bool = False, lock: bool = False,
              cache: bool = True) -> dsl.PipelineTask:
    """Kubernetes settings of one step; each step gets only what it uses.

    ``res``: CPU/memory requests and limits (strings or STRING channels). ``pvc``: the dataset
    PVC at ``data_mount``. ``gpu_node``: GPU node selector, toleration and ``/dev/shm`` in
    memory (the GPU count is the caller's). ``s3`` / ``mlflow``: the endpoints ConfigMap as env,
    plus the S3 Secret / the optional MLflow Secret, and the label the MLflow/MinIO
    NetworkPolicies admit. ``lock``: the registry lock from the ConfigMap with S3 keys for its
    lease. ``cache=False``: outputs that depend on more than the inputs (the world moves).
    """
    p = cfg.pipeline
    task.set_container_image(image)
    kubernetes.set_security_context(task, run_as_user=UID, run_as_group=UID, run_as_non_root=True)
    kubernetes.add_pod_label(task, "app.kubernetes.io/part-of", "egnet")
    if p.image_pull_secrets:  # a private registry: every step pod pulls with them
        kubernetes.set_image_pull_secrets(task, list(p.image_pull_secrets))
    task.set_cpu_request(res["cpu_request"]).set_cpu_limit(res["cpu_limit"])
    task.set_memory_request(res["memory_request"]).set_memory_limit(res["memory_limit"])
    task.set_caching_options(cache)
    if pvc:
        kubernetes.mount_pvc(task, p.data_pvc, mount_path=p.data_mount)
    if s3 or mlflow or lock:
        kubernetes.add_pod_label(task, "egnet.io/pipeline-access", "true")
        kubernetes.use_config_map_as_env(task, p.endpoints_configmap, {k: k for k in ENDPOINT_KEYS})
        kubernetes.use_config_map_as_env(task, p.endpoints_configmap, {k: k for k in OPTIONAL_KEYS},
                                         optional=True)
    if s3 or lock:
        kubernetes.use_secret_as_env(task, p.s3_secret, {k: k for k in S3_KEYS})
    if mlflow and p.mlflow_secret:
        kubernetes.use_secret_as_env(task, p.mlflow_secret, {k: k for k in MLFLOW_KEYS}, optional=True)
    if gpu_node:
        selector, tolerations = _gpu_node(cfg)
        for key, value in selector.items():
            kubernetes.add_node_selector(task, key, value)
        for t in tolerations:
            kubernetes.add_toleration(task, key=t["key"], operator=t["operator"], value=t.get("value"),
                                      effect=t["effect"])
    return task


def _shm(task: dsl.PipelineTask, cfg: Config) -> None:
    # a memory emptyDir: charged to the pod's memory limit only as far as it is written
    kubernetes.empty_dir_mount(task, SHM_VOLUME, mount_path="/dev/shm", medium="Memory",
                               size_limit=cfg.pipeline.shm_size)


def build_pipeline(cfg: Config) -> Callable[..., Any]:
    """The pipeline function, with parameter defaults and task settings from ``cfg``."""
    p = cfg.pipeline
    c = components.build(p.image)
    cluster = _cluster_settings(cfg)
    selector, tolerations = _gpu_node(cfg)
    small, data_tier, gpu_tier = resources(cfg, "step_"), resources(cfg, "data_"), resources(cfg, "")
    config = dsl.PipelineConfig(ttl_seconds_after_finished=p.run_ttl_s or None,
                                active_deadline_seconds=p.run_deadline_s or None)

    @dsl.pipeline(name=p.name, description=DESCRIPTION, pipeline_config=config)
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
        cpu_image: str = cpu_image_of(p.image, p.cpu_image),
        train_out: str = p.train_out,
        job_kind: str = p.job_kind,
        pipeline_version: str = "",
    ):
        """Parameters: data (``data_repo`` + ``data_rev``, else ``data_path`` on the PVC), the
        config (``profile``, ``overrides`` as ``section.key=value`` strings, ``params_file``
        inside the image, empty: its params.yaml), MLflow (``experiment``, ``mlflow_uri``,
        empty: the ConfigMap's), training scale (``nodes``, ``gpus_per_node``, ``job_kind``),
        the images (``image``: CUDA, train and evaluate; ``cpu_image``: the other steps),
        ``train_out`` (s3://.../runs: checkpoints, resumable) and ``pipeline_version`` (an MLflow
        tag of the training run; ``submit``/``schedule`` set it to the uploaded version)."""
        conf = {"params_file": params_file, "profile": profile, "overrides": overrides}
        mlf = {**conf, "mlflow_uri": mlflow_uri}
        run_id, run_name = dsl.PIPELINE_JOB_ID_PLACEHOLDER, dsl.PIPELINE_JOB_NAME_PLACEHOLDER

        def cpu(task: dsl.PipelineTask, res: dict[str, Any], **kw: Any) -> dsl.PipelineTask:
            return configure(task, cfg, cpu_image, res=res, **kw)

        fin = cpu(c.finalize(run_id=run_id, run_name=run_name, nodes=nodes, job_kind=job_kind,
                             cluster=cluster, experiment=experiment, **mlf), small, mlflow=True, cache=False)
        with dsl.ExitHandler(fin, name="run"):
            rsv = cpu(c.resolve_data(data_repo=data_repo, data_rev=data_rev, data_repo_path=data_repo_path,
                                     data_path=data_path, data_cache=data_cache,
                                     max_age_days=p.data_cache_max_age_days), small, pvc=True, cache=False)
            # cached on the commit: the data steps below hit through its artifact
            mat = cpu(c.materialise(data_repo=data_repo, data_commit=rsv.outputs["commit"],
                                    data_repo_path=data_repo_path, data_path=data_path, data_cache=data_cache,
                                    data_key=rsv.outputs["data_key"]), data_tier, pvc=True, s3=True)
            val = cpu(c.validate(data=mat.outputs["data"], **conf), data_tier, pvc=True)
            data = val.outputs["validated"]
            spl = cpu(c.split(data=data, **conf), data_tier, pvc=True)
            split = spl.outputs["split"]
            sts = cpu(c.stats(data=data, split=split, **conf), data_tier, pvc=True)
            # new data against the champion's training data; drift.action: fail stops here
            dft = cpu(c.drift(data=data, **mlf), data_tier, pvc=True, mlflow=True, cache=False)

            res = cpu(c.train_resources(nodes=nodes, gpus_per_node=gpus_per_node, image=image,
                                        cpu_image=cpu_image, accelerator=p.accelerator,
                                        node_selector=selector, tolerations=tolerations, training=gpu_tier,
                                        launcher=small), small)
            out = res.outputs
            trn = configure(c.train(data=data, split=split, stats=sts.outputs["stats"], **mlf,
                                    experiment=experiment, nodes=nodes, gpus_per_node=gpus_per_node,
                                    image=image, train_out=train_out, job_kind=job_kind, run_id=run_id,
                                    run_name=run_name,
                                    pipeline_version=pipeline_version, cluster=cluster),
                            cfg, out["image"], res={k: out[k] for k in RESOURCES}, pvc=True, s3=True,
                            mlflow=True, cache=False)
            # one node: the training's GPUs and GPU nodes; nodes > 1: a launcher on any node
            trn.set_accelerator_type(out["accelerator"]).set_accelerator_limit(out["gpus"])
            kubernetes.add_node_selector_json(trn, out["node_selector"])
            kubernetes.add_toleration_json(trn, out["tolerations"])
            _shm(trn, cfg)
            # the launcher pod owns the TrainJob/PyTorchJob: Kubernetes' GC deletes the job with it
            kubernetes.use_field_path_as_env(trn, POD_NAME_ENV, "metadata.name")
            kubernetes.use_field_path_as_env(trn, POD_UID_ENV, "metadata.uid")
            # stats: the documented order (statistics are on record before training); res: kfp adds no
            # dependency for values used only in resource placeholders
            trn.after(sts, dft, res)
            if p.train_retries:  # a retry resumes from the run's checkpoints (train_out/<job>)
                trn.set_retry(num_retries=p.train_retries, backoff_duration="60s", backoff_factor=2,
                              backoff_max_duration=f"{p.train_retry_window_s}s")

            evl = configure(c.evaluate(data=data, split=split, model=trn.outputs["model"], **mlf),
                            cfg, image, res=gpu_tier, pvc=True, gpu_node=True, mlflow=True)
            evl.set_accelerator_type(p.accelerator).set_accelerator_limit(1)
            _shm(evl, cfg)
            reg = cpu(c.register(model=trn.outputs["model"], evaluation=evl.outputs["evaluation"], **mlf),
                      data_tier, mlflow=True, lock=True, cache=False)
            version = reg.outputs["Output"]
            # like with like: the champion on this run's test data, only when its own test data differ
            chk = cpu(c.champion_check(version=version, **mlf), small, mlflow=True, cache=False)
            with dsl.If(chk.output == "reevaluate", name="champion-on-other-test-data"):
                evc = configure(c.evaluate_champion(data=data, split=split, version=version, **mlf),
                                cfg, image, res=gpu_tier, pvc=True, gpu_node=True, mlflow=True, cache=False)
                evc.set_accelerator_type(p.accelerator).set_accelerator_limit(1)
                _shm(evc, cfg)
            with dsl.Else(name="champion-test-data-matches"):
                same = cpu(c.champion_ready(reason=chk.output), small, cache=False)
            champion_evaluation = dsl.OneOf(evc.outputs["Output"], same.output)
            gate = cpu(c.gate(version=version, champion_evaluation=champion_evaluation, **mlf), small,
                       mlflow=True, lock=True, cache=False)
            with dsl.If(gate.output == "promote", name="gate-passed"):
                cpu(c.promote(version=version, **mlf), small, mlflow=True, lock=True, cache=False)

    return nightcity_training


def compile_pipeline(cfg: Config, package_path: str | Path = COMPILED) -> Path:
    """Compile the pipeline for ``cfg`` to ``package_path`` (YAML)."""
    from kfp import compiler

    compiler.Compiler().compile(build_pipeline(cfg), str(package_path))
    return Path(package_path)
