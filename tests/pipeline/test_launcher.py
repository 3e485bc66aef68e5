"""The train step's launcher against a loopback stub of the Kubernetes API: what a cluster run needs
beyond create-and-wait (egnet/pipeline/jobs.py, egnet/pipeline/steps/finalize.py finalize_run).

- SIGTERM (KFP "Terminate run", a run deadline, a drained node) deletes the job and the step
  exits 143: a real subprocess gets a real signal.
- A Failed or Suspended job found on re-attach (a retried step) is deleted and created again.
- Rank 0's log lines reach the step's log once each; a failing pod's reason and log tail are
  logged and named in the error.
- The run's exit handler stops a job that still runs, keeps a finished one per the cleanup
  policy, and tags the MLflow training run with the final state.
- The job is owned by the launcher pod when the downward API names it.

The stub serves the custom-object paths (tests/pipeline/test_trainjob.py's FakeK8s), pods by label
selector and pod logs (text, with the kubelet's RFC 3339 timestamps).
"""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from egnet.core.errors import DataError
from egnet.pipeline import jobs as jobs_mod
from egnet.pipeline import steps as kfp_steps
from egnet.pipeline import trainjob as tj
from tests.pipeline.test_trainjob import FakeClock, FakeK8s, cond, manifest
from tests.support import PARAMS, REPO
from tests.support.http_stub import Request
from tests.support.k8s import TRAINJOB_SCHEMA, crd_errors

JOB = "egnet-train-0123456789"
TJ_PATH = "/apis/trainer.kubeflow.org/v1alpha1/namespaces/egnet/trainjobs"


class FakeCluster(FakeK8s):
    """FakeK8s plus pods (listed by label selector) and their logs; a deleted job lingers for
    ``linger`` GETs (foreground deletion: the pods go first)."""

    def __init__(self) -> None:
        super().__init__()
        self.pods: list[dict] = []
        self.logs: dict[tuple[str, bool], list[str]] = {}   # (pod, previous) -> "ts line" lines
        self.linger = 0
        self.deny_pods = False
        self._deleted: dict[str, int] = {}

    def handle(self, req: Request):
        parts = req.path.strip("/").split("/")
        if parts[:2] == ["api", "v1"]:
            return self._core(req, parts)
        name = parts[-1]
        if req.method == "GET" and name in self._deleted:
            self._deleted[name] -= 1
            if self._deleted[name] < 0:
                del self._deleted[name]
                return self._status(404, "NotFound")
            return 200, {**self._gone_obj[name], "metadata": {**self._gone_obj[name]["metadata"],
                                                              "deletionTimestamp": "2026-01-01T00:00:00Z"}}
        if req.method == "POST" and req.json["metadata"]["name"] in self._deleted:
            return self._status(409, "AlreadyExists")   # still being deleted
        if req.method == "DELETE" and name in self.objects and not self.deny_delete and self.linger:
            self._gone_obj = {**getattr(self, "_gone_obj", {}), name: self.objects[name]}
            self._deleted[name] = self.linger
        return super().handle(req)

    def _core(self, req: Request, parts: list[str]):
        if self.deny_pods:
            return self._status(403, "Forbidden")
        if parts[-1] == "pods":
            want = dict(kv.split("=", 1) for kv in req.query["labelSelector"][0].split(","))
            items = [p for p in self.pods
                     if all(p["metadata"].get("labels", {}).get(k) == v for k, v in want.items())]
            return 200, {"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": items}
        if parts[-1] == "log":
            pod, previous = parts[-2], req.query.get("previous") == ["true"]
            lines = self.logs.get((pod, previous), [])
            since = req.query.get("sinceTime", [None])[0]
            if since:   # the kubelet's rule: lines at or after that second
                lines = [ln for ln in lines if ln.split(" ")[0][:19] >= since[:19]]
            if "tailLines" in req.query:
                lines = lines[-int(req.query["tailLines"][0]):]
            return 200, "".join(ln + "\n" for ln in lines).encode()
        return self._status(404, "NotFound")


@pytest.fixture(autouse=True)
def no_tracking_env(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)


@pytest.fixture
def cluster(json_stub):
    fake = FakeCluster()
    stub = json_stub(fake.handle)
    fake.url, fake.calls = stub.url, stub.requests
    return fake


def jobs_for(fake: FakeK8s, kind: str = "trainjob") -> jobs_mod.TrainingJobs:
    from kubernetes import client

    conf = client.Configuration()
    conf.host = fake.url
    api = client.ApiClient(conf)
    return jobs_mod.TrainingJobs(client.CustomObjectsApi(api), "egnet", kind, client.CoreV1Api(api))


def rank0_pod(name: str = f"{JOB}-node-0-0-abcde", job: str = JOB, *, state: dict | None = None,
              last: dict | None = None, restarts: int = 0, index: str = "0",
              created: str = "2026-01-01T00:00:00Z"):
    """A TrainJob pod as JobSet v0.12.0 labels it (kubernetes-sigs/jobset ``labelAndAnnotateObject``)."""
    status = {"name": "node", "ready": True, "restartCount": restarts, "image": "i", "imageID": "",
              "state": state or {"running": {"startedAt": created}}}
    if last:
        status["lastState"] = last
    return {"metadata": {"name": name, "namespace": "egnet", "creationTimestamp": created,
                         "labels": {"jobset.sigs.k8s.io/jobset-name": job,
                                    "jobset.sigs.k8s.io/replicatedjob-name": "node",
                                    "jobset.sigs.k8s.io/job-index": "0",
                                    "batch.kubernetes.io/job-completion-index": index}},
            "status": {"phase": "Running", "containerStatuses": [status]}}


def run(jobs, obj, **kw):
    clock = FakeClock()
    logs: list[str] = []
    state = jobs_mod.run_job(jobs, obj, log=logs.append, clock=clock, sleep=clock.sleep,
                             timeout_s=kw.pop("timeout_s", 3600), poll_s=kw.pop("poll_s", 30), **kw)
    return state, logs


# --------------------------------------------------------------------------- re-attach


FAILED_JOBS = "jobset failed due to one or more job failures (first failed job: egnet-train-x-node-0)"


@pytest.mark.parametrize("found", [cond("Failed", reason="FailedJobs", message=FAILED_JOBS),
                                   cond("Suspended", reason="Suspended")], ids=["failed", "suspended"])
def test_a_failed_or_suspended_job_found_on_reattach_is_recreated(cluster, found):
    """A Failed TrainJob cannot be restarted in place: its JobSet stays Failed and is never
    re-applied while it exists unsuspended (kubeflow/trainer v2.3.0 ``pkg/runtime/framework/plugins/
    jobset/jobset.go`` ``Build``), and ``spec.trainer`` is immutable (``trainjob_types.go``): delete,
    wait until it is gone (the JobSet reuses the name), create again."""
    obj = manifest(JOB, run="run-7")
    cluster.objects[JOB] = copy.deepcopy(obj)           # the first attempt's job
    cluster.statuses[JOB] = [found]
    cluster.linger = 2                                   # foreground deletion takes a few polls
    jobs = jobs_for(cluster)
    got, how = jobs.create_or_attach(obj, log=lambda s: None, clock=FakeClock(), sleep=lambda s: None)
    assert how == "recreated"
    methods = [(m, p) for m, p in cluster.requests if p.startswith(TJ_PATH)]
    assert methods[0] == ("POST", TJ_PATH)                               # 409: it exists
    assert ("DELETE", f"{TJ_PATH}/{JOB}") in methods
    deleted_at = methods.index(("DELETE", f"{TJ_PATH}/{JOB}"))
    # no create while the old object still exists; then exactly one
    assert [m for m in methods[deleted_at:] if m[0] == "POST"] == [("POST", TJ_PATH)]
    assert methods[-1] == ("POST", TJ_PATH)
    assert sum(1 for m in methods[deleted_at:] if m == ("GET", f"{TJ_PATH}/{JOB}")) == 3  # 2 lingering + gone
    assert crd_errors(cluster.objects[JOB], TRAINJOB_SCHEMA) == []
    assert cluster.objects[JOB]["metadata"]["labels"][tj.RUN_LABEL] == "run-7"


def test_a_running_or_finished_job_is_attached_not_recreated(cluster):
    obj = manifest(JOB, run="run-7")
    cluster.objects[JOB] = copy.deepcopy(obj)
    cluster.statuses[JOB] = [cond("Running")]
    _, how = jobs_for(cluster).create_or_attach(obj, log=lambda s: None)
    assert how == "attached"
    assert not [r for r in cluster.requests if r[0] == "DELETE"]


def test_a_job_that_will_not_go_away_is_an_error(cluster):
    obj = manifest(JOB)
    cluster.objects[JOB] = copy.deepcopy(obj)
    cluster.statuses[JOB] = [cond("Failed", reason="FailedJobs")]
    cluster.deny_delete = True        # e.g. a finalizer that never clears, seen as: it stays
    with pytest.raises(DataError, match="HTTP 403"):
        jobs_for(cluster).create_or_attach(obj, log=lambda s: None)


# --------------------------------------------------------------------------- logs and reasons


def test_rank0_log_lines_are_relayed_once_each(cluster):
    """Each poll asks for the log since the last line relayed (``sinceTime``, second precision,
    so the stub returns that second again) and relays only newer lines."""
    obj = manifest(JOB)
    cluster.statuses[JOB] = [cond("Running"), cond("Running"), cond("Running"), cond("Complete")]
    pod = rank0_pod()
    other = rank0_pod(f"{JOB}-node-0-1-fghij", index="1")   # rank 1: not relayed
    cluster.pods = [pod, other]
    lines = cluster.logs[(pod["metadata"]["name"], False)] = []
    cluster.logs[(other["metadata"]["name"], False)] = ["2026-01-01T00:00:01.5Z rank 1 says hi"]

    class Grow(FakeClock):    # the training writes between polls
        batches = [["2026-01-01T00:00:01.100Z it 10 loss 2.30", "2026-01-01T00:00:01.2Z it 20 loss 2.10"],
                   ["2026-01-01T00:00:01.300000001Z it 30 loss 1.90"], [], ["2026-01-01T00:00:05Z done"]]

        def sleep(self, s):
            super().sleep(s)
            lines.extend(self.batches.pop(0) if self.batches else [])

    clock = Grow()
    lines.extend(["2026-01-01T00:00:00.9Z starting"])
    logs: list[str] = []
    jobs_mod.run_job(jobs_for(cluster), obj, log=logs.append, clock=clock, sleep=clock.sleep, timeout_s=3600,
                     poll_s=30)
    relayed = [ln for ln in logs if ln.startswith("[rank0] ")]
    assert relayed == ["[rank0] starting", "[rank0] it 10 loss 2.30", "[rank0] it 20 loss 2.10",
                       "[rank0] it 30 loss 1.90"]   # "done" came after the job completed
    assert not any("rank 1" in ln for ln in logs)
    log_calls = [r for r in cluster.calls if r.path.endswith("/log")]
    assert log_calls[0].query["tailLines"] == ["200"]                 # re-attach: no flood
    assert log_calls[1].query["sinceTime"] == ["2026-01-01T00:00:00Z"]
    assert all(r.query["container"] == ["node"] for r in log_calls)


def test_a_failing_pod_is_named_with_its_reason_and_log_tail(cluster):
    obj = manifest(JOB)
    cluster.statuses[JOB] = [cond("Running"), cond("Running"),
                             cond("Failed", reason="FailedJobs", message=FAILED_JOBS)]
    oom = {"terminated": {"exitCode": 137, "reason": "OOMKilled", "finishedAt": "2026-01-01T00:10:00Z"}}
    crashed = rank0_pod(f"{JOB}-node-0-1-zzzzz", index="1", restarts=1,
                        state={"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 10s"}},
                        last=oom)
    cluster.pods = [rank0_pod(), crashed]
    cluster.logs[(crashed["metadata"]["name"], True)] = [
        "2026-01-01T00:09:59Z Traceback (most recent call last):",
        "2026-01-01T00:09:59Z torch.OutOfMemoryError: CUDA out of memory"]
    clock = FakeClock()
    logs: list[str] = []
    with pytest.raises(DataError) as err:
        jobs_mod.run_job(jobs_for(cluster), obj, log=logs.append, clock=clock, sleep=clock.sleep,
                         timeout_s=3600, poll_s=30)
    line = (f"pod {JOB}-node-0-1-zzzzz: container node exited 137 (before its restart) (OOMKilled)")
    assert logs.count(line) == 1                                 # once, though seen at every poll
    assert f"pod {JOB}-node-0-1-zzzzz: container node CrashLoopBackOff: back-off 10s" in logs
    assert f"[{JOB}-node-0-1-zzzzz] torch.OutOfMemoryError: CUDA out of memory" in logs
    assert "failed: FailedJobs" in str(err.value) and "CrashLoopBackOff" in str(err.value)


def test_without_rbac_for_pods_the_launcher_follows_the_job_status_only(cluster):
    obj = manifest(JOB)
    cluster.statuses[JOB] = [cond("Running"), cond("Running"), cond("Complete")]
    cluster.deny_pods = True
    state, logs = run(jobs_for(cluster), obj)
    assert state.phase == "succeeded"
    assert sum("no permission to read the job's pods" in ln for ln in logs) == 1
    assert sum(1 for m, p in cluster.requests if p.endswith("/pods")) == 1   # asked once, then not again


def test_pytorchjob_rank0_is_master_0(cluster):
    """Training Operator v1.9 labels (``pkg/util/labels``, ``pkg/controller.v1/common/pod.go``)."""
    obj = manifest(JOB, kind="pytorchjob")
    cluster.statuses[JOB] = [cond("Running"), {"conditions": [{"type": "Succeeded", "status": "True"}]}]
    master = {"metadata": {"name": f"{JOB}-master-0", "namespace": "egnet",
                           "labels": {"training.kubeflow.org/job-name": JOB,
                                      "training.kubeflow.org/replica-type": "master",
                                      "training.kubeflow.org/replica-index": "0"}},
              "status": {"containerStatuses": [{"name": "pytorch", "ready": True, "restartCount": 0,
                                                "image": "i", "imageID": "", "state": {"running": {}}}]}}
    cluster.pods = [master]
    cluster.logs[(f"{JOB}-master-0", False)] = ["2026-01-01T00:00:01Z hello from master"]
    _, logs = run(jobs_for(cluster, "pytorchjob"), obj)
    assert "[rank0] hello from master" in logs
    log_call = next(r for r in cluster.calls if r.path.endswith("/log"))
    assert log_call.query["container"] == ["pytorch"]


# --------------------------------------------------------------------------- SIGTERM

SIGTERM_SCRIPT = """
import json, sys
from kubernetes import client
from egnet.pipeline import jobs, trainjob
url, manifest = sys.argv[1], json.loads(sys.argv[2])
conf = client.Configuration(); conf.host = url
api = client.ApiClient(conf)
tjs = jobs.TrainingJobs(client.CustomObjectsApi(api), "egnet", "trainjob", client.CoreV1Api(api))
jobs.run_job(tjs, manifest, timeout_s=3600, poll_s=0.2, cleanup="never", log=lambda s: print(s, flush=True))
"""


def test_sigterm_deletes_the_job_and_exits_143(cluster, tmp_path):
    """Argo terminates a step with SIGTERM to its process group, SIGKILL after the grace period
    (argo-workflows v4.0.5 ``workflow/controller/exec_control.go``, ``workflow/signal/signal.go``; KFP's
    launcher runs the component in the same process group, ``backend/src/v2/component/launcher_v2.go``).
    A job left running would hold its GPUs up to ``active_deadline_s``."""
    obj = manifest(JOB)
    cluster.statuses[JOB] = [cond("Running")]
    proc = subprocess.Popen([sys.executable, "-c", SIGTERM_SCRIPT, cluster.url, json.dumps(obj)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        for _ in range(600):                        # until it watches the job (polls GET)
            if sum(1 for m, p in cluster.requests if m == "GET" and p.endswith(JOB)) >= 2:
                break
            time.sleep(0.05)
        assert JOB in cluster.objects
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 143, out
    assert ("DELETE", f"{TJ_PATH}/{JOB}") in cluster.requests
    assert JOB not in cluster.objects
    assert "SIGTERM: deleting TrainJob egnet/" + JOB in out


def test_sigterm_outside_the_main_thread_is_not_intercepted():
    """signal.signal only works in the main thread; elsewhere the guard is a no-op (no crash)."""
    import threading

    seen = []

    def body():
        with jobs_mod.sigterm_raises():
            seen.append(signal.getsignal(signal.SIGTERM))

    t = threading.Thread(target=body)
    t.start()
    t.join()
    assert seen == [signal.getsignal(signal.SIGTERM)]


# --------------------------------------------------------------------------- owner, exit handler


def test_the_job_is_owned_by_the_launcher_pod():
    """An ownerReference to the launcher pod (downward API env): GC deletes the job with the pod.
    Trainer v2.3.0's webhook and CRD rules do not look at ownerReferences
    (``pkg/webhooks/trainjob_webhook.go``, ``pkg/apis/trainer/v1alpha1/trainjob_types.go``)."""
    owner = tj.pod_owner({tj.POD_NAME_ENV: "nightcity-abc-train-123", tj.POD_UID_ENV: "9b2f-uid"})
    assert owner == {"apiVersion": "v1", "kind": "Pod", "name": "nightcity-abc-train-123", "uid": "9b2f-uid",
                     "controller": False, "blockOwnerDeletion": False}
    assert tj.pod_owner({}) is None
    import dataclasses

    from tests.pipeline.test_trainjob import example_spec

    for kind in ("trainjob", "pytorchjob"):
        obj = tj.build(kind, dataclasses.replace(example_spec(), owner=owner))
        assert obj["metadata"]["ownerReferences"] == [owner]
    owned = tj.build("trainjob", dataclasses.replace(example_spec(), owner=owner))
    assert crd_errors(owned, TRAINJOB_SCHEMA) == []


@pytest.mark.parametrize("status,cleanup,deleted", [
    (cond("Running"), "never", True),                  # a cancelled run: stop the GPUs
    ({"jobsStatus": [{"name": "node", "active": 2}]}, "never", True),
    (cond("Complete"), "never", False),
    (cond("Complete"), "on_success", True),
    (cond("Failed", reason="FailedJobs"), "on_success", False),   # kept for inspection
    (cond("Failed", reason="FailedJobs"), "always", True),
])
def test_exit_handler_stops_a_running_job_and_applies_cleanup_to_a_finished_one(cluster, status, cleanup,
                                                                                 deleted):
    run_id = "7d5e3c1a-2222-4b4b-8c8c-000000000009"
    name = tj.job_name(run_id)
    cluster.objects[name] = manifest(name)
    cluster.statuses[name] = [status]
    logs: list[str] = []
    res = kfp_steps.finalize_run("FAILED", run_id, "weekly 2026-01-01", nodes=2, job_kind="trainjob",
                                 cluster={"cleanup": cleanup}, params_file=str(PARAMS),
                                 overrides=["tracking.uri=http://127.0.0.1:9"],   # MLflow: the next test
                                 jobs_factory=lambda kind: jobs_for(cluster, kind), log=logs.append)
    assert (name not in cluster.objects) == deleted
    assert res["line"] == logs[-1]
    assert logs[-1].startswith(f"run weekly 2026-01-01 ({run_id}): FAILED; training job:")


@pytest.mark.slow   # MLflow's sqlite schema: ~10 s here
def test_exit_handler_tags_the_training_run_and_ends_it(tmp_path, monkeypatch):
    """The MLflow run started by the train step carries kfp_run_id (EGNET_RUN_TAGS); the exit handler
    finds it by that tag, records the final state and ends a run left open by a killed training."""
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    client = mlflow.MlflowClient(uri)
    exp = client.create_experiment("nightcity-egnet", artifact_location=(tmp_path / "art").as_uri())
    open_run = client.create_run(exp, tags={"kfp_run_id": "run-42"})
    other = client.create_run(exp, tags={"kfp_run_id": "run-43"})
    res = kfp_steps.finalize_run("FAILED", "run-42", "r", nodes=1, job_kind="trainjob", cluster={},
                                 params_file=str(PARAMS), log=lambda s: None)
    got = client.get_run(open_run.info.run_id)
    assert got.data.tags[kfp_steps.FINAL_STATE_TAG] == "FAILED" and got.info.status == "KILLED"
    assert kfp_steps.FINAL_STATE_TAG not in client.get_run(other.info.run_id).data.tags
    assert res["job"] == "none" and open_run.info.run_id in res["mlflow_run"]
    # a successful run is tagged, and its finished run keeps its status
    client.set_terminated(other.info.run_id, "FINISHED")
    kfp_steps.finalize_run("COMPLETE", "run-43", "r", nodes=1, job_kind="trainjob", cluster={},
                           params_file=str(PARAMS), log=lambda s: None)
    assert client.get_run(other.info.run_id).info.status == "FINISHED"
    assert client.get_run(other.info.run_id).data.tags[kfp_steps.FINAL_STATE_TAG] == "COMPLETE"


def test_exit_handler_never_fails_over_an_unreachable_api(tmp_path):
    logs: list[str] = []
    res = kfp_steps.finalize_run("FAILED", "run-1", "", nodes=2, job_kind="trainjob", cluster={},
                                 params_file=str(PARAMS),
                                 overrides=["tracking.uri=http://127.0.0.1:9"],
                                 jobs_factory=lambda kind: (_ for _ in ()).throw(DataError("no cluster")),
                                 log=logs.append)
    assert "unknown (no cluster)" in res["job"] and res["mlflow_run"].startswith("not tagged")
