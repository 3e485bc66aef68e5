"""The compiled pipeline's like-with-like steps: champion-check, evaluate-champion (only when the
champion was tested on other data, on a GPU like evaluate), champion-ready, and the gate waiting
for whichever branch ran. Read from the spec the KFP backend reads (real kfp compiler)."""

from __future__ import annotations

import pytest
import yaml

from egnet.core.config import load_config
from pipelines.nightcity_training import compile_pipeline
from tests.support import PARAMS

pytestmark = pytest.mark.kfp


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> tuple[dict, dict]:
    out = compile_pipeline(load_config(PARAMS), tmp_path_factory.mktemp("p") / "p.yaml")
    spec, platform = [d for d in yaml.safe_load_all(out.read_text()) if d]
    return spec, platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


def tasks(spec: dict) -> dict[str, dict]:
    out = dict(spec["root"]["dag"]["tasks"])
    for comp in spec["components"].values():
        out.update(comp.get("dag", {}).get("tasks", {}))
    return out


def test_evaluate_champion_runs_only_when_the_check_says_so(compiled) -> None:
    spec, _ = compiled
    t = tasks(spec)
    assert t["champion-check"]["dependentTasks"] == ["register"]
    branch = {name: t[name]["triggerPolicy"]["condition"] for name in ("condition-3", "condition-4")}
    check = "inputs.parameter_values['pipelinechannel--champion-check-Output']"
    assert branch["condition-3"] == f"{check} == 'reevaluate'"
    assert branch["condition-4"] == f"!({branch['condition-3']})"
    # evaluate-champion sits in the first branch, champion-ready in the Else branch
    assert "evaluate-champion" in spec["components"]["comp-condition-3"]["dag"]["tasks"]
    assert "champion-ready" in spec["components"]["comp-condition-4"]["dag"]["tasks"]
    # the gate takes the branch's output (dsl.OneOf), so it waits for evaluate-champion when that runs
    gate_in = t["gate"]["inputs"]["parameters"]["champion_evaluation"]["taskOutputParameter"]
    assert gate_in["producerTask"] == "condition-branches-2"
    assert "condition-branches-2" in t["gate"]["dependentTasks"]
    ev_in = t["evaluate-champion"]["inputs"]
    assert {"data", "split"} <= set(ev_in["artifacts"]) and "version" in ev_in["parameters"]


def test_evaluate_champion_gets_what_evaluate_gets(compiled) -> None:
    spec, k8s = compiled
    ex = spec["deploymentSpec"]["executors"]
    ev = ex["exec-evaluate"]["container"]["resources"]
    evc = ex["exec-evaluate-champion"]["container"]["resources"]
    assert evc == ev and evc["accelerator"]["count"] == "1"
    for key in ("tolerations", "nodeSelector", "emptyDirMounts", "pvcMount", "configMapAsEnv"):
        assert k8s["exec-evaluate-champion"][key] == k8s["exec-evaluate"][key], key
    secrets = k8s["exec-evaluate-champion"].get("secretAsEnv", [])
    assert not [s for s in secrets if s["secretName"] == "egnet-s3"]
    for name in ("champion-check", "champion-ready"):
        assert "accelerator" not in ex[f"exec-{name}"]["container"].get("resources", {}), name
        assert not k8s.get(f"exec-{name}", {}).get("pvcMount"), name
    assert k8s["exec-champion-check"]["podMetadata"]["labels"]["egnet.io/pipeline-access"] == "true"
    t = tasks(spec)
    for name in ("champion-check", "evaluate-champion", "champion-ready"):  # they read the moving registry
        assert not t[name]["cachingOptions"].get("enableCache", False), name
