"""`egnet register`: log a trained model into its MLflow run and register it as a version.

Conventions (docs/registry.md): registered model ``egnet-nightcity``; MLflow 3
aliases only (``challenger`` = newest registered candidate, ``champion`` = serving,
``previous-champion`` = the one before, for rollback), never stages. Versions carry
tags ``run_id``, ``git_commit``, ``data_version``, ``params_hash`` (copied from the
training run), ``test_mIoU``, ``test_mEF1``, ``test_data_version`` (from the
evaluation), and one ``promotion.<UTC time>`` tag per decision plus ``last_decision``
(:mod:`egnet.registry.promotion`). Registration is idempotent and serialised with
promotion by the registry lock (:mod:`egnet.registry.locking`).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from egnet.core.config import Config
from egnet.core.errors import DataError
from egnet.core.files import read_json, write_json
from egnet.core.storage import Location
from egnet.registry.locking import NO_LOCK, LockSpec, lock_spec, registry_lock
from egnet.tracking.client import client_for, mlflow_error, mlflow_errors
from egnet.tracking.registered import CHALLENGER, CHECKPOINT_EXTRA_FILE, MODEL_ARTIFACT
from egnet.tracking.runs import LINEAGE_TAGS
from egnet.training.checkpoint import FINAL_NAME, RUN_ID_FILE

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- register


def find_version(client: Any, name: str, run_id: str) -> Any | None:
    """The registered version of ``name`` made from ``run_id`` (the oldest if several), or None."""
    from mlflow.exceptions import MlflowException

    try:
        found = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise
    return min(found, key=lambda mv: int(mv.version)) if found else None


def find_logged_model(client: Any, run: Any) -> Any | None:
    """A READY logged model named ``model`` of ``run`` that carries the egnet checkpoint, or None."""
    import mlflow

    found = client.search_logged_models(
        experiment_ids=[run.info.experiment_id],
        filter_string=f"source_run_id = '{run.info.run_id}' AND name = '{MODEL_ARTIFACT}'",
    )
    # status filtered here: the store's `status = 'READY'` filter matches nothing in MLflow 3.17
    ready = [m for m in found if str(getattr(m.status, "value", m.status)) == "READY"]
    for lm in sorted(ready, key=lambda m: m.creation_timestamp):
        files = mlflow.artifacts.list_artifacts(
            artifact_uri=f"{lm.artifact_location.rstrip('/')}/extra_files")
        if any(f.path.endswith(CHECKPOINT_EXTRA_FILE) for f in files):
            return lm
    return None


def log_model(run_id: str, checkpoint: Path, serialization_format: str = "pt2") -> str:
    """Log the checkpoint's model into the run: MLflow's pytorch flavor (``pt2``: torch.export, loads
    without running pickled code; ``pickle``: needs egnet importable) plus the checkpoint itself
    as ``extra_files/egnet-checkpoint.pt``. Returns the logged model id.

    A model torch.export cannot trace falls back to ``pickle`` with a warning.
    """
    import mlflow
    import numpy as np
    import torch
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    from egnet.evaluation.inference import SegmentationLogits
    from egnet.training.checkpoint import load_model

    model, cfg = load_model(checkpoint)
    try:
        egnet_version = importlib.metadata.version("egnet")
    except importlib.metadata.PackageNotFoundError:
        egnet_version = "0.1.0"
    signature = ModelSignature(
        # unnamed input: MLflow's pytorch pyfunc takes a plain ndarray, Nx3xHxW float RGB in [0, 1]
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 3, -1, -1))]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, cfg.model.num_classes, -1, -1), "logits")]),
    )
    # batch 2: torch.export specialises size-1 dims, and the batch must stay dynamic; small: stored as JSON
    example = np.full((2, 3, 64, 128), 0.25, dtype=np.float32)
    torch_req = f"torch=={torch.__version__.split('+')[0]}"
    with tempfile.TemporaryDirectory(prefix="egnet-register-") as tmp:
        extra = Path(tmp) / CHECKPOINT_EXTRA_FILE
        extra.write_bytes(Path(checkpoint).read_bytes())
        # the run's own experiment: start_run refuses a run of another experiment than the
        # process's active one (set by an earlier step in the same process)
        mlflow.set_experiment(experiment_id=mlflow.MlflowClient().get_run(run_id).info.experiment_id)
        with mlflow.start_run(run_id=run_id):
            def log(fmt: str) -> Any:
                return mlflow.pytorch.log_model(
                    pytorch_model=SegmentationLogits(model), name=MODEL_ARTIFACT, signature=signature,
                    input_example=example, extra_files=[str(extra)], serialization_format=fmt,
                    # explicit: MLflow's requirement inference loads the model in a subprocess (slow)
                    pip_requirements=[torch_req] if fmt == "pt2" else [torch_req, f"egnet=={egnet_version}"],
                )
            try:
                info = log(serialization_format)
            except Exception as exc:  # torch.export cannot trace every model
                if serialization_format != "pt2":
                    raise
                log.warning("torch.export failed (%s); logging the model pickled",
                            str(exc).splitlines()[0][:160])
                info = log("pickle")
    return info.model_id


def version_tags(run: Any, evaluation: dict[str, Any]) -> dict[str, str]:
    tags = {"run_id": run.info.run_id}
    tags.update({k: run.data.tags[k] for k in LINEAGE_TAGS if k in run.data.tags})
    if "test_data_version" in run.data.tags:
        tags["test_data_version"] = run.data.tags["test_data_version"]
    tags["test_mIoU"] = repr(float(evaluation["mIoU"]))
    tags["test_mEF1"] = repr(float(evaluation["mEF1"]))
    return tags


def describe(run: Any, evaluation: dict[str, Any], model_cfg: dict[str, Any]) -> str:
    t = run.data.tags
    w, h = evaluation.get("protocol", {}).get("infer_size", ["?", "?"])
    return (f"EGNet {model_cfg.get('variant')}/{model_cfg.get('backbone')} from run {run.info.run_id} "
            f"(git {t.get('git_commit', 'unknown')[:12]}, data {t.get('data_version', 'unknown')}). "
            f"Test mIoU {evaluation['mIoU']:.4f}, mEF1 {evaluation['mEF1']:.4f} on "
            f"{evaluation.get('num_images')} images, paper protocol (infer {w}x{h}, "
            "logits resized to the label size). Load: `egnet predict --model models:/NAME/VERSION` "
            "(weights-only checkpoint in extra_files/egnet-checkpoint.pt).")


@dataclass(frozen=True)
class Registration:
    name: str
    version: str
    run_id: str
    created: bool          # False: the run was registered before (idempotent re-run)
    logged: bool           # False: an already logged model of the run was used
    aliases: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "aliases": list(self.aliases),
                "model_uri": f"models:/{self.name}/{self.version}"}


def _train_dir_files(train_dir: str) -> tuple[str, Any]:
    loc = Location.from_str(train_dir)
    if not loc.exists(RUN_ID_FILE):
        raise DataError(f"{loc.child(RUN_ID_FILE)}: not found (is {train_dir} an `egnet train --out`?)")
    run_id = loc.read_text(RUN_ID_FILE).strip()
    if not loc.exists(FINAL_NAME):
        raise DataError(f"{loc.child(FINAL_NAME)}: not found (training did not finish?)")
    return run_id, loc


def _evaluation(eval_dir: Path, run_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
    doc = read_json(eval_dir / "metrics.json", "evaluation metrics")
    source = read_json(eval_dir / "model_source.json", "evaluation model source")
    if source.get("run_id") != run_id:
        raise DataError(f"{eval_dir}/model_source.json: evaluated run {source.get('run_id')!r}, "
                        f"not the train dir's run {run_id!r}; evaluate this train dir first")
    for key in ("mIoU", "mEF1"):
        if not isinstance(doc.get(key), (int, float)):
            raise DataError(f"{eval_dir}/metrics.json: '{key}' missing or not a number")
    return doc, source


def register(client: Any, name: str, train_dir: str, eval_dir: Path,
             serialization_format: str = "pt2", lock: LockSpec = NO_LOCK) -> Registration:
    """Log (once) and register (once) the model of ``train_dir``; new versions get ``challenger``.
    Find-or-create and the alias run under the registry lock ``lock``."""
    import mlflow
    from mlflow.exceptions import MlflowException

    run_id, loc = _train_dir_files(train_dir)
    evaluation, source = _evaluation(eval_dir, run_id)
    try:
        run = client.get_run(run_id)
    except MlflowException as exc:
        raise mlflow_error(f"MLflow run {run_id} (from {train_dir})", exc) from None
    tags = version_tags(run, evaluation)
    description = describe(run, evaluation, source.get("model_config", {}))

    created = logged = False
    # Logging (slow: seconds to a minute) touches only this run, so it runs unlocked; two
    # registers of one run at once may then log it twice, and the older logged model is used.
    if find_version(client, name, run_id) is None and find_logged_model(client, run) is None:
        with loc.fetch(FINAL_NAME) as ckpt:
            log_model(run_id, ckpt, serialization_format)
        logged = True
    # locked: two registers of one run would otherwise make two versions, and two registers of
    # different runs could leave `challenger` on the older one
    with registry_lock(name, lock):
        mv = find_version(client, name, run_id)
        if mv is None:
            lm = find_logged_model(client, run)
            if lm is None:
                raise DataError(f"run {run_id}: its logged model '{MODEL_ARTIFACT}' "
                                "disappeared while registering")
            mv = mlflow.register_model(f"models:/{lm.model_id}", name, tags=tags)
            created = True
        for key, value in tags.items():  # idempotent: completes a run that stopped half-way
            client.set_model_version_tag(name, mv.version, key, value)
        client.update_model_version(name, mv.version, description=description)
        aliases = client.get_registered_model(name).aliases  # alias -> version
        mine = {a for a, v in aliases.items() if str(v) == str(mv.version)}
        newest = max(int(v.version) for v in client.search_model_versions(f"name = '{name}'"))
        if created or (not mine and int(mv.version) == newest):
            client.set_registered_model_alias(name, CHALLENGER, mv.version)
            mine.add(CHALLENGER)
    return Registration(name, str(mv.version), run_id, created, logged, tuple(sorted(mine)))


def register_main(args: argparse.Namespace, cfg: Config) -> int:
    name = args.name or cfg.register.model_name
    with mlflow_errors(f"register {args.train_dir}"):
        reg = register(client_for(cfg), name, str(args.train_dir), Path(args.eval_dir),
                       cfg.register.serialization_format, lock_spec(cfg))
    if reg.created:
        how = "logged and registered" if reg.logged else "registered the run's logged model as"
        print(f"{how} {name} version {reg.version} (run {reg.run_id}); "
              f"aliases: {', '.join(reg.aliases) or '-'}")
    else:
        print(f"run {reg.run_id} is already {name} version {reg.version}; "
              f"aliases: {', '.join(reg.aliases) or '-'}")
    if getattr(args, "out", None):
        write_json(args.out, reg.to_dict())
    return 0


