"""TrainJob / PyTorchJob manifests (egnet/trainjob.py) and the client that runs them.

- The builders reproduce the templates in k8s/training/ exactly for the templates' example
  run, and every manifest they build validates against the pinned CRD schemas
  (tests/support/k8s.py: Trainer v2.3.0, Training Operator v1.9.4) and the Pod schema.
- The client (create / 409 re-attach / wait / fail / cleanup) runs against a loopback HTTP
  stub of the Kubernetes API paths of the custom resources; no cluster here.
- The train step's multi-node path (egnet.pipeline.steps.run_training with nodes > 1) runs end to end
  against the stub and a moto S3 server: split staged on the "PVC", job created, model fetched.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import pytest
import yaml

from egnet.core.config import load_config
from egnet.core.errors import ConfigError, DataError
from egnet.pipeline import jobs as jobs_mod
from egnet.pipeline import trainjob as tj
from tests.support import PARAMS, REPO
from tests.support.k8s import PYTORCHJOB_SCHEMA, TRAINJOB_SCHEMA, as_pod, crd_errors, k8s_errors, pod_views

TEMPLATES = {"trainjob": REPO / "k8s" / "training" / "trainjob.yaml",
             "pytorchjob": REPO / "k8s" / "training" / "pytorchjob.yaml"}
SCHEMAS = {"trainjob": TRAINJOB_SCHEMA, "pytorchjob": PYTORCHJOB_SCHEMA}
EXAMPLE_ARGS = ["--data=/data/nightcity", "--split=/data/splits/example",
                "--out=s3://$(S3_BUCKET)/runs/example/train"]


def example_spec(**over) -> tj.JobSpec:
    """The run the k8s/training templates describe, with params.yaml's pipeline settings."""
    from pipelines.nightcity_training import _cluster_settings

    cluster = _cluster_settings(load_config(PARAMS))  # the templates carry the MLflow login
    spec = tj.JobSpec.from_cluster(cluster, name="egnet-train-example",
                                   image="registry.example.com/egnet:0.1.0", nodes=2, gpus_per_node=1,
                                   args=EXAMPLE_ARGS)
    return dataclasses.replace(spec, **over)


# --------------------------------------------------------------------------- manifests


@pytest.mark.parametrize("kind", sorted(TEMPLATES))
def test_builders_reproduce_the_templates(kind):
    (template,) = [d for d in yaml.safe_load_all(TEMPLATES[kind].read_text()) if d]
    assert tj.build(kind, example_spec()) == template


def varied_specs() -> list[tj.JobSpec]:
    return [
        example_spec(),
        example_spec(name=tj.job_name("9f1c2d3e-0000-4c4c-8888-abcdefabcdef"), nodes=4, gpus_per_node=8,
                     labels={tj.RUN_LABEL: "9f1c2d3e-0000-4c4c-8888-abcdefabcdef"},
                     env=tj.pod_env("egnet-endpoints", "egnet-s3", mlflow_secret="egnet-mlflow",
                                    mlflow_uri="http://mlflow:5000"),
                     tolerations=[tj.toleration("gpu", "a100", "NoExecute")], shm_size="64Gi"),
        example_spec(nodes=1, node_selector={}, tolerations=[], runtime="torch-custom",
                     active_deadline_s=3600),
    ]


@pytest.mark.parametrize("kind", sorted(TEMPLATES))
@pytest.mark.parametrize("spec", varied_specs(), ids=["example", "big", "single"])
def test_built_manifests_match_the_crd_and_pod_schemas(kind, spec):
    obj = tj.build(kind, spec)
    assert crd_errors(obj, SCHEMAS[kind]) == []
    for where, meta, pspec, containers in pod_views(obj):
        assert k8s_errors(as_pod(meta, pspec)) == [], where
        (c,) = [c for c in containers if c["name"] in ("node", "pytorch")]
        gpus = c["resources"]["limits"][spec.accelerator]
        assert gpus == str(spec.gpus_per_node) == c["resources"]["requests"][spec.accelerator]
        assert c["command"][0] == "torchrun" and c["command"][-3:] == ["-m", "egnet.cli", "train"]
        assert c["args"] == spec.args
        assert {m["mountPath"] for m in c["volumeMounts"]} == {"/data", "/dev/shm", "/tmp", "/home/egnet"}
    if kind == "pytorchjob":
        replicas = obj["spec"]["pytorchReplicaSpecs"]
        assert sum(r["replicas"] for r in replicas.values()) == spec.nodes
        assert obj["spec"]["nprocPerNode"] == str(spec.gpus_per_node)
        elastic = obj["spec"].get("elasticPolicy")
        if spec.nodes > 1:
            assert (elastic["minReplicas"], elastic["maxReplicas"], elastic["maxRestarts"]) == (
                spec.nodes, spec.nodes, spec.max_restarts)
        else:
            assert elastic is None
    else:
        assert f"--max-restarts={spec.max_restarts}" in obj["spec"]["trainer"]["command"]
        assert (obj["spec"]["trainer"]["numNodes"], obj["spec"]["trainer"]["numProcPerNode"]) == (
            spec.nodes, spec.gpus_per_node)


def test_schema_check_rejects_field_names_of_other_trainer_releases():
    """v2.1's podTemplateOverrides is not a v2.3 field: the schema check must say so."""
    obj = tj.build_trainjob(example_spec())
    old = copy.deepcopy(obj)
    old["spec"]["podTemplateOverrides"] = old["spec"].pop("runtimePatches")
    assert any("podTemplateOverrides" in e for e in crd_errors(old, TRAINJOB_SCHEMA))
    bad_name = tj.build_trainjob(example_spec(name="egnet-train-x"))
    bad_name["metadata"]["name"] = "Egnet_Train"
    assert crd_errors(bad_name, TRAINJOB_SCHEMA)


def test_job_name_is_a_stable_dns_label():
    a, b = "3b1e0c8a-1111-4f00-9a00-0123456789ab", "3b1e0c8a-1111-4f00-9a00-0123456789ac"
    assert tj.job_name(a) == tj.job_name(a) != tj.job_name(b)
    name = tj.job_name(a)
    assert name.startswith("egnet-train-") and len(name) == len("egnet-train-") + 10
    assert crd_errors(tj.build_trainjob(example_spec(name=name)), TRAINJOB_SCHEMA) == []
    with pytest.raises(ConfigError):
        tj.job_name("")


def test_toleration_and_env():
    assert tj.toleration("nvidia.com/gpu", "", "NoSchedule") == {
        "key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    assert tj.toleration("gpu", "a100", "NoSchedule")["operator"] == "Equal"
    env = {e["name"]: e for e in tj.pod_env("egnet-endpoints", "egnet-s3", mlflow_uri="http://m:5000",
                                            mlflow_secret="egnet-mlflow")}
    assert env["MLFLOW_TRACKING_URI"] == {"name": "MLFLOW_TRACKING_URI", "value": "http://m:5000"}
    assert env["MLFLOW_TRACKING_TOKEN"]["valueFrom"]["secretKeyRef"]["optional"] is True
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "egnet-s3"


def test_job_spec_from_the_compile_time_params():
    """JobSpec.from_cluster: the pipeline section of params.yaml -> the templates' pod settings."""
    from pipelines.nightcity_training import _cluster_settings

    cfg = load_config(PARAMS)
    # as KFP passes it
    cluster = {k: float(v) if isinstance(v, int) else v for k, v in _cluster_settings(cfg).items()}
    spec = tj.JobSpec.from_cluster(cluster, name="egnet-train-example",
                                   image="registry.example.com/egnet:0.1.0", nodes=2, gpus_per_node=1,
                                   args=EXAMPLE_ARGS, run_id="r1")
    built = tj.build_trainjob(spec)
    (template,) = yaml.safe_load_all(TEMPLATES["trainjob"].read_text())
    assert built["metadata"]["labels"].pop(tj.RUN_LABEL) == "r1"
    assert built == template


# --------------------------------------------------------------------------- loopback Kubernetes API


class FakeK8s:
    """The custom-object paths of the Kubernetes API, in memory, with scripted status."""

    def __init__(self) -> None:
        self.objects: dict[str, dict] = {}
        self.statuses: dict[str, list[dict]] = {}   # name -> statuses served by successive GETs
        self.deny_delete = False
        self.url, self.calls = "", []                # set by the fixture: the stub's URL and requests

    @property
    def requests(self) -> list[tuple[str, str]]:
        return [(r.method, r.path) for r in self.calls]

    @staticmethod
    def _status(code: int, reason: str) -> tuple[int, dict]:
        return code, {"kind": "Status", "code": code, "reason": reason}

    def handle(self, req) -> tuple[int, dict]:
        name = req.path.strip("/").split("/")[-1]
        if req.method == "POST":
            name = req.json["metadata"]["name"]
            if name in self.objects:
                return self._status(409, "AlreadyExists")
            self.objects[name] = req.json
            return 201, req.json
        if name not in self.objects:
            return self._status(404, "NotFound")
        if req.method == "DELETE":
            if self.deny_delete:
                return self._status(403, "Forbidden")
            del self.objects[name]
            return 200, {"kind": "Status", "status": "Success"}
        obj, script = self.objects[name], self.statuses.get(name)
        if script:  # served, not stored: objects keep what the client posted
            obj = {**obj, "status": script.pop(0) if len(script) > 1 else script[0]}
        return 200, obj


@pytest.fixture
def k8s(json_stub):
    fake = FakeK8s()
    stub = json_stub(fake.handle)
    fake.url, fake.calls = stub.url, stub.requests
    return fake


def jobs_for(fake: FakeK8s, kind: str = "trainjob", namespace: str = "egnet") -> jobs_mod.TrainingJobs:
    from kubernetes import client

    conf = client.Configuration()
    conf.host = fake.url
    return jobs_mod.TrainingJobs(client.CustomObjectsApi(client.ApiClient(conf)), namespace, kind)


def cond(kind: str, status: str = "True", reason: str = "", message: str = "") -> dict:
    return {"conditions": [{"type": kind, "status": status, "reason": reason, "message": message}]}


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        self.t += s


def manifest(name: str = "egnet-train-0123456789", run: str = "run-1", kind: str = "trainjob") -> dict:
    return tj.build(kind, example_spec(name=name, labels={tj.RUN_LABEL: run}))


def run(jobs, obj, clock=None, **kw):
    clock = clock or FakeClock()
    logs: list[str] = []
    kw.setdefault("timeout_s", 3600)
    kw.setdefault("poll_s", 30)
    state = jobs_mod.run_job(jobs, obj, log=logs.append, clock=clock, sleep=clock.sleep, **kw)
    return state, logs


def test_create_wait_succeed_and_cleanup_on_success(k8s):
    obj = manifest()
    name = obj["metadata"]["name"]
    k8s.statuses[name] = [{}, {"jobsStatus": [{"name": "node", "active": 2}]},
                          {"jobsStatus": [{"name": "node", "active": 2, "ready": 2}]},
                          cond("Complete", reason="JobsCompleted")]
    state, logs = run(jobs_for(k8s), obj, cleanup="on_success")
    assert state.phase == "succeeded"
    assert k8s.requests[0] == ("POST", "/apis/trainer.kubeflow.org/v1alpha1/namespaces/egnet/trainjobs")
    assert logs[0].startswith("created TrainJob egnet/" + name)
    phases = [line.split(": ")[1].split(" ")[0] for line in logs[1:-1]]
    assert phases == ["pending", "running", "running", "succeeded"]  # one line per change of state
    path = f"/apis/trainer.kubeflow.org/v1alpha1/namespaces/egnet/trainjobs/{name}"
    assert ("DELETE", path) in k8s.requests
    assert name not in k8s.objects


def test_retried_step_reattaches_instead_of_creating_a_second_job(k8s):
    obj = manifest(run="run-7")
    name = obj["metadata"]["name"]
    k8s.objects[name] = copy.deepcopy(obj)                 # created by the step's first attempt
    k8s.statuses[name] = [cond("Running"), cond("Complete")]
    state, logs = run(jobs_for(k8s), obj, cleanup="never")
    assert state.phase == "succeeded"
    assert logs[0].startswith("re-attached to existing TrainJob")
    assert [r for r in k8s.requests if r[0] == "POST"] == [
        ("POST", "/apis/trainer.kubeflow.org/v1alpha1/namespaces/egnet/trainjobs")]
    assert len(k8s.objects) == 1 and name in k8s.objects   # never: kept


def test_a_job_of_another_run_is_not_adopted(k8s):
    obj = manifest(run="run-1")
    k8s.objects[obj["metadata"]["name"]] = manifest(run="someone-else")
    with pytest.raises(ConfigError, match="belongs to run 'someone-else'"):
        run(jobs_for(k8s), obj)


@pytest.mark.parametrize("cleanup,deleted", [("on_success", False), ("always", True), ("never", False)])
def test_failed_job_fails_the_step_with_its_reason(k8s, cleanup, deleted):
    obj = manifest()
    name = obj["metadata"]["name"]
    k8s.statuses[name] = [cond("Running"),
                          cond("Failed", reason="BackoffLimitExceeded", message="node-0 exit 1")]
    with pytest.raises(DataError, match="failed: BackoffLimitExceeded: node-0 exit 1"):
        run(jobs_for(k8s), obj, cleanup=cleanup)
    assert (name not in k8s.objects) == deleted


def test_timeout_leaves_the_job_and_says_so(k8s):
    obj = manifest()
    k8s.statuses[obj["metadata"]["name"]] = [cond("Running")]
    clock = FakeClock()
    with pytest.raises(DataError, match=r"not finished after 100 s \(last state: running\)"):
        run(jobs_for(k8s), obj, clock=clock, timeout_s=100, poll_s=30)
    assert clock.t == 120  # polled at 0, 30, 60, 90, 120


def test_cleanup_without_rbac_delete_is_a_warning_not_a_failure(k8s):
    obj = manifest()
    k8s.statuses[obj["metadata"]["name"]] = [cond("Complete")]
    k8s.deny_delete = True
    state, logs = run(jobs_for(k8s), obj, cleanup="always")
    assert state.phase == "succeeded"
    assert "HTTP 403" in logs[-1] and "delete it by hand" in logs[-1]


def test_vanished_job_fails(k8s):
    obj = manifest()
    name = obj["metadata"]["name"]
    jobs = jobs_for(k8s)
    jobs.create_or_attach(obj)
    del k8s.objects[name]
    with pytest.raises(DataError, match="disappeared"):
        jobs.wait(name, 60, 1, log=lambda s: None, clock=FakeClock(), sleep=lambda s: None)


def test_pytorchjob_status(k8s):
    obj = manifest(kind="pytorchjob")
    name = obj["metadata"]["name"]
    k8s.statuses[name] = [cond("Created"), {"conditions": [{"type": "Created", "status": "True"},
                                                          {"type": "Running", "status": "True"}]},
                          {"conditions": [{"type": "Running", "status": "False"},
                                          {"type": "Succeeded", "status": "True",
                                           "reason": "PyTorchJobSucceeded"}]}]
    state, logs = run(jobs_for(k8s, "pytorchjob"), obj)
    assert state == jobs_mod.JobState("succeeded", "PyTorchJobSucceeded")
    assert k8s.requests[0][1] == "/apis/kubeflow.org/v1/namespaces/egnet/pytorchjobs"


# --------------------------------------------------------------------------- the train step, nodes > 1


class Artifact:
    def __init__(self, path: Path):
        self.path, self.metadata = str(path), {}


@pytest.mark.s3
def test_train_step_multi_node_end_to_end(k8s, s3_env, tmp_path, monkeypatch):
    """Split staged on the PVC, a TrainJob created with the run's args, the model fetched from S3."""
    from egnet.core.storage import Location
    from egnet.pipeline import steps as kfp_steps
    from pipelines.nightcity_training import _cluster_settings

    bucket = s3_env.bucket()
    monkeypatch.setenv("TEST_BUCKET", bucket)  # train_out's ${VAR} is expanded from the pod's env
    pvc = tmp_path / "pvc"
    data = pvc / "nightcity"
    data.mkdir(parents=True)
    split = tmp_path / "split"
    split.mkdir()
    (split / "train.txt").write_text("Tokyo_0001\n")
    (split / "test.txt").write_text("Tokyo_0002\n")
    quarantine = tmp_path / "quarantine.txt"
    quarantine.write_text("Tokyo_0003\n")
    run_id = "7d5e3c1a-2222-4b4b-8c8c-000000000001"
    job = tj.job_name(run_id)
    # what rank 0 of the TrainJob leaves in --out
    out = Location.from_str(f"s3://{bucket}/runs/{job}")
    out.write_text("mlflow_run_id", "abc123")
    out.write_text("model.pt", "weights")
    out.write_text("train_summary.json", json.dumps({"mlflow_run_id": "abc123", "iteration": 40000}))
    k8s.statuses[job] = [cond("Complete")]

    cfg = load_config(PARAMS, overrides=[f"pipeline.data_mount={pvc}", "pipeline.poll_s=1"])
    cluster = _cluster_settings(cfg)
    model = tmp_path / "model"
    summary = kfp_steps.run_training(
        data=str(data), split=str(split), quarantine=str(quarantine), model_dir=str(model), nodes=2,
        gpus_per_node=4, image="registry.example.com/egnet:abc", train_out="s3://${TEST_BUCKET}/runs",
        run_id=run_id, job_kind="trainjob", cluster=cluster, mlflow_uri="http://mlflow:5000",
        config=["--profile", "paper", "--set", "tracking.experiment=nightly"], run=_no_local_training,
        jobs_factory=lambda kind: jobs_for(k8s, kind))
    assert summary["train_out"] == f"s3://{bucket}/runs/{job}" and summary["iteration"] == 40000
    assert (model / "model.pt").read_text() == "weights" and (model / "mlflow_run_id").read_text() == "abc123"

    staged = pvc / "runs" / job
    assert (staged / "split" / "train.txt").read_text() == "Tokyo_0001\n"
    assert (staged / "quarantine.txt").read_text() == "Tokyo_0003\n"
    created = k8s.objects[job]
    assert crd_errors(created, TRAINJOB_SCHEMA) == []
    trainer = created["spec"]["trainer"]
    assert trainer["args"] == ["--data", str(data), "--split", str(staged / "split"), "--out",
                               f"s3://{bucket}/runs/{job}", "--quarantine", str(staged / "quarantine.txt"),
                               "--profile", "paper", "--set", "tracking.experiment=nightly"]
    assert (trainer["numNodes"], trainer["numProcPerNode"], trainer["image"]) == \
        (2, 4, "registry.example.com/egnet:abc")
    assert {"name": "MLFLOW_TRACKING_URI", "value": "http://mlflow:5000"} in trainer["env"]
    assert created["metadata"]["labels"][tj.RUN_LABEL] == run_id


def _no_local_training(argv, config):
    pytest.fail(f"multi-node training ran `egnet {' '.join(map(str, argv))}` in the launcher pod")


def test_train_step_multi_node_needs_shared_storage(tmp_path):
    from egnet.pipeline import steps as kfp_steps
    from pipelines.nightcity_training import _cluster_settings

    cluster = _cluster_settings(load_config(PARAMS))
    with pytest.raises(ConfigError, match="train_out must be s3://"):
        kfp_steps.run_training(data="/data/nightcity", split=str(tmp_path), quarantine=None,
                             model_dir=str(tmp_path / "m"), nodes=2, gpus_per_node=1, image="i", train_out="",
                             run_id="r", job_kind="trainjob", cluster=cluster, config=[],
                               run=_no_local_training)
    with pytest.raises(ConfigError, match="not on it"):
        kfp_steps.run_training(data=str(tmp_path), split=str(tmp_path), quarantine=None,
                               model_dir=str(tmp_path / "m"), nodes=2, gpus_per_node=1, image="i",
                               train_out="s3://b/runs", run_id="r", job_kind="trainjob", cluster=cluster,
                               config=[], run=_no_local_training)
