"""Multi-node training runs on Kubernetes: TrainJob / PyTorchJob manifests and a small client.

Two custom resources run the same ``torchrun -m egnet.cli train`` on ``nodes`` GPU pods:

- ``TrainJob`` (``trainer.kubeflow.org/v1alpha1``, Kubeflow Trainer **v2.3.0**) on the
  ``torch-distributed`` ClusterTrainingRuntime. Field names are v2.3's: pod-level overrides
  are ``spec.runtimePatches`` (v2.1 called them ``podTemplateOverrides``, v2.0
  ``podSpecOverrides``; the API server rejects those on v2.3).
- ``PyTorchJob`` (``kubeflow.org/v1``, Training Operator **v1.9.4**), for clusters on v1.

The builders are pure functions returning dicts shaped exactly like the templates in
``k8s/training/`` (tests/test_trainjob.py builds the templates' example run and compares);
``TrainingJobs`` creates, re-attaches (HTTP 409: the object exists, e.g. a retried pipeline
step), polls, and deletes them through the ``kubernetes`` package's CustomObjectsApi.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from egnet.errors import ConfigError, DataError

TRAINJOB = {"group": "trainer.kubeflow.org", "version": "v1alpha1", "plural": "trainjobs", "kind": "TrainJob"}
PYTORCHJOB = {"group": "kubeflow.org", "version": "v1", "plural": "pytorchjobs", "kind": "PyTorchJob"}
KINDS = {"trainjob": TRAINJOB, "pytorchjob": PYTORCHJOB}
NAME_PREFIX = "egnet-train-"
RUN_LABEL = "egnet.io/kfp-run"
PATCH_MANAGER = "egnet.io/pipeline"
UID = 10001                      # the image's user (docker/Dockerfile)
HOME = "/home/egnet"
TRAIN_MODULE = ["-m", "egnet.cli", "train"]
SA_NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


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
    """One multi-node run. Quantities are Kubernetes strings ("8", "48Gi")."""

    name: str
    image: str
    nodes: int
    gpus_per_node: int
    args: list[str]                       # `egnet train` arguments (--data, --split, --out, --set ...)
    env: list[dict[str, Any]]             # container env (see pod_env)
    accelerator: str = "nvidia.com/gpu"
    node_selector: dict[str, str] = field(default_factory=lambda: {"nvidia.com/gpu.present": "true"})
    tolerations: list[dict[str, str]] = field(
        default_factory=lambda: [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}])
    cpu_request: str = "8"
    cpu_limit: str = "16"
    memory_request: str = "48Gi"
    memory_limit: str = "64Gi"
    shm_size: str = "16Gi"
    data_pvc: str = "egnet-data"
    data_mount: str = "/data"
    service_account: str = "egnet-train"
    runtime: str = "torch-distributed"
    active_deadline_s: int = 86400
    labels: dict[str, str] = field(default_factory=dict)   # extra object labels (e.g. the KFP run)


def toleration(key: str, value: str, effect: str) -> dict[str, str]:
    """A toleration for taint ``key[=value]:effect``; an empty value tolerates any (Exists)."""
    if value:
        return {"key": key, "operator": "Equal", "value": value, "effect": effect}
    return {"key": key, "operator": "Exists", "effect": effect}


def pod_env(endpoints_configmap: str = "egnet-endpoints", s3_secret: str = "egnet-s3",
            mlflow_secret: str = "", mlflow_uri: str = "") -> list[dict[str, Any]]:
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
    # torch hub caches the ImageNet backbone weights here (a writable emptyDir)
    return env + [{"name": "TORCH_HOME", "value": f"{HOME}/.cache/torch"}]


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


def _check(spec: JobSpec) -> None:
    if spec.nodes < 1 or spec.gpus_per_node < 1:
        raise ConfigError(f"training job {spec.name}: nodes ({spec.nodes}) and gpus_per_node "
                          f"({spec.gpus_per_node}) must be at least 1")
    if len(spec.name) > 63 or not spec.name[:1].isalpha():
        raise ConfigError(f"training job name {spec.name!r}: a DNS label of <= 63 characters starting with a letter")


def build_trainjob(spec: JobSpec) -> dict[str, Any]:
    """The TrainJob (Trainer v2.3.0) for ``spec``; pod settings go through ``runtimePatches``."""
    _check(spec)
    pod_spec = {
        "serviceAccountName": spec.service_account,
        "securityContext": _pod_security(),
        "nodeSelector": dict(spec.node_selector),
        "tolerations": [dict(t) for t in spec.tolerations],
        "volumes": _volumes(spec),
        # the runtime's trainer container; image/command/args/env/resources come from spec.trainer
        "containers": [{"name": "node", "securityContext": _container_security(), "volumeMounts": _mounts(spec)}],
    }
    return {
        "apiVersion": f"{TRAINJOB['group']}/{TRAINJOB['version']}",
        "kind": TRAINJOB["kind"],
        "metadata": {"name": spec.name, "labels": _labels(spec)},
        "spec": {
            "runtimeRef": {"name": spec.runtime},
            "activeDeadlineSeconds": spec.active_deadline_s,
            "trainer": {
                "image": spec.image,
                "numNodes": spec.nodes,
                "numProcPerNode": spec.gpus_per_node,
                # the runtime's torch plugin sets PET_NNODES, PET_NPROC_PER_NODE, PET_NODE_RANK,
                # PET_MASTER_ADDR, PET_MASTER_PORT: torchrun's defaults
                "command": ["torchrun", *TRAIN_MODULE],
                "args": list(spec.args),
                "resourcesPerNode": _resources(spec),
                "env": [dict(e) for e in spec.env],
            },
            "runtimePatches": [{
                "manager": PATCH_MANAGER,
                "trainingRuntimeSpec": {"template": {"spec": {"replicatedJobs": [{
                    "name": "node",   # the runtime's trainer job
                    "template": {"spec": {"template": {"metadata": {"labels": _pod_labels()}, "spec": pod_spec}}},
                }]}}},
            }],
        },
    }


def build_pytorchjob(spec: JobSpec) -> dict[str, Any]:
    """The PyTorchJob (Training Operator v1.9.4) for ``spec``: Master + (nodes - 1) Workers, one pod each."""
    _check(spec)
    g = spec.gpus_per_node
    # the operator sets MASTER_ADDR, MASTER_PORT, WORLD_SIZE (= pods) and RANK (= pod index);
    # the kubelet expands $(VAR) in the command
    command = ["torchrun", "--nnodes=$(WORLD_SIZE)", "--node-rank=$(RANK)", f"--nproc-per-node={g}",
               "--master-addr=$(MASTER_ADDR)", "--master-port=$(MASTER_PORT)", *TRAIN_MODULE]

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
                "containers": [{
                    "name": "pytorch",   # the operator looks for this name
                    "image": spec.image,
                    "command": command,
                    "args": list(spec.args),
                    "ports": [{"name": "pytorchjob-port", "containerPort": 23456}],
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
        "metadata": {"name": spec.name, "labels": _labels(spec)},
        "spec": {
            "nprocPerNode": str(g),
            "runPolicy": {"backoffLimit": 3, "activeDeadlineSeconds": spec.active_deadline_s,
                          "cleanPodPolicy": "None", "ttlSecondsAfterFinished": 604800},
            "pytorchReplicaSpecs": replicas,
        },
    }


def build(kind: str, spec: JobSpec) -> dict[str, Any]:
    """``kind``: ``trainjob`` or ``pytorchjob`` (params.yaml ``pipeline.job_kind``)."""
    if kind == "trainjob":
        return build_trainjob(spec)
    if kind == "pytorchjob":
        return build_pytorchjob(spec)
    raise ConfigError(f"pipeline.job_kind = {kind!r}: expected trainjob or pytorchjob")


# --------------------------------------------------------------------------- status


@dataclass(frozen=True)
class JobState:
    phase: str        # pending | running | succeeded | failed | suspended
    detail: str       # the deciding condition's reason/message, or the pods' counts

    @property
    def done(self) -> bool:
        return self.phase in ("succeeded", "failed")


def _true_conditions(obj: dict[str, Any]) -> list[dict[str, Any]]:
    return [c for c in (obj.get("status") or {}).get("conditions") or [] if str(c.get("status")) == "True"]


def _describe(c: dict[str, Any]) -> str:
    return ": ".join(x for x in (c.get("reason"), c.get("message")) if x) or c.get("type", "")


def job_state(obj: dict[str, Any]) -> JobState:
    """Where a TrainJob (conditions Complete / Failed / Suspended) or PyTorchJob (Created /
    Running / Restarting / Succeeded / Failed / Suspended) stands."""
    conds = {c.get("type"): c for c in _true_conditions(obj)}
    for kind, phase in (("Failed", "failed"), ("Complete", "succeeded"), ("Succeeded", "succeeded"),
                        ("Suspended", "suspended"), ("Restarting", "running"), ("Running", "running")):
        if kind in conds:
            return JobState(phase, _describe(conds[kind]))
    jobs = (obj.get("status") or {}).get("jobsStatus") or []   # TrainJob: one entry per replicated job
    if jobs:
        counts = ", ".join(f"{j.get('name')}: " + " ".join(f"{k} {j[k]}" for k in
                           ("active", "ready", "succeeded", "failed") if j.get(k)) for j in jobs)
        running = any(j.get("active") or j.get("ready") for j in jobs)
        return JobState("running" if running else "pending", counts)
    return JobState("pending", _describe(conds["Created"]) if "Created" in conds else "waiting for the controller")


# --------------------------------------------------------------------------- client


def _api_error(what: str, exc: Exception) -> DataError:
    status = getattr(exc, "status", None)
    reason = getattr(exc, "reason", None) or str(exc).splitlines()[0]
    return DataError(f"{what}: HTTP {status} {reason}" if status else f"{what}: {reason}")


class TrainingJobs:
    """Create / get / wait for / delete TrainJobs or PyTorchJobs in one namespace."""

    def __init__(self, api: Any, namespace: str, kind: str = "trainjob"):
        if kind not in KINDS:
            raise ConfigError(f"pipeline.job_kind = {kind!r}: expected trainjob or pytorchjob")
        self.api, self.namespace, self.kind, self.res = api, namespace, kind, KINDS[kind]

    @classmethod
    def in_cluster(cls, kind: str = "trainjob", namespace: str | None = None) -> TrainingJobs:
        """From the pod's service account (inside a pipeline step), else the local kubeconfig."""
        from kubernetes import client, config

        try:
            config.load_incluster_config()
        except config.ConfigException:
            try:
                config.load_kube_config()
            except Exception as exc:  # noqa: BLE001 - no cluster credentials at all: one line
                raise ConfigError(f"no Kubernetes credentials (in-cluster or kubeconfig): {exc}") from None
        if namespace is None:
            namespace = SA_NAMESPACE_FILE.read_text().strip() if SA_NAMESPACE_FILE.exists() else "default"
        return cls(client.CustomObjectsApi(), namespace, kind)

    def _where(self, name: str) -> str:
        return f"{self.res['kind']} {self.namespace}/{name}"

    def get(self, name: str) -> dict[str, Any] | None:
        """The object, or None if it does not exist."""
        from kubernetes.client.exceptions import ApiException

        try:
            return self.api.get_namespaced_custom_object(
                self.res["group"], self.res["version"], self.namespace, self.res["plural"], name)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise _api_error(f"get {self._where(name)}", exc) from None

    def create_or_attach(self, manifest: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """Create ``manifest``; if it exists (409), return the existing object instead.

        Returns (object, created). An existing object whose RUN_LABEL differs from the
        manifest's belongs to another run: that is an error, not a re-attach.
        """
        from kubernetes.client.exceptions import ApiException

        name = manifest["metadata"]["name"]
        try:
            obj = self.api.create_namespaced_custom_object(
                self.res["group"], self.res["version"], self.namespace, self.res["plural"], manifest)
            return obj, True
        except ApiException as exc:
            if exc.status != 409:
                raise _api_error(f"create {self._where(name)}", exc) from None
        existing = self.get(name)
        if existing is None:  # deleted between the 409 and the get: try once more
            return self.create_or_attach(manifest)
        want = manifest["metadata"].get("labels", {}).get(RUN_LABEL)
        have = (existing.get("metadata") or {}).get("labels", {}).get(RUN_LABEL)
        if want != have:
            raise ConfigError(f"{self._where(name)} exists and belongs to run {have!r}, not {want!r}")
        return existing, False

    def wait(self, name: str, timeout_s: float, poll_s: float = 30.0,
             log: Callable[[str], None] = print, clock: Callable[[], float] = time.monotonic,
             sleep: Callable[[float], None] = time.sleep) -> JobState:
        """Poll until the job succeeds (returns its state) or fails / vanishes / times out (raises).

        Each change of state is logged as one line; transient API errors are logged and retried.
        """
        deadline = clock() + timeout_s
        last: JobState | None = None
        while True:
            try:
                obj = self.get(name)
            except DataError as exc:
                log(f"{self._where(name)}: {exc} (retrying)")
                obj = {}
            if obj is None:
                raise DataError(f"{self._where(name)} disappeared while waiting for it")
            if obj:
                state = job_state(obj)
                if state != last:
                    log(f"{self._where(name)}: {state.phase}" + (f" ({state.detail})" if state.detail else ""))
                    last = state
                if state.phase == "succeeded":
                    return state
                if state.phase == "failed":
                    raise DataError(f"{self._where(name)} failed: {state.detail or 'no reason given'} "
                                    f"(kubectl -n {self.namespace} describe {self.res['plural']} {name})")
            if clock() >= deadline:
                raise DataError(f"{self._where(name)} not finished after {timeout_s:.0f} s "
                                f"(last state: {last.phase if last else 'unknown'}); it is left running")
            sleep(poll_s)

    def delete(self, name: str) -> bool:
        """Delete the job and its pods (foreground). False if it was already gone."""
        from kubernetes.client import V1DeleteOptions
        from kubernetes.client.exceptions import ApiException

        try:
            self.api.delete_namespaced_custom_object(
                self.res["group"], self.res["version"], self.namespace, self.res["plural"], name,
                body=V1DeleteOptions(propagation_policy="Foreground"))
            return True
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise _api_error(f"delete {self._where(name)}", exc) from None


def run_job(jobs: TrainingJobs, manifest: dict[str, Any], *, timeout_s: float, poll_s: float,
            cleanup: str = "never", log: Callable[[str], None] = print, **wait_kw: Any) -> JobState:
    """Create (or re-attach to) ``manifest``, wait for it, then clean up per ``cleanup``.

    ``cleanup``: never | on_success | always. A failed delete (e.g. no RBAC ``delete``) is
    logged, never raised: the run's result does not depend on it.
    """
    name = manifest["metadata"]["name"]
    _, created = jobs.create_or_attach(manifest)
    log(f"{'created' if created else 're-attached to existing'} {jobs._where(name)}")
    ok = False
    try:
        state = jobs.wait(name, timeout_s, poll_s, log=log, **wait_kw)
        ok = True
        return state
    finally:
        if cleanup == "always" or (cleanup == "on_success" and ok):
            try:
                log(f"deleted {jobs._where(name)}" if jobs.delete(name) else f"{jobs._where(name)} already gone")
            except DataError as exc:
                log(f"cleanup: {exc}; delete it by hand")
