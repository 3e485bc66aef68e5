"""Like with like, against a real `mlflow server` (sqlite, artifacts on moto S3): a champion tested
on data version A, a challenger on B. `egnet promote` refuses without data, naming both versions;
`--data B --split S` re-evaluates the champion on B as its own MLflow run, recorded on the version
and reused afterwards (also by the pipeline's champion-check step); the decision names both.

Untrained models (their numbers do not matter here, the evidence and the wiring do).
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import numpy as np
import pytest

from egnet.cli import main
from tests.support import PARAMS, TINY, tiny_args

pytestmark = [pytest.mark.slow, pytest.mark.mlflow, pytest.mark.s3]


def args(uri: str, *extra: str) -> list[str]:
    return tiny_args("evaluate.num_qualitative=1", f"tracking.uri={uri}", *extra)


@pytest.fixture(scope="module")
def data_b(tmp_path_factory) -> tuple[Path, Path]:
    """A second synthetic data version (other scenes) and its official split."""
    from egnet.data.synth import synthesize

    root = tmp_path_factory.mktemp("data-b") / "nightcity"
    synthesize(root, num=10, seed=23, size=(256, 128))
    split = root.parent / "split"
    assert main(["data", "split", str(root), "--out", str(split), *tiny_args()]) == 0
    return root, split


def test_champion_on_other_test_data_is_compared_like_with_like(mlflow_server, synth_root, split_dir, data_b,
                                                                 make_checkpoint, tmp_path, capsys) -> None:
    import mlflow

    from egnet.pipeline import steps
    from egnet.registry.like_with_like import REEVALUATION_OF, reevaluation_key

    uri = mlflow_server.uri
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    exp = client.create_experiment(f"lwl-{uuid.uuid4().hex[:8]}")
    name = f"egnet-lwl-{uuid.uuid4().hex[:8]}"
    data = {"a": (synth_root, split_dir), "b": data_b}
    runs = {}
    for tag, seed in (("a", 1), ("b", 2)):
        runs[tag] = client.create_run(exp, run_name=f"model-{tag}", tags={
            "git_commit": "0" * 40, "data_version": f"content:train-{tag}", "params_hash": "h"}).info.run_id
        client.set_terminated(runs[tag])
        make_checkpoint(tmp_path / tag, seed, run_id=runs[tag])
        root, split = data[tag]
        assert main(["evaluate", "--data", str(root), "--split", str(split), "--model", str(tmp_path / tag),
                     "--out", str(tmp_path / f"eval_{tag}"), *args(uri)]) == 0
        assert main(["register", "--train-dir", str(tmp_path / tag), "--eval-dir",
                     str(tmp_path / f"eval_{tag}"), "--name", name,
                     *args(uri, "register.serialization_format=pickle")]) == 0
        if tag == "a":
            assert main(["promote", "--name", name, *args(uri)]) == 0       # first champion: v1
    dv = {t: client.get_run(r).data.tags["test_data_version"] for t, r in runs.items()}
    assert dv["a"] != dv["b"]
    pipeline_conf = (str(PARAMS), TINY, ["evaluate.num_qualitative=1", f"tracking.uri={uri}",
                                         f"register.model_name={name}"])

    # without the challenger's data: refused, exit 1, both data versions named, recorded on v2
    capsys.readouterr()
    assert main(["promote", "--name", name, *args(uri)]) == 1
    err = capsys.readouterr().err
    assert dv["a"] in err and dv["b"] in err and "--data DATA --split SPLIT" in err
    refused = json.loads(client.get_model_version(name, "2").tags["last_decision"])
    assert refused["outcome"] == "refused" and dv["a"] in refused["decided_by"]
    assert steps.champion_check("2", *pipeline_conf) == "reevaluate"

    # the wrong data: refused before any evaluation
    assert main(["promote", "--name", name, "--data", str(synth_root), "--split", str(split_dir),
                 *args(uri)]) == 1
    assert f"challenger's test data is {dv['b']}" in capsys.readouterr().err

    # with B: the champion is re-evaluated as its own run, recorded on v1; a dry run moves nothing
    code = main(["promote", "--name", name, "--dry-run", "--data", str(data_b[0]), "--split", str(data_b[1]),
                 *args(uri)])
    out = capsys.readouterr().out
    assert code in (0, 1) and "re-evaluating champion v1" in out
    assert "| metric | champion v1 | challenger v2 |" in out and out.count("\nrule ") == 3
    (reeval,) = client.search_runs([exp], f"tags.`{REEVALUATION_OF}` = '{name}/1'")
    assert reeval.data.tags["test_data_version"] == dv["b"]
    assert reeval.data.tags["egnet.source_run_id"] == runs["a"]
    assert "test_mIoU" in reeval.data.metrics
    assert {f.path for f in client.list_artifacts(reeval.info.run_id, "evaluation")} >= {
        "evaluation/metrics.json", "evaluation/per_image_counts.npz"}
    recorded = json.loads(client.get_model_version(name, "1").tags[reevaluation_key(dv["b"])])
    assert recorded["run_id"] == reeval.info.run_id and recorded["test_data_version"] == dv["b"]
    assert {a: str(v) for a, v in client.get_registered_model(name).aliases.items()} == {
        "champion": "1", "challenger": "2"}

    # the recorded re-evaluation is reused: the pipeline skips its step, promote needs no data
    assert steps.champion_check("2", *pipeline_conf) == "ready"
    code = main(["promote", "--name", name, *args(uri)])
    assert len(client.search_runs([exp], f"tags.`{REEVALUATION_OF}` = '{name}/1'")) == 1
    d = json.loads(client.get_model_version(name, "2").tags["last_decision"])
    assert d["outcome"] == ("promoted" if code == 0 else "refused")
    assert d["test_data"]["challenger"] == dv["b"] and d["test_data"]["champion_registered"] == dv["a"]
    assert d["test_data"]["champion_evidence"]["kind"] == "re-evaluation"
    assert d["test_data"]["champion_evidence"]["run_id"] == reeval.info.run_id
    n_test = len((data_b[1] / "test.txt").read_text().split())
    assert d["comparison"]["num_images"] == n_test == d["test_data"]["num_images"]
    assert [r["rule"] for r in d["rules"]] == ["mIoU", "mEF1", "EF1 per bin"]
    assert d["decided_by"] == ("all rules passed" if code == 0 else d["failed_rules"][0])
    # the bootstrap's champion numbers are the re-evaluation's, its challenger's v2's registered ones
    assert d["comparison"]["champion"]["mIoU"] == pytest.approx(reeval.data.metrics["test_mIoU"], abs=1e-6)
    registered = float(d["candidate_metrics"]["mIoU"])
    assert d["comparison"]["challenger"]["mIoU"] == pytest.approx(registered, abs=1e-6)
    assert np.isfinite(d["comparison"]["mIoU"]["lo"])
