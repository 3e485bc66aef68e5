"""Fixtures of the registry tests: trained models made once per session, their runs on either
MLflow backend store, and cheap runs for tests of registering rather than of models.

- ``registry_models`` (session): two models trained with `egnet train` on the synthetic data
  against the session's sqlite ``mlflow_server`` (``bad``: 1 iteration; ``good``:
  GOOD_ITERATIONS) and ``bad2``, a re-run of the cheap training under its own MLflow run (the
  same weights, a new lineage); each evaluated with `egnet evaluate` (which logs into its run).
- ``world`` (module, parametrised indirectly with ``"sqlite"`` or ``"postgresql"``): a fresh
  registered-model name over those runs as that backend's server sees them: the runs themselves
  on the server they were trained against; on the PostgreSQL-backed one a copy of each run
  (tags, params, test metrics, per-image counts) with its own train and eval dirs pointing at it.
- ``cheap_runs(uri, root, n, prelogged)``: MLflow runs with an untrained checkpoint and a
  hand-written evaluation each.
"""

from __future__ import annotations

import json
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from egnet.evaluation.per_image import PER_IMAGE_COUNTS_FILE
from tests.support import mlflow_env_restored, read_json, tiny_args, train_argv

GOOD_ITERATIONS = 20  # enough to beat a 1-iteration model clearly on the synthetic scenes ...
GOOD_LR = "train.lr=0.01"  # ... at this lr (the tiny profile's 0.02 suits a longer schedule, not 20 steps)
#: the trained models: tag -> iterations
ITERATIONS = {"bad": 1, "good": GOOD_ITERATIONS}


@dataclass
class World:
    uri: str
    name: str
    root: Path                    # <root>/<tag> train dirs, <root>/eval_<tag> eval dirs
    runs: dict[str, str]          # tag -> MLflow run id
    evals: dict[str, dict]        # tag -> metrics.json
    backend: str = "sqlite"
    iterations: dict[str, int] = field(default_factory=lambda: dict(ITERATIONS))  # tag -> trained for

    def args(self, *overrides: str) -> list[str]:
        return tiny_args(f"tracking.uri={self.uri}", *overrides)

    def client(self):
        import mlflow

        return mlflow.MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)

    def aliases(self) -> dict[str, str]:
        return {a: str(v) for a, v in self.client().get_registered_model(self.name).aliases.items()}


@pytest.fixture(scope="session")
def registry_models(mlflow_server, synth_root, split_dir, tmp_path_factory) -> World:
    """The trained and evaluated models (see the module docstring), on the sqlite server."""
    with mlflow_env_restored():
        return _train_and_evaluate(mlflow_server, synth_root, split_dir, tmp_path_factory)


def _train_and_evaluate(mlflow_server, synth_root, split_dir, tmp_path_factory) -> World:
    import mlflow
    from mlflow.entities import Param

    from egnet.cli import main
    from egnet.tracking.runs import LINEAGE_TAGS

    root = tmp_path_factory.mktemp("registry-models")
    uri = mlflow_server.uri
    runs: dict[str, str] = {}
    for tag, iterations in ITERATIONS.items():
        # in-process (a subprocess would pay torch's and MLflow's imports again)
        assert main([*train_argv(synth_root, split_dir, root / tag, f"train.iterations={iterations}", GOOD_LR,
                                 f"tracking.uri={uri}", resume=False)]) == 0
        runs[tag] = (root / tag / "mlflow_run_id").read_text().strip()
    client = mlflow.MlflowClient(uri)
    bad = client.get_run(runs["bad"])
    rerun = client.create_run(bad.info.experiment_id, run_name="bad-rerun",
                              tags={k: bad.data.tags[k] for k in LINEAGE_TAGS if k in bad.data.tags})
    client.log_batch(rerun.info.run_id, params=[Param(k, v) for k, v in bad.data.params.items()])
    client.set_terminated(rerun.info.run_id)
    (root / "bad2").mkdir()
    shutil.copy(root / "bad" / "model.pt", root / "bad2" / "model.pt")
    (root / "bad2" / "mlflow_run_id").write_text(rerun.info.run_id)
    runs["bad2"] = rerun.info.run_id
    w = World(uri, "", root, runs, {})
    for tag in runs:
        assert main(["evaluate", "--data", str(synth_root), "--split", str(split_dir),
                     "--model", str(root / tag), "--out", str(root / f"eval_{tag}"), *w.args()]) == 0
        w.evals[tag] = read_json(root / f"eval_{tag}" / "metrics.json")
    print({t: (round(m["mIoU"], 4), round(m["mEF1"], 4)) for t, m in w.evals.items()})
    return w


@pytest.fixture(scope="module")
def world(request, registry_models, tmp_path_factory) -> World:
    """A fresh registered model over the session's trained runs, on the backend ``request.param``."""
    name = "mlflow_server" if request.param == "sqlite" else "mlflow_postgres_server"
    server = request.getfixturevalue(name)
    return world_on(server, registry_models, tmp_path_factory.mktemp(f"registry-{request.param}"))


def world_on(server, models: World, root: Path) -> World:
    """A fresh registered-model name over ``models``' runs as ``server`` sees them (module docstring)."""
    name = f"egnet-test-{uuid.uuid4().hex[:8]}"
    if server.uri == models.uri:
        return World(models.uri, name, models.root, dict(models.runs), models.evals, server.backend)
    import mlflow
    from mlflow.entities import Metric, Param

    src = mlflow.MlflowClient(models.uri)
    dst = mlflow.MlflowClient(server.uri)
    exp = dst.create_experiment(f"registry-{uuid.uuid4().hex[:8]}")
    runs: dict[str, str] = {}
    for tag, run_id in models.runs.items():
        old = src.get_run(run_id)
        keep = {k: v for k, v in old.data.tags.items() if not k.startswith("mlflow.")}
        run = dst.create_run(exp, run_name=f"{tag}-copy", tags=keep)
        metrics = [Metric(k, v, 0, 0) for k, v in old.data.metrics.items() if k.startswith("test_")]
        params = [Param(k, v) for k, v in old.data.params.items()]
        dst.log_batch(run.info.run_id, metrics=metrics, params=params)
        # the gate's evidence: the per-image counts `egnet evaluate` logged under evaluation/
        counts = models.root / f"eval_{tag}" / PER_IMAGE_COUNTS_FILE
        dst.log_artifact(run.info.run_id, str(counts), "evaluation")
        dst.set_terminated(run.info.run_id)
        runs[tag] = run.info.run_id
        (root / tag).mkdir(parents=True)
        shutil.copy(models.root / tag / "model.pt", root / tag / "model.pt")
        (root / tag / "mlflow_run_id").write_text(run.info.run_id + "\n")
        ev = root / f"eval_{tag}"
        ev.mkdir()
        shutil.copy(models.root / f"eval_{tag}" / "metrics.json", ev / "metrics.json")
        shutil.copy(counts, ev / PER_IMAGE_COUNTS_FILE)
        source = read_json(models.root / f"eval_{tag}" / "model_source.json")
        (ev / "model_source.json").write_text(json.dumps({**source, "run_id": run.info.run_id,
                                                          "logged_to_run": run.info.run_id}))
    return World(server.uri, name, root, runs, models.evals, server.backend)


@pytest.fixture(scope="session")
def cheap_runs(make_checkpoint):
    """``cheap_runs(uri, root, n, prelogged) -> (experiment id, runs)`` (see ``make_cheap_runs``)."""
    return lambda uri, root, n, prelogged: make_cheap_runs(make_checkpoint, uri, root, n, prelogged)


def make_cheap_runs(make_checkpoint, uri: str, root: Path, n: int, prelogged: int) -> tuple[str, list[dict]]:
    """``n`` MLflow runs, each with a train dir (a copied untrained checkpoint) and an eval dir
    with its own test mIoU (distinct, in a shuffled order) and the same mEF1. The first
    ``prelogged`` runs get the checkpoint logged as their READY logged model ``model``."""
    import mlflow
    from mlflow.entities import LoggedModelStatus

    from egnet.tracking.registered import CHECKPOINT_EXTRA_FILE, MODEL_ARTIFACT

    assert n % 5, "n must not be a multiple of 5 (the test mIoU values would repeat)"
    client = mlflow.MlflowClient(uri)
    exp = client.create_experiment(f"race-{uuid.uuid4().hex[:8]}")
    ckpt = make_checkpoint(root / "ckpt", 0, "model.variant=no_exposure_stream")  # one stream: half the bytes
    extra = root / CHECKPOINT_EXTRA_FILE
    shutil.copy(ckpt, extra)
    model_cfg = {"variant": "no_exposure_stream", "backbone": "resnet18"}
    # a permutation of 0..n-1 (n coprime to 5): no ties
    mious = [0.30 + 0.01 * ((5 * i) % n) for i in range(n)]
    runs = []
    for i in range(n):
        run = client.create_run(exp, run_name=f"racer-{i}", tags={
            "git_commit": f"{i:040x}", "data_version": "content:race", "params_hash": f"hash{i}"})
        client.set_terminated(run.info.run_id)
        if i < prelogged:
            lm = client.create_logged_model(exp, name=MODEL_ARTIFACT, source_run_id=run.info.run_id)
            client.log_model_artifact(lm.model_id, str(extra), "extra_files")
            client.finalize_logged_model(lm.model_id, LoggedModelStatus.READY)
        train, ev = root / f"train{i}", root / f"eval{i}"
        train.mkdir()
        ev.mkdir()
        shutil.copy(ckpt, train / "model.pt")
        (train / "mlflow_run_id").write_text(run.info.run_id + "\n")
        (ev / "metrics.json").write_text(json.dumps({"mIoU": mious[i], "mEF1": 0.8, "num_images": 10}))
        source = {"run_id": run.info.run_id, "model_config": model_cfg}
        (ev / "model_source.json").write_text(json.dumps(source))
        runs.append({"run_id": run.info.run_id, "train": train, "eval": ev, "mIoU": mious[i]})
    return exp, runs
