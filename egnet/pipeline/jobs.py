"""TrainJobs / PyTorchJobs in a cluster: create or re-attach, wait, clean up (the train step's launcher).

``TrainingJobs`` creates, re-attaches (HTTP 409: the object exists, e.g. a retried pipeline
step), polls, and deletes the manifests :mod:`egnet.pipeline.trainjob` builds, through the
``kubernetes`` package's CustomObjectsApi, and reads the job's pods and rank 0's log through
CoreV1Api; :func:`run_job` is the launcher's whole life:

- **re-attach**: a job of this run that is running is waited for; one that *Failed* or is
  *Suspended* is deleted and created again (it resumes from the run's S3 checkpoints). A
  failed TrainJob cannot be restarted in place: its JobSet stays Failed and ``spec.trainer``
  is immutable (kubeflow/trainer v2.3.0 ``pkg/controller/trainjob_controller.go``,
  ``pkg/runtime/framework/plugins/jobset/jobset.go`` ``Build``: an existing, unsuspended
  JobSet is never re-applied). The JobSet reuses the TrainJob's name, so the old object must
  be gone (foreground deletion) before the new one is created.
- **SIGTERM** (KFP "Terminate run", a PipelineConfig deadline, a drained node: Argo sends it
  to the step's process group and SIGKILLs 30 s later): the job is deleted (its pods stop and
  checkpoint) and the step exits 143, which Argo may retry (a retry re-creates the job).
- **logs**: rank 0's log lines are relayed into the step's log (``[rank0] ...``) and every pod
  problem (a container that exited non-zero, OOMKilled, CrashLoopBackOff, an image pull
  error, an unschedulable pod, an eviction) is one line, with the tail of the failed
  container's log; the last one is named when the job fails, so the KFP UI tells why
  (:mod:`egnet.pipeline.pods`).
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from egnet.core.errors import ConfigError, DataError
from egnet.pipeline.pods import PodWatch, completion_index
from egnet.pipeline.trainjob import KINDS, RUN_LABEL

SA_NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
#: label selectors of a job's pods and of its rank-0 pod. TrainJob: JobSet labels (kubernetes-sigs/
#: jobset v0.12.0 ``labelAndAnnotateObject``) of the runtime's ``node`` job, index 0, completion
#: index 0; PyTorchJob: Training Operator v1.9 labels (``pkg/util/labels``) of Master-0.
POD_SELECTORS = {
    "trainjob": ("jobset.sigs.k8s.io/jobset-name={name}",
                 "jobset.sigs.k8s.io/jobset-name={name},jobset.sigs.k8s.io/replicatedjob-name=node,"
                 "jobset.sigs.k8s.io/job-index=0"),
    "pytorchjob": ("training.kubeflow.org/job-name={name}",
                   "training.kubeflow.org/job-name={name},training.kubeflow.org/replica-type=master,"
                   "training.kubeflow.org/replica-index=0"),
}
CONTAINER = {"trainjob": "node", "pytorchjob": "pytorch"}
EXIT_SIGTERM = 143
HOW = {"created": "created", "attached": "re-attached to existing", "recreated": "re-created"}


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
    return JobState("pending",
                    _describe(conds["Created"]) if "Created" in conds else "waiting for the controller")


# --------------------------------------------------------------------------- client


def _api_error(what: str, exc: Exception) -> DataError:
    status = getattr(exc, "status", None)
    reason = getattr(exc, "reason", None) or str(exc).splitlines()[0]
    return DataError(f"{what}: HTTP {status} {reason}" if status else f"{what}: {reason}")


class TrainingJobs:
    """Create / get / wait for / delete TrainJobs or PyTorchJobs in one namespace; read their
    pods and logs (``core``: a CoreV1Api; None: no pod information)."""

    def __init__(self, api: Any, namespace: str, kind: str = "trainjob", core: Any = None):
        if kind not in KINDS:
            raise ConfigError(f"pipeline.job_kind = {kind!r}: expected trainjob or pytorchjob")
        self.api, self.namespace, self.kind, self.res = api, namespace, kind, KINDS[kind]
        self.core = core

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
        return cls(client.CustomObjectsApi(), namespace, kind, client.CoreV1Api())

    def where(self, name: str) -> str:
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
            raise _api_error(f"get {self.where(name)}", exc) from None

    def create(self, manifest: dict[str, Any]) -> dict[str, Any] | None:
        """Create ``manifest``; None if an object of that name exists (HTTP 409)."""
        from kubernetes.client.exceptions import ApiException

        name = manifest["metadata"]["name"]
        try:
            return self.api.create_namespaced_custom_object(
                self.res["group"], self.res["version"], self.namespace, self.res["plural"], manifest)
        except ApiException as exc:
            if exc.status != 409:
                raise _api_error(f"create {self.where(name)}", exc) from None
        return None

    def create_or_attach(self, manifest: dict[str, Any], gone_timeout_s: float = 600.0, poll_s: float = 2.0,
                         log: Callable[[str], None] = print, clock: Callable[[], float] = time.monotonic,
                         sleep: Callable[[float], None] = time.sleep) -> tuple[dict[str, Any], str]:
        """Create ``manifest``, or re-attach to the job of that name (a retried step).

        Returns (object, how): ``created``; ``attached`` (it runs, or has succeeded);
        ``recreated`` (it had failed or was suspended: deleted, then created again). An existing
        object whose RUN_LABEL differs from the manifest's belongs to another run: an error.
        """
        name = manifest["metadata"]["name"]
        for _ in range(3):   # a job deleted between the 409 and the get: create again
            obj = self.create(manifest)
            if obj is not None:
                return obj, "created"
            existing = self.get(name)
            if existing is None:
                continue
            want = manifest["metadata"].get("labels", {}).get(RUN_LABEL)
            have = (existing.get("metadata") or {}).get("labels", {}).get(RUN_LABEL)
            if want != have:
                raise ConfigError(f"{self.where(name)} exists and belongs to run {have!r}, not {want!r}")
            state = job_state(existing)
            if state.phase not in ("failed", "suspended"):
                return existing, "attached"
            log(f"{self.where(name)} is {state.phase}"
                + (f" ({state.detail})" if state.detail else "")
                + ": deleting it to create it again (training resumes from its checkpoints)")
            self.delete(name)
            self.wait_gone(name, gone_timeout_s, poll_s, clock=clock, sleep=sleep)
            obj = self.create(manifest)
            if obj is not None:
                return obj, "recreated"
        raise DataError(f"{self.where(name)}: could not be created (it keeps reappearing)")

    def wait_gone(self, name: str, timeout_s: float, poll_s: float = 2.0,
                  clock: Callable[[], float] = time.monotonic,
                  sleep: Callable[[float], None] = time.sleep) -> None:
        """Poll until the object is gone (foreground deletion removes the pods first)."""
        deadline = clock() + timeout_s
        while self.get(name) is not None:
            if clock() >= deadline:
                raise DataError(f"{self.where(name)} still exists {timeout_s:.0f} s after its deletion")
            sleep(poll_s)

    # ----------------------------------------------------------------------- pods and logs

    def pods(self, name: str, rank0: bool = False) -> list[dict[str, Any]]:
        """The job's pods (or its rank-0 pod's incarnations), oldest first, as plain dicts."""
        if self.core is None:
            return []
        from kubernetes.client.exceptions import ApiException

        selector = POD_SELECTORS[self.kind][1 if rank0 else 0].format(name=name)
        try:
            resp = self.core.list_namespaced_pod(self.namespace, label_selector=selector)
        except ApiException as exc:
            raise _api_error(f"list pods of {self.where(name)}", exc) from None
        pods = [self.core.api_client.sanitize_for_serialization(p) for p in resp.items]
        if rank0 and self.kind == "trainjob":
            pods = [p for p in pods if completion_index(p) in (None, "0")]
        return sorted(pods, key=lambda p: (p.get("metadata") or {}).get("creationTimestamp") or "")

    def log_text(self, pod: str, since_time: str | None = None, tail_lines: int | None = None,
                 previous: bool = False) -> str:
        """The pod's training container log with timestamps (``sinceTime`` is an API parameter the
        generated client omits, so the call is made directly)."""
        from kubernetes.client.exceptions import ApiException

        query = [("container", CONTAINER[self.kind]), ("timestamps", "true")]
        if since_time:
            query.append(("sinceTime", since_time))
        if tail_lines:
            query.append(("tailLines", str(tail_lines)))
        if previous:
            query.append(("previous", "true"))
        try:
            resp = self.core.api_client.call_api(
                "/api/v1/namespaces/{namespace}/pods/{name}/log", "GET",
                {"namespace": self.namespace, "name": pod}, query, {"Accept": "text/plain"},
                auth_settings=["BearerToken"], _return_http_data_only=True, _preload_content=False)
        except ApiException as exc:
            raise _api_error(f"log of pod {self.namespace}/{pod}", exc) from None
        return resp.data.decode("utf-8", "replace")

    def wait(self, name: str, timeout_s: float, poll_s: float = 30.0,
             log: Callable[[str], None] = print, clock: Callable[[], float] = time.monotonic,
             sleep: Callable[[float], None] = time.sleep) -> JobState:
        """Poll until the job succeeds (returns its state) or fails / vanishes / times out (raises).

        Each change of state is logged as one line, and so are rank 0's new log lines and new
        pod problems (:class:`PodWatch`); transient API errors are logged and retried.
        """
        deadline = clock() + timeout_s
        last: JobState | None = None
        watch = PodWatch(self, name, log)
        while True:
            try:
                obj = self.get(name)
            except DataError as exc:
                log(f"{self.where(name)}: {exc} (retrying)")
                obj = {}
            if obj is None:
                raise DataError(f"{self.where(name)} disappeared while waiting for it")
            watch.poll()
            if obj:
                state = job_state(obj)
                if state != last:
                    log(f"{self.where(name)}: {state.phase}"
                        + (f" ({state.detail})" if state.detail else ""))
                    last = state
                if state.phase == "succeeded":
                    return state
                if state.phase == "failed":
                    why = f"; {watch.last_problem}" if watch.last_problem else ""
                    raise DataError(f"{self.where(name)} failed: {state.detail or 'no reason given'}{why} "
                                    f"(kubectl -n {self.namespace} describe {self.res['plural']} {name})")
            if clock() >= deadline:
                raise DataError(f"{self.where(name)} not finished after {timeout_s:.0f} s "
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
            raise _api_error(f"delete {self.where(name)}", exc) from None


# --------------------------------------------------------------------------- the launcher


class Terminated(BaseException):
    """SIGTERM arrived (BaseException: no ``except Exception`` on the way swallows it)."""


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """Turn SIGTERM into :class:`Terminated` for the block (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_job(jobs: TrainingJobs, manifest: dict[str, Any], *, timeout_s: float, poll_s: float,
            cleanup: str = "never", log: Callable[[str], None] = print, **wait_kw: Any) -> JobState:
    """Create (or re-attach to / re-create) ``manifest``, wait for it, then clean up per ``cleanup``.

    ``cleanup``: never | on_success | always. A failed delete (e.g. no RBAC ``delete``) is
    logged, never raised: the run's result does not depend on it. SIGTERM deletes the job
    and exits 143 (``SystemExit``).
    """
    name = manifest["metadata"]["name"]
    ok = False
    with sigterm_raises():
        try:
            _, how = jobs.create_or_attach(manifest, log=log, **wait_kw)
            log(f"{HOW[how]} {jobs.where(name)}")
            state = jobs.wait(name, timeout_s, poll_s, log=log, **wait_kw)
            ok = True
            return state
        except Terminated:
            log(f"SIGTERM: deleting {jobs.where(name)} so its GPUs are released")
            try:
                jobs.delete(name)
            except DataError as exc:
                log(f"{exc}; delete it by hand")
            raise SystemExit(EXIT_SIGTERM) from None
        finally:
            if cleanup == "always" or (cleanup == "on_success" and ok):
                try:
                    log(f"deleted {jobs.where(name)}" if jobs.delete(name)
                        else f"{jobs.where(name)} already gone")
                except DataError as exc:
                    log(f"cleanup: {exc}; delete it by hand")
