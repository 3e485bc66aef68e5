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
from egnet.pipeline.steps import train_pod_resources
from pipelines.nightcity_training import COMPILED, compile_pipeline
from tests.support import PARAMS, REPO

STEPS_USING_PVC = {"resolve-data", "materialise", "validate", "split", "stats", "drift", "train",
                   "evaluate"}


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
    assert set(tasks) == {"resolve-data", "materialise", "validate", "split", "stats", "drift",
                          "train-resources", "train", "evaluate", "register", "champion-check",
                          "condition-branches-2", "condition-3", "evaluate-champion", "condition-4",
                          "champion-ready", "gate", "promote", "condition-5", "exit-handler-1", "finalize"}
    deps = {name: set(t.get("dependentTasks", [])) for name, t in tasks.items()}
    assert deps["materialise"] == {"resolve-data"}
    assert deps["validate"] == {"materialise"}
    assert deps["split"] == {"validate"}
    assert deps["drift"] == {"validate"}
    # training waits for the drift gate (drift.action: fail stops the run before any GPU is held)
    assert {"split", "stats", "drift", "train-resources"} <= deps["train"]
    assert {"train", "split"} <= deps["evaluate"]
    assert deps["register"] == {"evaluate", "train"}
    assert deps["gate"] == {"register", "condition-branches-2"}  # after evaluate-champion, when it runs
    # promote runs inside the condition on the gate's output
    cond = tasks["condition-5"]
    assert cond["triggerPolicy"]["condition"] == \
        "inputs.parameter_values['pipelinechannel--gate-Output'] == 'promote'"
    assert set(cond["dependentTasks"]) == {"gate", "register"}


@pytest.mark.kfp
def test_caching_off_where_outputs_depend_on_the_world(compiled):
    spec, _ = compiled
    tasks = all_tasks(spec)
    # resolve-data: a branch moves; drift: the champion moves; finalize: the exit handler
    for name in ("resolve-data", "drift", "train", "register", "gate", "promote", "finalize"):
        assert not tasks[name]["cachingOptions"].get("enableCache", False), name
    # materialise is cached on the resolved commit, so the data steps after it are too
    for name in ("materialise", "validate", "split", "stats", "train-resources", "evaluate"):
        assert tasks[name]["cachingOptions"]["enableCache"] is True, name


@pytest.mark.kfp
def test_train_task_gpu_and_resources(compiled):
    spec, k8s = compiled
    ex = executor(spec, "train")
    res = ex["resources"]
    # accelerator, CPU/memory and image from the train-resources step (no GPU when a multi-node job trains)
    out = "{{{{$.inputs.parameters['pipelinechannel--train-resources-{}']}}}}".format
    assert res["accelerator"] == {"resourceType": out("accelerator"), "resourceCount": out("gpus")}
    for field in ("cpu_request", "cpu_limit", "memory_request", "memory_limit"):
        key = "resource" + "".join(w.capitalize() for w in field.split("_"))
        assert res[key] == out(field)
    assert ex["image"] == out("image")
    inputs = all_tasks(spec)["train"]["inputs"]["parameters"]
    assert inputs["pipelinechannel--train-resources-gpus"]["taskOutputParameter"] == {
        "outputParameterKey": "gpus", "producerTask": "train-resources"}
    assert all_tasks(spec)["train"]["retryPolicy"]["maxRetryCount"] == 2
    # the run id the TrainJob name derives from
    assert inputs["run_id"]["runtimeValue"]["constant"] == "{{$.pipeline_job_uuid}}"

    train = k8s["exec-train"]
    # GPU node selector and tolerations from train-resources too (none for a launcher)
    assert train["nodeSelector"] == {"nodeSelectorJson": {"taskOutputParameter": {
        "outputParameterKey": "node_selector", "producerTask": "train-resources"}}}
    assert train["tolerations"] == [{"tolerationJson": {"taskOutputParameter": {
        "outputParameterKey": "tolerations", "producerTask": "train-resources"}}}]
    assert train["emptyDirMounts"] == [{"volumeName": "dshm", "mountPath": "/dev/shm", "medium": "Memory",
                                        "sizeLimit": "16Gi"}]
    secrets = {s["secretName"]: s for s in train["secretAsEnv"]}
    assert {(e["secretKey"], e["envVar"]) for e in secrets["egnet-s3"]["keyToEnv"]} == {
        ("AWS_ACCESS_KEY_ID", "AWS_ACCESS_KEY_ID"), ("AWS_SECRET_ACCESS_KEY", "AWS_SECRET_ACCESS_KEY")}
    assert secrets["egnet-s3"]["optional"] is False
    assert secrets["egnet-mlflow"]["optional"] is True
    required, optional = train["configMapAsEnv"]
    assert required["configMapName"] == optional["configMapName"] == "egnet-endpoints"
    assert "MLFLOW_TRACKING_URI" in {e["envVar"] for e in required["keyToEnv"]} and not required["optional"]
    assert optional["optional"] is True
    assert train["pvcMount"] == [{"constant": "egnet-data", "mountPath": "/data",
                                  "pvcNameParameter": {"runtimeValue": {"constant": "egnet-data"}}}]
    assert train["podMetadata"]["labels"]["egnet.io/pipeline-access"] == "true"
    # the launcher's name and uid: the TrainJob's ownerReference
    assert {(f["name"], f["fieldPath"]) for f in train["fieldPathAsEnv"]} == {
        ("EGNET_POD_NAME", "metadata.name"), ("EGNET_POD_UID", "metadata.uid")}


@pytest.mark.kfp
def test_evaluate_on_one_gpu(compiled):
    spec, k8s = compiled
    ex = executor(spec, "evaluate")
    res = ex["resources"]
    assert (res["accelerator"]["resourceType"], res["accelerator"]["count"]) == ("nvidia.com/gpu", "1")
    assert (res["resourceCpuRequest"], res["resourceCpuLimit"]) == ("8", "16")
    assert (res["resourceMemoryRequest"], res["resourceMemoryLimit"]) == ("48Gi", "64Gi")
    assert ex["image"] == "{{$.inputs.parameters['pipelinechannel--image']}}"   # the CUDA image
    assert k8s["exec-evaluate"]["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists",
                                                    "effect": "NoSchedule"}]
    assert k8s["exec-evaluate"]["nodeSelector"]["labels"] == {"nvidia.com/gpu.present": "true"}
    assert k8s["exec-evaluate"]["emptyDirMounts"]


@pytest.mark.kfp
def test_each_step_gets_only_what_it_uses(compiled):
    spec, k8s = compiled
    for name in ("resolve-data", "materialise", "validate", "split", "stats", "drift", "train-resources",
                 "train", "evaluate", "register", "gate", "promote", "finalize"):
        cfg = k8s.get(f"exec-{name}", {})
        assert bool(cfg.get("pvcMount")) == (name in STEPS_USING_PVC), name
        s3 = [s for s in cfg.get("secretAsEnv", []) if s["secretName"] == "egnet-s3"]
        # register / gate / promote: S3 keys for the registry lock's lease
        assert bool(s3) == (name in ("materialise", "train", "register", "gate", "promote")), name
        talks = name in ("materialise", "drift", "train", "evaluate", "register", "gate", "promote",
                         "finalize")
        access = cfg.get("podMetadata", {}).get("labels", {}).get("egnet.io/pipeline-access")
        assert (access == "true") == talks, name
        assert bool(cfg.get("tolerations")) == (name in ("train", "evaluate")), name
        # every step runs as the image's non-root user
        assert cfg["securityContext"] == {"runAsUser": "10001", "runAsGroup": "10001",
                                          "runAsNonRoot": True}, name
        ex = executor(spec, name)
        assert "pip install" not in " ".join(ex["command"]), name
        if name not in ("train", "evaluate"):   # the CPU image (`<image>-cpu` unless pipeline.cpu_image)
            assert ex["image"] == "{{$.inputs.parameters['pipelinechannel--cpu_image']}}", name


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
    want = [{"key": "gpu", "operator": "Equal", "value": "a100", "effect": "NoSchedule"}]
    assert k8s["exec-evaluate"]["tolerations"] == want
    # the train pod's come from train-resources, which gets them as a constant
    assert all_tasks(spec)["train-resources"]["inputs"]["parameters"]["tolerations"]["runtimeValue"][
        "constant"] == want
    assert spec["root"]["inputDefinitions"]["parameters"]["image"]["defaultValue"] == cfg.pipeline.image


TRAINING = {"cpu_request": "8", "cpu_limit": "16", "memory_request": "48Gi", "memory_limit": "64Gi"}
LAUNCHER = {"cpu_request": "250m", "cpu_limit": "1", "memory_request": "512Mi", "memory_limit": "2Gi"}
GPU_NODE = {"nvidia.com/gpu.present": "true"}
GPU_TOLERATION = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]


@pytest.mark.parametrize("nodes,gpus", [(1, 1), (1, 4), (2, 8), (4, 1), (1, 0)])
def test_train_pod_resources(nodes, gpus):
    res = train_pod_resources(nodes, gpus, training=TRAINING, launcher=LAUNCHER, accelerator="nvidia.com/gpu",
                              image="reg/egnet:1", cpu_image="reg/egnet:1-cpu", node_selector=GPU_NODE,
                              tolerations=GPU_TOLERATION)
    # strings only: KFP resolves resource placeholders from STRING values
    assert all(isinstance(res[k], str) for k in ("accelerator", "gpus", *TRAINING))
    if nodes == 1 and gpus:
        assert res == {"accelerator": "nvidia.com/gpu", "gpus": str(gpus), **TRAINING, "image": "reg/egnet:1",
                       "node_selector": GPU_NODE, "tolerations": GPU_TOLERATION}
    elif nodes == 1:   # CPU training in the pod
        assert res == {"accelerator": "", "gpus": "0", **TRAINING, "image": "reg/egnet:1-cpu",
                       "node_selector": {}, "tolerations": []}
    else:  # the pod only launches and watches the TrainJob: no GPU held for hours, any node
        assert res == {"accelerator": "", "gpus": "0", **LAUNCHER, "image": "reg/egnet:1-cpu",
                       "node_selector": {}, "tolerations": []}


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
