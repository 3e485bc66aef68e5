"""`egnet pipeline run --local`: the real pipeline function under kfp.local, end to end.

Every step runs as a subprocess of this venv (SubprocessRunner(use_venv=False)), exactly
the component code the cluster runs. Tiny on purpose: 12 synthetic scenes at 256x128 and
10 training iterations of the tiny profile; the numbers are not the point, the wiring is: a
registered model version in MLflow whose metrics match the evaluation, the gate's decision,
the KFP Metrics artifact carrying the same values as metrics.json, and what the user reads:
one line per step, then the summary with the links to the run and the version; every
step's full output in the run's logs/ folder, none of it on the console.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from egnet.cli import main
from tests.support import PARAMS, tiny_args

#: on the tiny profile
OVERRIDES = ["train.iterations=10", "train.checkpoint_every=10", "train.eval_size=[256,128]",
             "evaluate.num_qualitative=1"]


def executor_output(run_dir: Path, task: str) -> dict:
    return json.loads((run_dir / task / "executor_output.json").read_text())


@pytest.mark.slow
@pytest.mark.kfp
def test_local_pipeline_registers_a_model_version(tmp_path, monkeypatch, capsys):
    from egnet.data.synth import synthesize

    data = tmp_path / "nightcity"
    synthesize(data, num=12, seed=5, size=(256, 128))
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    work = tmp_path / "work"
    code = main(["pipeline", "run", "--local", "--data", str(data), "--workdir", str(work),
                 *tiny_args(*OVERRIDES)])
    out = capsys.readouterr().out
    assert code == 0, out[-3000:]

    (run_dir,) = (work / "kfp").iterdir()
    metrics = json.loads((run_dir / "evaluate" / "evaluation" / "metrics.json").read_text())
    reg = json.loads((run_dir / "register" / "registration").read_text())
    assert (reg["name"], reg["version"]) == ("egnet-nightcity", "1")

    # MLflow: the version exists, carries the evaluation's numbers and lineage, and (first
    # version, no champion to beat) the gate promoted it
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    mv = client.get_model_version("egnet-nightcity", "1")
    assert mv.run_id == reg["run_id"] == (run_dir / "train" / "model" / "mlflow_run_id").read_text().strip()
    assert float(mv.tags["test_mIoU"]) == pytest.approx(metrics["mIoU"])
    assert mv.tags["data_version"].startswith(("content:", "dvc:"))
    # the gate's promotion sets `champion` and leaves `challenger` on the decided version (docs/registry.md)
    aliases = client.get_registered_model("egnet-nightcity").aliases
    assert {a: str(v) for a, v in aliases.items()} == {"champion": "1", "challenger": "1"}
    tags = client.get_run(reg["run_id"]).data.tags
    assert tags["params_hash"]
    # cross-links: the KFP run (kfp.local's run id is a number) and, from the exit handler, its final state
    assert tags["kfp_run_id"] and tags["kfp_final_state"] == "SUCCEEDED"
    assert tags["kfp_pipeline_version"] == "local"
    assert executor_output(run_dir, "gate")["parameterValues"]["Output"] == "promote"
    assert "MLflow run: `" + reg["run_id"] + "`" in (run_dir / "register" / "links").read_text()
    # the ClassificationMetrics artifact: 19 classes, the pixel counts of confusion.npy over all bins
    import numpy as np

    confusion = executor_output(run_dir, "evaluate")["artifacts"]["confusion"]["artifacts"][0]["metadata"]
    matrix = confusion["confusionMatrix"]
    assert [a["displayName"] for a in matrix["annotationSpecs"]] == list(metrics["IoU"])
    assert len(metrics["IoU"]) == 19
    counts = np.load(run_dir / "evaluate" / "evaluation" / "confusion.npy").sum(axis=0)[:, :19]
    assert [r["row"] for r in matrix["rows"]] == counts.tolist()
    assert (run_dir / "promote").is_dir()                       # ran inside dsl.If

    # the KFP Metrics artifact holds the same values as metrics.json
    logged = executor_output(run_dir, "evaluate")["artifacts"]["metrics"]["artifacts"][0]["metadata"]
    assert logged["test_mIoU"] == pytest.approx(metrics["mIoU"])
    assert logged["test_mEF1"] == pytest.approx(metrics["mEF1"])
    # empty bins: not logged
    ef1 = {f"test_EF1_bin{i}": v for i, v in enumerate(metrics["EF1"]) if v is not None}
    assert {k: v for k, v in logged.items() if k.startswith("test_EF1_bin")} == pytest.approx(ef1)
    train_logged = executor_output(run_dir, "train")["artifacts"]["metrics"]["artifacts"][0]["metadata"]
    assert train_logged["iterations"] == 10
    # reports: Markdown (validation), HTML with embedded charts (stats, evaluation)
    assert (run_dir / "validate" / "report").read_text().startswith("# Data validation: ok")
    assert "data:image/png;base64," in (run_dir / "evaluate" / "report").read_text()
    assert "data:image/png;base64," in (run_dir / "stats" / "report").read_text()

    # what a user reads: a line per step in the order they ran, then the summary, nothing else
    lines = out.splitlines()
    step_lines = [m.groups() for m in map(re.compile(r"^\[\s*(\d+)/16\] (\S+)\s+(\S+)").match, lines) if m]
    assert [n for n, _, _ in step_lines] == [str(i) for i in range(1, 17)]
    status = {s: st for _, s, st in step_lines}
    assert set(status) == {"resolve-data", "materialise", "validate", "split", "stats", "drift", "train",
                           "train-resources", "evaluate", "register", "champion-check", "evaluate-champion",
                           "champion-ready", "gate", "promote", "finalize"}
    # no champion yet: nothing to re-evaluate, the dsl.Else branch ran
    assert status.pop("evaluate-champion") == "skipped", out
    assert set(status.values()) == {"ok"}, out
    evaluate_line = next(line for line in lines if "] evaluate " in line)
    assert evaluate_line.endswith(f"test mIoU {metrics['mIoU']:.4f}, mEF1 {metrics['mEF1']:.4f}")
    assert lines.index("=== summary ===") > lines.index(next(line for line in lines if "] promote " in line))
    assert len(lines) < 40 and "executor_input" not in out and " - INFO - " not in out
    experiment = client.get_run(reg["run_id"]).info.experiment_id
    assert "model version   egnet-nightcity v1 (challenger, champion)" in out
    assert f"test mIoU       {metrics['mIoU']:.4f}" in out
    assert f"http://127.0.0.1:5000/#/experiments/{experiment}/runs/{reg['run_id']}" in out
    assert "http://127.0.0.1:5000/#/models/egnet-nightcity/versions/1" in out
    assert lines[-2:] == ["look            make ui, then open the links above",
                          f"                (without make: mlflow ui --backend-store-uri {uri} --port 5000)"]
    # ... and every step's full output is in its log, named in the summary
    logs = run_dir / "logs"
    assert f"step logs       {logs.relative_to(tmp_path)}/" in out
    assert {p.stem for p in logs.glob("*.log")} == set(status) | {"pipeline"}
    assert "Got executor_input" in (logs / "train.log").read_text()
    assert client.get_run(reg["run_id"]).data.tags["egnet_version"]


def test_run_requires_local(capsys):
    assert main(["pipeline", "run", "--params", str(PARAMS)]) == 2
    assert "only --local" in capsys.readouterr().err


class _Artifact:
    """What a KFP component receives for an output artifact: a path and a metadata dict."""

    def __init__(self, path: Path):
        self.path, self.metadata = str(path), {}


@pytest.mark.dvc
def test_materialise_step_fetches_a_dvc_revision_once(tmp_path, monkeypatch):
    """data_repo + commit: fetched into data_cache once, reused by the next run; data_path: used as is."""
    import shutil

    from egnet.data import versioning
    from egnet.data.synth import synthesize
    from egnet.data.versioning import dvc_add
    from egnet.pipeline import steps as kfp_steps
    from tests.support.dvc import commit, dir_md5, init_repo, isolate_inprocess, tool_env

    isolate_inprocess(monkeypatch, tmp_path)
    env = tool_env(tmp_path)
    repo = init_repo(tmp_path / "repo", env)
    data = repo / "data" / "nightcity"
    synthesize(data, num=4, seed=2, size=(128, 64), workers=1)
    dvc_add(data)
    rev = commit(repo, env, "data v1")
    md5 = dir_md5(data)

    cache = tmp_path / "pvc" / "versions"
    first = kfp_steps.materialise_data(str(repo), rev, "data/nightcity", "", str(cache),
                                       _Artifact(tmp_path / "a1"))
    # the data_version tag is the commit; the copy's marker keeps DVC's hash
    assert first["data_version"] == f"git:{rev}" and first["commit"] == rev
    assert versioning.read_marker(first["root"])["md5"] == md5
    assert Path(first["root"]).parent.parent == cache.resolve() and Path(first["root"]).name == rev
    assert kfp_steps.data_root(tmp_path / "a1") == first["root"]

    def no_fetch(*a, **k):
        raise AssertionError("fetched again")

    monkeypatch.setattr(versioning, "materialise", no_fetch)
    second = kfp_steps.materialise_data(str(repo), rev, "data/nightcity", "", str(cache),
                                        _Artifact(tmp_path / "a2"))
    assert second == first

    copy = tmp_path / "pvc" / "nightcity"
    shutil.copytree(data, copy)
    art = _Artifact(tmp_path / "a3")
    here = kfp_steps.materialise_data("", "", "data/nightcity", str(copy), str(cache), art)
    assert here["root"] == str(copy.resolve()) and here["data_version"].startswith("content:")
    assert art.metadata["data_version"] == here["data_version"]
