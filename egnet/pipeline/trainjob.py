"""Multi-node training runs on Kubernetes: TrainJob / PyTorchJob manifests and a small client.

Two custom resources run the same ``torchrun -m egnet.cli train`` on ``nodes`` GPU pods:

- ``TrainJob`` (``trainer.kubeflow.org/v1alpha1``, Kubeflow Trainer **v2.3.0**) on the
  ``torch-distributed`` ClusterTrainingRuntime. Field names are v2.3's: pod-level overrides
  are ``spec.runtimePatches`` (v2.1 called them ``podTemplateOverrides``, v2.0
  ``podSpecOverrides``; the API server rejects those on v2.3).
- ``PyTorchJob`` (``kubeflow.org/v1``, Training Operator **v1.9.4**), for clusters on v1.

The builders are pure functions returning dicts shaped exactly like the templates in
``k8s/training/`` (tests/pipeline/test_trainjob.py builds the templates' example run and compares);
:mod:`egnet.pipeline.jobs` creates, re-attaches to (or re-creates), polls and deletes them.
A command that renders a manifest (``render-job``) needs only :class:`JobSpec` and
:func:`build`: no cluster, no KFP.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from typing import Any

from egnet.core.errors import ConfigError

TRAINJOB = {"group": "trainer.kubeflow.org", "version": "v1alpha1", "plural": "trainjobs", "kind": "TrainJob"}
PYTORCHJOB = {"group": "kubeflow.org", "version": "v1", "plural": "pytorchjobs", "kind": "PyTorchJob"}
KINDS = {"trainjob": TRAINJOB, "pytorchjob": PYTORCHJOB}
NAME_PREFIX = "egnet-train-"
RUN_LABEL = "egnet.io/kfp-run"
#: the launcher pod's name and uid (the train step gets them from the downward API): the job's owner
POD_NAME_ENV, POD_UID_ENV = "EGNET_POD_NAME", "EGNET_POD_UID"
PATCH_MANAGER = "egnet.io/pipeline"
UID = 10001                      # the image's user (docker/Dockerfile)
HOME = "/home/egnet"
TRAIN_MODULE = ["-m", "egnet.cli", "train"]
#: the keys of params.yaml's ``pipeline`` section a training job is built from (:func:`cluster_settings`)
CLUSTER_KEYS = (
    "accelerator", "gpu_node_selector_key", "gpu_node_selector_value", "gpu_toleration_key",
    "gpu_toleration_value", "gpu_toleration_effect", "shm_size", "cpu_request", "cpu_limit", "memory_request",
    "memory_limit", "data_pvc", "data_mount", "s3_secret", "mlflow_secret", "endpoints_configmap",
    "image_pull_secrets", "service_account", "trainjob_runtime", "cleanup", "wait_timeout_s", "poll_s",
    "active_deadline_s",
)
#: the port the Training Operator v1.9 defaults ``pytorchjob-port`` to (kubeflow/training-operator
#: ``pkg/apis/kubeflow.org/v1/pytorch_types.go`` PyTorchJobDefaultPort); also the c10d rendezvous port
PYTORCHJOB_PORT = 23456
#: torchrun (>= 2.4) shares its c10d rendezvous TCPStore with the workers and keeps it across restarts,
#: so a restarted group reads the dead group's keys and hangs in init_process_group (torch 2.14,
#: tests/training/test_multinode.py); opting out gives each round a fresh store on a new port
ELASTIC_ENV = [{"name": "TORCH_DISABLE_SHARE_RDZV_TCP_STORE", "value": "1"}]


def cluster_settings(cfg: Any) -> dict[str, Any]:
    """What a training job is built from: the ``pipeline`` keys in :data:`CLUSTER_KEYS` plus
    ``max_restarts`` (``train.max_restarts``). The pipeline passes this dict to the train step
    as a constant (pipelines/nightcity_training.py); ``egnet pipeline render-job`` uses it too."""
    def plain(v: Any) -> Any:  # tuples (a frozen Config's lists) as lists: YAML and JSON
        return list(v) if isinstance(v, tuple) else v

    settings = {k: plain(getattr(cfg.pipeline, k)) for k in CLUSTER_KEYS}
    return {**settings, "max_restarts": cfg.train.max_restarts}


def job_name(run_id: str) -> str:
    """``egnet-train-<10 hex>`` from a KFP run id: the same run (a retried step) -> the same name.

    A short hash, not the id itself: run ids are 36-character UUIDs and the name must be a
    DNS-1035 label of at most 63 characters starting with a letter.
    """
    if not run_id:
        raise ConfigError("job name: empty KFP run id")
    return NAME_PREFIX + hashlib.sha256(run_id.encode()).hexdigest()[:10]


@dataclass(frozen=True)
class JobSpec:
    """One multi-node run. Quantities are Kubernetes strings ("8", "48Gi"). Every pod setting
    comes from the ``pipeline`` section of params.yaml (:meth:`from_cluster`), never a default here."""

    name: str
    image: str
    nodes: int
    gpus_per_node: int
    args: list[str]                       # `egnet train` arguments (--data, --split, --out, --set ...)
    env: list[dict[str, Any]]             # container env (see pod_env)
    accelerator: str
    node_selector: dict[str, str]
    tolerations: list[dict[str, str]]
    cpu_request: str
    cpu_limit: str
    memory_request: str
    memory_limit: str
    shm_size: str
    data_pvc: str
    data_mount: str
    service_account: str
    runtime: str
    active_deadline_s: int
    max_restarts: int = 0                 # torchrun --max-restarts (train.max_restarts): elastic restarts
    labels: dict[str, str] = field(default_factory=dict)   # extra object labels (e.g. the KFP run)
    owner: dict[str, Any] | None = None   # an ownerReference (the launcher pod): GC deletes the job with it
    image_pull_secrets: tuple[str, ...] = ()               # private registry logins (Secret names)

    @classmethod
    def from_cluster(cls, cluster: dict[str, Any], *, name: str, image: str, nodes: int, gpus_per_node: int,
                     args: list[str], run_id: str | None = None, mlflow_uri: str = "",
                     extra_env: dict[str, str] | None = None, owner: dict[str, Any] | None = None) -> JobSpec:
        """The spec from the compile-time ``pipeline`` params (``cluster``: the keys the pipeline
        passes the train step); ``run_id`` labels the job with the KFP run; ``extra_env``: more
        plain variables for the training containers; ``owner``: see :func:`pod_owner`."""
        c = cluster
        selector = ({c["gpu_node_selector_key"]: c["gpu_node_selector_value"]}
                    if c["gpu_node_selector_key"] else {})
        tolerations = [toleration(c["gpu_toleration_key"], c["gpu_toleration_value"],
                                  c["gpu_toleration_effect"])] if c["gpu_toleration_key"] else []
        return cls(
            name=name, image=image, nodes=nodes, gpus_per_node=gpus_per_node, args=args,
            env=pod_env(c["endpoints_configmap"], c["s3_secret"], c["mlflow_secret"], mlflow_uri)
            + [dict(e) for e in ELASTIC_ENV]
            + [{"name": k, "value": v} for k, v in sorted((extra_env or {}).items())],
            accelerator=c["accelerator"], node_selector=selector, tolerations=tolerations,
            cpu_request=c["cpu_request"], cpu_limit=c["cpu_limit"], memory_request=c["memory_request"],
            memory_limit=c["memory_limit"], shm_size=c["shm_size"], data_pvc=c["data_pvc"],
            data_mount=c["data_mount"], service_account=c["service_account"], runtime=c["trainjob_runtime"],
            active_deadline_s=int(c["active_deadline_s"]), max_restarts=int(c.get("max_restarts", 0)),
            labels={RUN_LABEL: run_id[:63]} if run_id else {},
            owner=owner,
            image_pull_secrets=tuple(c.get("image_pull_secrets") or ()),
        )


def pod_owner(env: dict[str, str] | None = None) -> dict[str, Any] | None:
    """An ownerReference to the pod this runs in (``EGNET_POD_NAME`` / ``EGNET_POD_UID``), or None.

    Kubernetes' garbage collector deletes a TrainJob / PyTorchJob owned by the launcher pod when
    that pod is deleted (KFP deletes a run's pods with its workflow, ``pipeline.run_ttl_s``), so a
    job can never outlive its run by long. Neither Trainer v2.3's webhook nor its CRD rules
    look at ownerReferences (kubeflow/trainer ``pkg/webhooks/trainjob_webhook.go``,
    ``trainjob_types.go``); ``blockOwnerDeletion`` is left false, which needs no permission
    on the pod's finalizers. Not a controller reference: the Trainer / operator is the controller.
    """
    env = os.environ if env is None else env
    name, uid = env.get(POD_NAME_ENV, ""), env.get(POD_UID_ENV, "")
    if not (name and uid):
        return None
    return {"apiVersion": "v1", "kind": "Pod", "name": name, "uid": uid, "controller": False,
            "blockOwnerDeletion": False}


def toleration(key: str, value: str, effect: str) -> dict[str, str]:
    """A toleration for taint ``key[=value]:effect``; an empty value tolerates any (Exists)."""
    if value:
        return {"key": key, "operator": "Equal", "value": value, "effect": effect}
    return {"key": key, "operator": "Exists", "effect": effect}


def pod_env(endpoints_configmap: str, s3_secret: str, mlflow_secret: str = "",
            mlflow_uri: str = "") -> list[dict[str, Any]]:
    """Training pods' environment: endpoints from the ConfigMap, S3 keys from the Secret.

    ``mlflow_uri`` (non-empty) replaces the ConfigMap's MLFLOW_TRACKING_URI;
    ``mlflow_secret`` (non-empty) adds MLFLOW_TRACKING_USERNAME / _PASSWORD / _TOKEN from an
    optional Secret (an MLflow server behind basic auth or a token).
    """
    def cm(key: str) -> dict[str, Any]:
        return {"name": key, "valueFrom": {"configMapKeyRef": {"name": endpoints_configmap, "key": key}}}

    def secret(name: str, key: str, optional: bool = False) -> dict[str, Any]:
        ref: dict[str, Any] = {"name": name, "key": key}
        if optional:
            ref["optional"] = True
        return {"name": key, "valueFrom": {"secretKeyRef": ref}}

    env = [{"name": "MLFLOW_TRACKING_URI", "value": mlflow_uri} if mlflow_uri else cm("MLFLOW_TRACKING_URI"),
           cm("S3_BUCKET"), cm("AWS_ENDPOINT_URL"), cm("AWS_DEFAULT_REGION"),
           secret(s3_secret, "AWS_ACCESS_KEY_ID"), secret(s3_secret, "AWS_SECRET_ACCESS_KEY")]
    if mlflow_secret:
        env += [secret(mlflow_secret, k, optional=True)
                for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")]
    # no TORCH_HOME: the image's (the ImageNet weights baked in at build, nothing downloaded here)
    return env


def _metadata(spec: JobSpec) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": spec.name, "labels": _labels(spec)}
    if spec.owner:
        meta["ownerReferences"] = [dict(spec.owner)]
    return meta


def _labels(spec: JobSpec) -> dict[str, str]:
    return {"app.kubernetes.io/name": "egnet-train", "app.kubernetes.io/part-of": "egnet", **spec.labels}


def _pod_labels() -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "egnet-train",
        "egnet.io/pipeline-access": "true",      # admitted by the MLflow / MinIO NetworkPolicies
        "sidecar.istio.io/inject": "false",      # NCCL/gloo between nodes must not go through sidecars
    }


def _resources(spec: JobSpec) -> dict[str, Any]:
    gpus = str(spec.gpus_per_node)
    return {"requests": {"cpu": spec.cpu_request, "memory": spec.memory_request, spec.accelerator: gpus},
            "limits": {"cpu": spec.cpu_limit, "memory": spec.memory_limit, spec.accelerator: gpus}}


def _pod_security() -> dict[str, Any]:
    return {"runAsNonRoot": True, "runAsUser": UID, "runAsGroup": UID, "fsGroup": UID,
            "seccompProfile": {"type": "RuntimeDefault"}}


def _container_security() -> dict[str, Any]:
    return {"runAsNonRoot": True, "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]}}


def _volumes(spec: JobSpec) -> list[dict[str, Any]]:
    return [
        {"name": "data", "persistentVolumeClaim": {"claimName": spec.data_pvc, "readOnly": True}},
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": spec.shm_size}},
        {"name": "tmp", "emptyDir": {"sizeLimit": "20Gi"}},
        {"name": "home", "emptyDir": {"sizeLimit": "2Gi"}},
    ]


def _mounts(spec: JobSpec) -> list[dict[str, Any]]:
    return [{"name": "data", "mountPath": spec.data_mount, "readOnly": True},
            {"name": "dshm", "mountPath": "/dev/shm"},
            {"name": "tmp", "mountPath": "/tmp"},
            {"name": "home", "mountPath": HOME}]


def _pull_secrets(spec: JobSpec) -> dict[str, Any]:
    """``imagePullSecrets`` of the pod spec (none when the image needs no registry login)."""
    if not spec.image_pull_secrets:
        return {}
    return {"imagePullSecrets": [{"name": n} for n in spec.image_pull_secrets]}


def _check(spec: JobSpec) -> None:
    if spec.max_restarts < 0:
        raise ConfigError(f"training job {spec.name}: train.max_restarts = {spec.max_restarts}: must be >= 0")
    if spec.nodes < 1 or spec.gpus_per_node < 1:
        raise ConfigError(f"training job {spec.name}: nodes ({spec.nodes}) and gpus_per_node "
                          f"({spec.gpus_per_node}) must be at least 1")
    if len(spec.name) > 63 or not spec.name[:1].isalpha():
        raise ConfigError(f"training job name {spec.name!r}: "
                          "a DNS label of <= 63 characters starting with a letter")


def build_trainjob(spec: JobSpec) -> dict[str, Any]:
    """The TrainJob (Trainer v2.3.0) for ``spec``; pod settings go through ``runtimePatches``."""
    _check(spec)
    pod_spec = {
        "serviceAccountName": spec.service_account,
        "securityContext": _pod_security(),
        "nodeSelector": dict(spec.node_selector),
        "tolerations": [dict(t) for t in spec.tolerations],
        **_pull_secrets(spec),
        "volumes": _volumes(spec),
        # the runtime's trainer container; image/command/args/env/resources come from spec.trainer
        "containers": [{"name": "node", "securityContext": _container_security(),
                        "volumeMounts": _mounts(spec)}],
    }
    return {
        "apiVersion": f"{TRAINJOB['group']}/{TRAINJOB['version']}",
        "kind": TRAINJOB["kind"],
        "metadata": _metadata(spec),
        "spec": {
            "runtimeRef": {"name": spec.runtime},
            "activeDeadlineSeconds": spec.active_deadline_s,
            "trainer": {
                "image": spec.image,
                "numNodes": spec.nodes,
                "numProcPerNode": spec.gpus_per_node,
                "command": trainjob_command(spec.max_restarts),
                "args": list(spec.args),
                "resourcesPerNode": _resources(spec),
                "env": [dict(e) for e in spec.env],
            },
            "runtimePatches": [{
                "manager": PATCH_MANAGER,
                "trainingRuntimeSpec": {"template": {"spec": {"replicatedJobs": [{
                    "name": "node",   # the runtime's trainer job
                    "template": {"spec": {"template": {"metadata": {"labels": _pod_labels()},
                                                       "spec": pod_spec}}},
                }]}}},
            }],
        },
    }


def build_pytorchjob(spec: JobSpec) -> dict[str, Any]:
    """The PyTorchJob (Training Operator v1.9.4) for ``spec``: Master + (nodes - 1) Workers, one pod each."""
    _check(spec)
    g = spec.gpus_per_node
    # every torchrun setting comes from the operator's PET_* variables (see elastic_policy)
    command = ["torchrun", *TRAIN_MODULE]

    def pod() -> dict[str, Any]:
        return {
            "metadata": {"labels": _pod_labels()},
            "spec": {
                "serviceAccountName": spec.service_account,
                "automountServiceAccountToken": False,
                "enableServiceLinks": False,
                "securityContext": _pod_security(),
                "nodeSelector": dict(spec.node_selector),
                "tolerations": [dict(t) for t in spec.tolerations],
                **_pull_secrets(spec),
                "containers": [{
                    "name": "pytorch",   # the operator looks for this name
                    "image": spec.image,
                    "command": command,
                    "args": list(spec.args),
                    "ports": [{"name": "pytorchjob-port", "containerPort": PYTORCHJOB_PORT}],
                    "env": [dict(e) for e in spec.env],
                    "resources": _resources(spec),
                    "securityContext": _container_security(),
                    "volumeMounts": _mounts(spec),
                }],
                "volumes": _volumes(spec),
            },
        }

    replicas = {"Master": {"replicas": 1, "restartPolicy": "OnFailure", "template": pod()}}
    if spec.nodes > 1:
        replicas["Worker"] = {"replicas": spec.nodes - 1, "restartPolicy": "OnFailure", "template": pod()}
    return {
        "apiVersion": f"{PYTORCHJOB['group']}/{PYTORCHJOB['version']}",
        "kind": PYTORCHJOB["kind"],
        "metadata": _metadata(spec),
        "spec": {
            "nprocPerNode": str(g),
            # one node has no Worker, which the operator requires with an elasticPolicy
            **({"elasticPolicy": elastic_policy(spec)} if spec.nodes > 1 else {}),
            "runPolicy": {"backoffLimit": 3, "activeDeadlineSeconds": spec.active_deadline_s,
                          "cleanPodPolicy": "None", "ttlSecondsAfterFinished": 604800},
            "pytorchReplicaSpecs": replicas,
        },
    }


def trainjob_command(max_restarts: int) -> list[str]:
    """The TrainJob's container command.

    Trainer v2.3.0's torch plugin injects only PET_NNODES, PET_NPROC_PER_NODE, PET_NODE_RANK,
    PET_MASTER_ADDR (``<job>-node-0-0.<job>``) and PET_MASTER_PORT (29500), which torchrun reads as
    its defaults, and has no elastic policy (kubeflow/trainer v2.3.0
    ``pkg/runtime/framework/plugins/torch/torch.go`` EnforceMLPolicy). The c10d rendezvous on
    node 0's address (``$(VAR)``: the kubelet expands the injected variables) and
    ``--max-restarts`` make a worker that dies restart the whole group, which resumes from the
    last checkpoint, instead of failing the pod; c10d is the rendezvous torch documents for fault
    tolerance and membership changes (a re-created pod rejoins), not torchrun's default ``static``.
    """
    return ["torchrun", "--rdzv-backend=c10d", "--rdzv-endpoint=$(PET_MASTER_ADDR):$(PET_MASTER_PORT)",
            f"--max-restarts={max_restarts}", *TRAIN_MODULE]


def elastic_policy(spec: JobSpec) -> dict[str, Any]:
    """The PyTorchJob's ``elasticPolicy`` (Training Operator v1.9, ``pkg/controller.v1/pytorch/elastic.go``).

    The operator turns it into PET_RDZV_BACKEND=c10d, PET_RDZV_ENDPOINT=<job>-master-0:23456,
    PET_NNODES=N:N and PET_MAX_RESTARTS, which torchrun reads. Min = max = all pods (left unset,
    the operator would count the Workers only, without the Master); the rendezvous runs on the
    Master's Service (the default host is ``<job>-worker-0``, the second node).
    """
    return {"rdzvBackend": "c10d", "rdzvHost": f"{spec.name}-master-0", "rdzvPort": PYTORCHJOB_PORT,
            "minReplicas": spec.nodes, "maxReplicas": spec.nodes, "maxRestarts": spec.max_restarts}


def build(kind: str, spec: JobSpec) -> dict[str, Any]:
    """``kind``: ``trainjob`` or ``pytorchjob`` (params.yaml ``pipeline.job_kind``)."""
    if kind == "trainjob":
        return build_trainjob(spec)
    if kind == "pytorchjob":
        return build_pytorchjob(spec)
    raise ConfigError(f"pipeline.job_kind = {kind!r}: expected trainjob or pytorchjob")
