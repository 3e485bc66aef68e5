"""TrainJobs / PyTorchJobs in a cluster: create or re-attach, wait, clean up (the train step's launcher).

``TrainingJobs`` creates, re-attaches (HTTP 409: the object exists, e.g. a retried pipeline
step), polls, and deletes the manifests :mod:`egnet.pipeline.trainjob` builds, through the
``kubernetes`` package's CustomObjectsApi; :func:`run_job` is the launcher's whole life.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from egnet.core.errors import ConfigError, DataError
from egnet.pipeline.trainjob import KINDS, RUN_LABEL

SA_NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


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
                    log(f"{self._where(name)}: {state.phase}"
                        + (f" ({state.detail})" if state.detail else ""))
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
                log(f"deleted {jobs._where(name)}" if jobs.delete(name)
                    else f"{jobs._where(name)} already gone")
            except DataError as exc:
                log(f"cleanup: {exc}; delete it by hand")
