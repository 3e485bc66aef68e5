"""The compiled pipeline: committed YAML is current, and the fields the cluster relies on are there.

Compiled with the real kfp compiler; assertions read the pipeline spec and the Kubernetes
platform spec (the second YAML document) the way the KFP backend does.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from egnet.core.config import load_config
from egnet.pipeline.steps import LAUNCHER_RESOURCES, train_pod_resources
from pipelines.nightcity_training import COMPILED, compile_pipeline
from tests.support import PARAMS, REPO

STEPS_USING_PVC = {"materialise", "validate", "split", "stats", "train", "evaluate"}


def load(path: Path) -> tuple[dict, dict]:
    spec, platform = [d for d in yaml.safe_load_all(Path(path).read_text()) if d]
    return spec, platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> tuple[dict, dict]:
    out = tmp_path_factory.mktemp("pipeline") / "p.yaml"
    compile_pipeline(load_config(PARAMS), out)
    return load(out)


def executor(spec: dict, task: str) -> dict:
    return spec["deploymentSpec"]["executors"][f"exec-{task}"]["container"]


def all_tasks(spec: dict) -> dict[str, dict]:
    """Tasks of the root DAG and of nested (condition) DAGs, by task name."""
    tasks = dict(spec["root"]["dag"]["tasks"])
    for comp in spec["components"].values():
        tasks.update(comp.get("dag", {}).get("tasks", {}))
    return tasks


@pytest.mark.kfp
def test_committed_yaml_is_current(tmp_path):
    """pipelines/nightcity_training.yaml == compiling the code now (run `egnet pipeline compile`)."""
    out = compile_pipeline(load_config(PARAMS), tmp_path / "now.yaml")
    assert COMPILED.read_text() == out.read_text(), "stale: run `egnet pipeline compile` and commit the YAML"


@pytest.mark.kfp
def test_stale_yaml_is_detected(tmp_path):
    """The comparison above fails when the code or params change (here: another image)."""
    out = compile_pipeline(load_config(PARAMS, overrides=["pipeline.image=registry.example.com/egnet:9.9"]),
                           tmp_path / "other.yaml")
    assert COMPILED.read_text() != out.read_text()


@pytest.mark.kfp
def test_steps_order_and_gate(compiled):
    spec, _ = compiled
    tasks = all_tasks(spec)
    assert set(tasks) == {"materialise", "validate", "split", "stats", "drift", "train-resources", "train",
                          "evaluate", "register", "gate", "promote", "condition-1"}
    deps = {name: set(t.get("dependentTasks", [])) for name, t in tasks.items()}
    assert deps["validate"] == {"materialise"}
    assert deps["split"] == {"validate"}
    assert deps["drift"] == {"validate"}
    # training waits for the drift gate (drift.action: fail stops the run before any GPU is held)
    assert {"split", "stats", "drift", "train-resources"} <= deps["train"]
    assert {"train", "split"} <= deps["evaluate"]
    assert deps["register"] == {"evaluate", "train"}
    assert deps["gate"] == {"register"}
    # promote runs inside the condition on the gate's output
    cond = tasks["condition-1"]
    assert cond["triggerPolicy"]["condition"] == \
        "inputs.parameter_values['pipelinechannel--gate-Output'] == 'promote'"
    assert set(cond["dependentTasks"]) == {"gate", "register"}


@pytest.mark.kfp
def test_caching_off_where_outputs_depend_on_the_world(compiled):
    spec, _ = compiled
    tasks = all_tasks(spec)
    for name in ("materialise", "drift", "train", "register", "gate", "promote"):  # drift: the champion moves
        assert not tasks[name]["cachingOptions"].get("enableCache", False), name
    for name in ("validate", "split", "stats", "evaluate"):
        assert tasks[name]["cachingOptions"]["enableCache"] is True, name


@pytest.mark.kfp
def test_train_task_gpu_and_resources(compiled):
    spec, k8s = compiled
    res = executor(spec, "train")["resources"]
    # accelerator count from the train-resources step (0 GPUs when a multi-node job does the work)
    assert res["accelerator"]["resourceType"] == "nvidia.com/gpu"
    assert res["accelerator"]["resourceCount"] == \
        "{{$.inputs.parameters['pipelinechannel--train-resources-gpus']}}"
    for field in ("cpu_request", "cpu_limit", "memory_request", "memory_limit"):
        key = "resource" + "".join(w.capitalize() for w in field.split("_"))
        assert res[key] == f"{{{{$.inputs.parameters['pipelinechannel--train-resources-{field}']}}}}"
    inputs = all_tasks(spec)["train"]["inputs"]["parameters"]
    assert inputs["pipelinechannel--train-resources-gpus"]["taskOutputParameter"] == {
        "outputParameterKey": "gpus", "producerTask": "train-resources"}
    assert all_tasks(spec)["train"]["retryPolicy"]["maxRetryCount"] == 2
    # the run id the TrainJob name derives from
    assert inputs["run_id"]["runtimeValue"]["constant"] == "{{$.pipeline_job_uuid}}"

    train = k8s["exec-train"]
    assert train["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert train["nodeSelector"]["labels"] == {"nvidia.com/gpu.present": "true"}
    assert train["emptyDirMounts"] == [{"volumeName": "dshm", "mountPath": "/dev/shm", "medium": "Memory",
                                        "sizeLimit": "16Gi"}]
    secrets = {s["secretName"]: s for s in train["secretAsEnv"]}
    assert {(e["secretKey"], e["envVar"]) for e in secrets["egnet-s3"]["keyToEnv"]} == {
        ("AWS_ACCESS_KEY_ID", "AWS_ACCESS_KEY_ID"), ("AWS_SECRET_ACCESS_KEY", "AWS_SECRET_ACCESS_KEY")}
    assert secrets["egnet-s3"]["optional"] is False
    assert secrets["egnet-mlflow"]["optional"] is True
    (cm,) = train["configMapAsEnv"]
    assert cm["configMapName"] == "egnet-endpoints"
    assert "MLFLOW_TRACKING_URI" in {e["envVar"] for e in cm["keyToEnv"]}
    assert train["pvcMount"] == [{"constant": "egnet-data", "mountPath": "/data",
                                  "pvcNameParameter": {"runtimeValue": {"constant": "egnet-data"}}}]
    assert train["podMetadata"]["labels"]["egnet.io/pipeline-access"] == "true"


@pytest.mark.kfp
def test_evaluate_on_one_gpu(compiled):
    spec, k8s = compiled
    res = executor(spec, "evaluate")["resources"]
    assert (res["accelerator"]["resourceType"], res["accelerator"]["count"]) == ("nvidia.com/gpu", "1")
    assert res["resourceCpuRequest"] == "8" and res["resourceMemoryRequest"] == "48Gi"
    assert k8s["exec-evaluate"]["tolerations"] and k8s["exec-evaluate"]["emptyDirMounts"]


@pytest.mark.kfp
def test_each_step_gets_only_what_it_uses(compiled):
    spec, k8s = compiled
    for name in ("materialise", "validate", "split", "stats", "train-resources", "train", "evaluate",
                 "register", "gate", "promote"):
        cfg = k8s.get(f"exec-{name}", {})
        assert bool(cfg.get("pvcMount")) == (name in STEPS_USING_PVC), name
        s3 = [s for s in cfg.get("secretAsEnv", []) if s["secretName"] == "egnet-s3"]
        assert bool(s3) == (name in ("materialise", "train")), name
        talks = name in ("materialise", "train", "evaluate", "register", "gate", "promote")
        access = cfg.get("podMetadata", {}).get("labels", {}).get("egnet.io/pipeline-access")
        assert (access == "true") == talks, name
        assert bool(cfg.get("tolerations")) == (name in ("train", "evaluate")), name
        # every step runs the `image` parameter (default: pipeline.image), kfp not pip-installed
        ex = executor(spec, name)
        assert ex["image"] == "{{$.inputs.parameters['pipelinechannel--image']}}", name
        assert "pip install" not in " ".join(ex["command"]), name


@pytest.mark.kfp
def test_parameters_default_to_params_yaml(compiled):
    spec, _ = compiled
    cfg = load_config(PARAMS)
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert params["image"]["defaultValue"] == cfg.pipeline.image
    assert params["nodes"]["defaultValue"] == cfg.pipeline.nodes
    assert params["gpus_per_node"]["defaultValue"] == cfg.pipeline.gpus_per_node
    assert params["experiment"]["defaultValue"] == cfg.tracking.experiment
    assert params["overrides"]["parameterType"] == "LIST"
    assert {"data_rev", "data_repo", "data_path", "mlflow_uri", "profile", "train_out",
            "job_kind"} <= set(params)
    # the TrainJob settings travel as a constant of the train task, numbers included
    cluster = all_tasks(spec)["train"]["inputs"]["parameters"]["cluster"]["runtimeValue"]["constant"]
    assert cluster["trainjob_runtime"] == "torch-distributed" and cluster["shm_size"] == "16Gi"


@pytest.mark.kfp
def test_settings_follow_params(tmp_path):
    """A toleration with a value compiles to operator Equal; another image becomes the default."""
    cfg = load_config(PARAMS, overrides=["pipeline.gpu_toleration_value=a100",
                                         "pipeline.gpu_toleration_key=gpu",
                                         "pipeline.image=registry.example.com/team/egnet:abc123"])
    spec, k8s = load(compile_pipeline(cfg, tmp_path / "p.yaml"))
    assert k8s["exec-train"]["tolerations"] == [{"key": "gpu", "operator": "Equal", "value": "a100",
                                                 "effect": "NoSchedule"}]
    assert spec["root"]["inputDefinitions"]["parameters"]["image"]["defaultValue"] == cfg.pipeline.image


@pytest.mark.parametrize("nodes,gpus", [(1, 1), (1, 4), (2, 8), (4, 1)])
def test_train_pod_resources(nodes, gpus):
    res = train_pod_resources(nodes, gpus, "8", "16", "48Gi", "64Gi")
    if nodes == 1:
        assert res == {"gpus": gpus, "cpu_request": "8", "cpu_limit": "16", "memory_request": "48Gi",
                       "memory_limit": "64Gi"}
    else:  # the pod only launches and watches the TrainJob: no GPU held for hours
        assert res == {"gpus": 0, **LAUNCHER_RESOURCES}


def test_components_hold_no_logic():
    """Component bodies only import egnet (and stdlib helpers) and call it: no loops, no branches."""
    for path in sorted((REPO / "components").glob("*.py")):
        if path.name == "__init__.py":
            continue
        for fn in [n for n in ast.parse(path.read_text()).body if isinstance(n, ast.FunctionDef)]:
            for node in ast.walk(fn):
                assert not isinstance(node, (ast.For, ast.While, ast.If, ast.Try)), f"{path.name}:{fn.name}"
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    mod = node.module if isinstance(node, ast.ImportFrom) else node.names[0].name
                    assert mod.split(".")[0] in {"egnet", "json", "shutil", "pathlib", "collections"}, mod
            assert len(fn.body) <= 12, f"{path.name}:{fn.name} is not thin"
