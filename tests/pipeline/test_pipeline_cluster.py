"""The compiled pipeline read the way a KFP 2.17 backend reads it (no cluster here).

Each test names the backend behaviour it guards, from kubeflow/pipelines at tag 2.17.0 and
argo-workflows v4.0.5 (the Argo KFP 2.17.0 builds on):

- resource placeholders resolve only from STRING values;
- the retry window is counted from the first attempt;
- the exit handler runs after the guarded group however it ends;
- the cache key is input parameter values + input artifact ids (``cache_key`` is ignored);
- the registry lock and its S3 credentials reach register / gate / promote;
- every executor has CPU/memory requests and limits; CPU steps run the CPU image.
"""

# no `from __future__ import annotations`: kfp reads the test components' real types
import json

import numpy as np
import pytest
import yaml

from egnet.core.config import load_config
from egnet.pipeline import steps as kfp_steps
from pipelines.nightcity_training import OPTIONAL_KEYS, compile_pipeline
from tests.support import PARAMS

pytestmark = pytest.mark.kfp        # the real kfp compiler
RESOURCE_FIELDS = ("resourceCpuRequest", "resourceCpuLimit", "resourceMemoryRequest", "resourceMemoryLimit")


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> tuple[dict, dict]:
    out = tmp_path_factory.mktemp("pipeline") / "p.yaml"
    compile_pipeline(load_config(PARAMS), out)
    spec, platform = [d for d in yaml.safe_load_all(out.read_text()) if d]
    return spec, platform["platforms"]["kubernetes"]


def dags(spec: dict) -> dict[str, dict]:
    """Every DAG by the name of the component that owns it (``root`` for the pipeline)."""
    out = {"root": spec["root"]}
    out.update({name: comp for name, comp in spec["components"].items() if "dag" in comp})
    return out


def placeholder_types(spec: dict) -> list[tuple[str, str, str]]:
    """(executor, field, parameterType) for every ``{{$.inputs.parameters[...]}}`` placeholder in an
    executor's resources or image, with the type of what feeds it: the task input it names
    resolves to a producer task's output (``taskOutputParameter``) or to the enclosing DAG's
    input (``componentInputParameter``), whose declared type is what the driver hands over."""
    found = []
    for comp in dags(spec).values():
        for task in comp["dag"]["tasks"].values():
            ref = spec["components"][task["componentRef"]["name"]]
            ex = spec["deploymentSpec"]["executors"].get(ref.get("executorLabel", ""), {}).get("container")
            if not ex:
                continue
            res = ex.get("resources", {})
            fields = {**{k: res[k] for k in RESOURCE_FIELDS if k in res}, "image": ex["image"],
                      **{f"accelerator.{k}": v for k, v in res.get("accelerator", {}).items()}}
            for field, value in fields.items():
                if "{{$.inputs.parameters['" not in str(value):
                    continue
                name = str(value).split("['")[1].split("']")[0]
                src = task["inputs"]["parameters"][name]
                if "taskOutputParameter" in src:
                    t = src["taskOutputParameter"]
                    producer_task = comp["dag"]["tasks"][t["producerTask"]]
                    outputs = spec["components"][producer_task["componentRef"]["name"]]["outputDefinitions"]
                    ptype = outputs["parameters"][t["outputParameterKey"]]["parameterType"]
                elif "componentInputParameter" in src:
                    declared = comp["inputDefinitions"]["parameters"]
                    ptype = declared[src["componentInputParameter"]]["parameterType"]
                else:
                    ptype = "STRING" if isinstance(src["runtimeValue"]["constant"], str) else "OTHER"
                found.append((ref["executorLabel"], field, ptype))
    return found


def test_every_resource_placeholder_names_a_string(compiled):
    """kubeflow/pipelines 2.17.0 ``backend/src/v2/driver/resolve.go`` ``resolvePodSpecInputRuntimeParameter``
    returns ``GetStringValue()`` of the parameter (``driver.go`` ``getPodResource``, accelerator
    l.415-446), and the driver's type coercion covers only component inputs, never the
    ``pipelinechannel--*`` inputs placeholders read: a NUMBER resolves to "", so an int GPU count
    gives a pod with no GPU limit and an int CPU/memory fails ``ParseQuantity``."""
    spec, _ = compiled
    found = placeholder_types(spec)
    train = {f for e, f, _ in found if e == "exec-train"}
    assert {"image", "accelerator.resourceCount", "accelerator.resourceType", *RESOURCE_FIELDS} <= train
    assert [x for x in found if x[2] != "STRING"] == []
    assert {e for e, f, _ in found if f == "image"} >= {"exec-validate", "exec-evaluate", "exec-finalize"}


def test_the_check_catches_an_integer_gpu_count(tmp_path):
    """The check above can fail: what the pipeline compiled to before (an int output as GPU count)."""
    from kfp import compiler, dsl

    @dsl.component(base_image="python:3.11")
    def size(n: int) -> int:
        return n

    @dsl.component(base_image="python:3.11")
    def work():
        pass

    @dsl.pipeline(name="p")
    def p(n: int = 1, cpu: int = 2):
        s = size(n=n)
        w = work().set_accelerator_type("nvidia.com/gpu").set_accelerator_limit(s.output)
        w.set_cpu_limit(str(2)).set_memory_limit("1Gi")
        w2 = work().set_cpu_request(cpu)
        w2.set_memory_request("1Gi")

    compiler.Compiler().compile(p, str(tmp_path / "p.yaml"))
    spec = next(yaml.safe_load_all((tmp_path / "p.yaml").read_text()))
    bad = {(f, t) for _, f, t in placeholder_types(spec) if t != "STRING"}
    assert bad == {("accelerator.resourceCount", "NUMBER_INTEGER"), ("resourceCpuRequest", "NUMBER_INTEGER")}


def test_train_retry_window_covers_the_training(compiled):
    """argo-workflows v4.0.5 ``workflow/controller/operator.go`` ``processNodeRetries``: the deadline is
    the FIRST attempt's start + ``backoff.maxDuration``; retries are refused past it and a retry's
    pod is killed at it. kfp's default is 3600 s (``kfp/dsl/structures.py`` ``RetryPolicy.to_proto``).
    Argo parses the factor as an integer (``util/intstr/parametrizable.go``)."""
    spec, _ = compiled
    cfg = load_config(PARAMS).pipeline
    policy = dags(spec)["comp-exit-handler-1"]["dag"]["tasks"]["train"]["retryPolicy"]
    assert policy["maxRetryCount"] == cfg.train_retries == 2
    assert policy["backoffMaxDuration"] == f"{cfg.train_retry_window_s}s"
    assert cfg.train_retry_window_s >= cfg.active_deadline_s > 3600
    assert float(policy["backoffFactor"]).is_integer()
    # the whole run lasts longer than the window (PipelineConfig: 2.17.0, argocompiler/argo.go)
    _, k8s = compiled
    assert k8s["pipelineConfig"] == {"activeDeadlineSeconds": cfg.run_deadline_s,
                                     "resourceTtlOnCompletion": cfg.run_ttl_s}
    assert cfg.run_deadline_s > cfg.train_retry_window_s


def test_retry_window_shorter_than_the_job_deadline_is_refused():
    from egnet.core.errors import ConfigError

    with pytest.raises(ConfigError, match="a training that fails late would never be retried"):
        load_config(PARAMS, overrides=["pipeline.train_retry_window_s=3600"])


def test_exit_handler_guards_every_step(compiled):
    """The SDK compiles ``dsl.ExitHandler`` to a task triggered by ALL_UPSTREAM_TASKS_COMPLETED of the
    group; backend 2.17.0 ``backend/src/v2/compiler/argocompiler/dag.go`` turns it into an Argo exit
    lifecycle hook, which runs after success, failure and "Terminate run" (Argo ``exit_handler.go``)."""
    spec, k8s = compiled
    root = spec["root"]["dag"]["tasks"]
    assert set(root) == {"exit-handler-1", "finalize"}
    fin = root["finalize"]
    assert fin["triggerPolicy"] == {"strategy": "ALL_UPSTREAM_TASKS_COMPLETED"}
    assert fin["dependentTasks"] == ["exit-handler-1"]
    assert fin["inputs"]["parameters"]["status"] == {"taskFinalStatus": {"producerTask": "exit-handler-1"}}
    assert fin["cachingOptions"].get("enableCache", False) is False
    assert fin["inputs"]["parameters"]["run_id"]["runtimeValue"]["constant"] == "{{$.pipeline_job_uuid}}"
    guarded = dags(spec)["comp-exit-handler-1"]["dag"]["tasks"]
    assert {"resolve-data", "materialise", "train", "register", "gate"} <= set(guarded)
    # it finds the job (RBAC of the run account) and the MLflow run
    assert k8s["deploymentSpec"]["executors"]["exec-finalize"]["podMetadata"]["labels"][
        "egnet.io/pipeline-access"] == "true"


def test_caching_keys_on_the_resolved_commit(compiled):
    """kubeflow/pipelines 2.17.0 ``backend/src/v2/cacheutils/cache.go`` ``GenerateCacheKey``: input
    parameter values and input artifact *ids*, image, command; ``cache_key`` is read by no released
    backend. So materialise gets the commit and the data key (not the moving rev) and is cached;
    the data steps after it reuse its artifact and hit too."""
    spec, _ = compiled
    tasks = dags(spec)["comp-exit-handler-1"]["dag"]["tasks"]
    mat = tasks["materialise"]["inputs"]["parameters"]
    assert "data_rev" not in mat
    assert mat["data_commit"]["taskOutputParameter"] == {"outputParameterKey": "commit",
                                                         "producerTask": "resolve-data"}
    assert mat["data_key"]["taskOutputParameter"] == {"outputParameterKey": "data_key",
                                                      "producerTask": "resolve-data"}
    assert tasks["materialise"]["cachingOptions"] == {"enableCache": True}
    assert not tasks["resolve-data"]["cachingOptions"].get("enableCache", False)
    assert "cacheKey" not in json.dumps(spec)
    # validate consumes materialise's artifact: a cached materialise hands on the same artifact id
    data = tasks["validate"]["inputs"]["artifacts"]["data"]
    assert data["taskOutputArtifact"]["producerTask"] == "materialise"


def test_registry_lock_and_its_s3_keys_reach_register_gate_promote(compiled):
    """egnet/registry/locking.py: ``EGNET_REGISTRY_LOCK`` (an s3:// lease) wins over register.lock_uri."""
    _, k8s = compiled
    ex = k8s["deploymentSpec"]["executors"]
    for name in ("register", "gate", "promote"):
        cfg = ex[f"exec-{name}"]
        lock = [c for c in cfg["configMapAsEnv"] if c["optional"]]
        assert [e["envVar"] for c in lock for e in c["keyToEnv"]] == list(OPTIONAL_KEYS), name
        assert "EGNET_REGISTRY_LOCK" in OPTIONAL_KEYS
        s3 = {e["envVar"] for s in cfg["secretAsEnv"] if s["secretName"] == "egnet-s3" for e in s["keyToEnv"]}
        assert s3 == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}, name
        endpoints = {e["envVar"] for c in cfg["configMapAsEnv"] if not c["optional"] for e in c["keyToEnv"]}
        assert {"AWS_ENDPOINT_URL", "S3_BUCKET"} <= endpoints, name


@pytest.mark.parametrize("env,bucket", [("dev", "egnet"), ("prod", "egnet-prod-example")])
def test_overlays_give_the_pods_an_s3_lease(env, bucket, monkeypatch):
    """The overlays' ConfigMap value, resolved the way a step pod resolves it."""
    from egnet.registry.locking import LOCK_ENV, LockSpec
    from tests.support.k8s import K8S, find, render

    data = find(render(K8S / "overlays" / env), "ConfigMap", "egnet-endpoints")["data"]
    monkeypatch.setenv(LOCK_ENV, data[LOCK_ENV])
    monkeypatch.setenv("S3_BUCKET", data["S3_BUCKET"])
    assert LockSpec.resolve("", 120, 900).uri == f"s3://{bucket}/locks/egnet-registry.lock"


def test_every_executor_has_requests_and_limits(compiled):
    """A ResourceQuota rejects pods without them; the driver writes them from the resource* fields
    (2.17.0 ``driver.go`` ``initPodSpecPatch``)."""
    spec, _ = compiled
    for name, ex in spec["deploymentSpec"]["executors"].items():
        res = ex["container"].get("resources", {})
        assert all(res.get(k) for k in RESOURCE_FIELDS), name


def test_cpu_image_defaults_to_the_cpu_tag(compiled):
    spec, _ = compiled
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert params["cpu_image"]["defaultValue"] == params["image"]["defaultValue"] + "-cpu"
    assert kfp_steps.cpu_image_of("r.io/egnet") == "r.io/egnet:latest-cpu"
    assert kfp_steps.cpu_image_of("r.io:5000/egnet:v1", "r.io/other:v1") == "r.io/other:v1"
    from egnet.core.errors import ConfigError

    with pytest.raises(ConfigError, match="pinned by digest"):
        kfp_steps.cpu_image_of("r.io/egnet@sha256:" + "0" * 64)


def test_evaluate_emits_a_confusion_matrix_and_register_a_links_page(compiled):
    spec, _ = compiled
    outs = spec["components"]["comp-evaluate"]["outputDefinitions"]["artifacts"]
    assert outs["confusion"]["artifactType"]["schemaTitle"] == "system.ClassificationMetrics"
    outs = spec["components"]["comp-register"]["outputDefinitions"]["artifacts"]
    assert outs["links"]["artifactType"]["schemaTitle"] == "system.Markdown"


def test_confusion_matrix_sums_the_exposure_bins(tmp_path):
    """Hand-worked: 2 classes, counts[bin, gt, pred (+ not-a-class)]; the matrix sums the bins and drops
    the not-a-class column."""
    counts = np.zeros((10, 2, 3), dtype=np.int64)
    counts[0] = [[5, 1, 9], [0, 2, 0]]
    counts[7] = [[1, 0, 0], [3, 4, 1]]
    np.save(tmp_path / "confusion.npy", counts)
    (tmp_path / "metrics.json").write_text(json.dumps({"IoU": {"road": 0.5, "sidewalk": 0.4}}))
    assert kfp_steps.confusion_matrix(tmp_path) == (["road", "sidewalk"], [[6, 1], [3, 6]])

    class Sink:
        def log_confusion_matrix(self, names, matrix):
            self.got = (names, matrix)

        def log_metric(self, name, value):
            pass

    (tmp_path / "metrics.json").write_text(json.dumps({"IoU": {"road": 0.5, "sidewalk": 0.4}, "mIoU": 0.45}))
    sink = Sink()
    kfp_steps.record_evaluation(tmp_path, Sink(), sink)
    assert sink.got == (["road", "sidewalk"], [[6, 1], [3, 6]])


def test_registration_links():
    reg = {"name": "egnet-nightcity", "version": "7", "run_id": "abc", "aliases": ["challenger"],
           "model_uri": "models:/egnet-nightcity/7"}
    md = kfp_steps.registration_links(reg, "3", ui="https://mlflow.example.com/")
    assert "[abc](https://mlflow.example.com/#/experiments/3/runs/abc)" in md
    assert "[egnet-nightcity v7](https://mlflow.example.com/#/models/egnet-nightcity/versions/7)" in md
    assert "(aliases: challenger)" in md
    plain = kfp_steps.registration_links(reg, "3", ui="sqlite:///mlflow.db")     # no web UI to link to
    assert "](" not in plain and "`abc`" in plain
