"""A private registry: `pipeline.image_pull_secrets` reaches every pod the pipeline creates.

The overlays' own pods get the Secret through k8s/components/image-pull-secret (tests/deploy/test_k8s.py);
the pods the pipeline makes at run time through params.yaml: every KFP step (kfp-kubernetes
``set_image_pull_secrets``, compiled into the pipeline's Kubernetes platform spec) and the
TrainJob / PyTorchJob pods (egnet/pipeline/trainjob.py). None by default.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from egnet.core.config import load_config
from egnet.pipeline import trainjob as tj
from pipelines.nightcity_training import _cluster_settings, compile_pipeline
from tests.support import PARAMS, REPO

SECRETS = ["egnet-pull", "team-registry"]


def executors(path: Path) -> dict[str, dict]:
    _, platform = [d for d in yaml.safe_load_all(path.read_text()) if d]
    return platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


@pytest.mark.kfp
def test_every_step_pulls_with_the_secrets_when_set(tmp_path):
    cfg = load_config(PARAMS, overrides=[f"pipeline.image_pull_secrets=[{', '.join(SECRETS)}]"])
    execs = executors(compile_pipeline(cfg, tmp_path / "p.yaml"))
    spec = [d for d in yaml.safe_load_all((tmp_path / "p.yaml").read_text()) if d][0]
    steps = {name for name in spec["deploymentSpec"]["executors"]}
    assert len(steps) >= 10 and set(execs) == steps
    for name, settings in execs.items():
        assert [s["secretName"] for s in settings["imagePullSecret"]] == SECRETS, name
    # none by default: the committed pipeline has none
    assert load_config(PARAMS).pipeline.image_pull_secrets == ()
    committed = executors(REPO / "pipelines" / "nightcity_training.yaml")
    assert not any("imagePullSecret" in s for s in committed.values())


def test_training_pods_pull_with_the_secrets():
    cfg = load_config(PARAMS, overrides=[f"pipeline.image_pull_secrets=[{SECRETS[0]}]"])
    cluster = _cluster_settings(cfg)
    spec = tj.JobSpec.from_cluster(cluster, name="egnet-train-x", image="registry.example.com/egnet:1",
                                   nodes=3, gpus_per_node=1, args=[])
    assert spec.image_pull_secrets == (SECRETS[0],)
    job = tj.build_trainjob(spec)
    (rj,) = job["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    assert rj["template"]["spec"]["template"]["spec"]["imagePullSecrets"] == [{"name": SECRETS[0]}]
    pj = tj.build_pytorchjob(spec)
    for role in ("Master", "Worker"):
        pod = pj["spec"]["pytorchReplicaSpecs"][role]["template"]["spec"]
        assert pod["imagePullSecrets"] == [{"name": SECRETS[0]}], role
    # without: no field at all (the templates in k8s/training/ have none)
    bare = dataclasses.replace(spec, image_pull_secrets=())
    assert "imagePullSecrets" not in str(tj.build_trainjob(bare)) + str(tj.build_pytorchjob(bare))


def test_the_crds_accept_the_field():
    from tests.support.k8s import PYTORCHJOB_SCHEMA, TRAINJOB_SCHEMA, crd_errors

    cluster = _cluster_settings(load_config(PARAMS, overrides=["pipeline.image_pull_secrets=[egnet-pull]"]))
    spec = tj.JobSpec.from_cluster(cluster, name="egnet-train-x", image="registry.example.com/egnet:1",
                                   nodes=2, gpus_per_node=1, args=[])
    assert crd_errors(tj.build_trainjob(spec), TRAINJOB_SCHEMA) == []
    assert crd_errors(tj.build_pytorchjob(spec), PYTORCHJOB_SCHEMA) == []
