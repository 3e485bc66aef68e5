"""MLflow model registry: register, list versions, compare runs; CLI entry points for promotion.

The gate, promotion and rollback live in :mod:`egnet.promotion`; run comparison in
:mod:`egnet.compare`.

Conventions (docs/registry.md): registered model ``egnet-nightcity``; MLflow 3
aliases only (``challenger`` = newest registered candidate, ``champion`` = serving,
``previous-champion`` = the one before, for rollback), never stages. Versions carry
tags ``run_id``, ``git_commit``, ``data_version``, ``params_hash`` (copied from the
training run), ``test_mIoU``, ``test_mEF1``, ``test_data_version`` (from the
evaluation), and one ``promotion.<UTC time>`` tag per decision plus ``last_decision``.

Alias invariant: ``champion`` and ``previous-champion`` never name the same
version. Every move keeps it step by step (drop previous-champion only if it is the
version about to become champion; move champion; then set previous-champion),
re-reads the aliases first (optimistic check) and after (verify and repair), and
is serialised across processes and pods by the lock ``register.lock_uri`` (or
``$EGNET_REGISTRY_LOCK``) names: a file lock or an S3 lease (:mod:`egnet.locking`).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import logging
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from egnet.config import Config
from egnet.errors import ConfigError, DataError
from egnet.io import read_json, write_json
from egnet.locking import LockSpec, held

CHAMPION, CHALLENGER, PREVIOUS = "champion", "challenger", "previous-champion"
MODEL_ARTIFACT = "model"                     # name of the logged MLflow model inside the run
CHECKPOINT_EXTRA_FILE = "egnet-checkpoint.pt"  # the egnet checkpoint inside that model's extra_files/
LINEAGE_TAGS = ("git_commit", "data_version", "params_hash")

log = logging.getLogger(__name__)


def client_for(cfg: Config) -> Any:
    """An MlflowClient on the checked tracking URI (also the registry URI)."""
    import mlflow

    from egnet.tracking import connect

    uri = connect(cfg)
    mlflow.set_registry_uri(uri)
    return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)


def _mlflow_error(what: str, exc: Exception) -> DataError:
    return DataError(f"{what}: {str(exc).splitlines()[0][:200]}")


@contextlib.contextmanager
def mlflow_errors(what: str) -> Iterator[None]:
    """Turn an MLflow or transport failure into one line (DataError, exit 1), not a traceback."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except MlflowException as exc:
        raise _mlflow_error(f"{what}: MLflow", exc) from None
    except OSError as exc:  # requests' connection errors are OSErrors too
        raise _mlflow_error(f"{what}: {type(exc).__name__}", exc) from None


def lock_spec(cfg: Config) -> LockSpec:
    """The registry lock of ``cfg`` (``register.lock_uri``; ``$EGNET_REGISTRY_LOCK`` wins)."""
    r = cfg.register
    return LockSpec.resolve(r.lock_uri, r.lock_ttl_s, r.lock_timeout_s)


@contextlib.contextmanager
def registry_lock(name: str, spec: LockSpec | None = None) -> Iterator[None]:
    """Serialise register and promote/rollback across processes (:mod:`egnet.locking`): the lock
    ``spec`` names; without one, ``$EGNET_REGISTRY_LOCK``'s; no lock when neither names one
    (docs/registry.md, "Racing"). Re-entrant within a thread."""
    with held(spec if spec is not None else LockSpec.resolve(""), f"registry {name}"):
        yield


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
        files = mlflow.artifacts.list_artifacts(artifact_uri=f"{lm.artifact_location.rstrip('/')}/extra_files")
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

    from egnet.inference import SegmentationLogits, _load_checkpoint

    model, cfg = _load_checkpoint(checkpoint)
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
                log.warning("torch.export failed (%s); logging the model pickled", str(exc).splitlines()[0][:160])
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
            f"{evaluation.get('num_images')} images, paper protocol (infer {w}x{h}, logits resized to the label "
            "size). Load: `egnet predict --model models:/NAME/VERSION` (weights-only checkpoint in "
            "extra_files/egnet-checkpoint.pt).")


@dataclass(frozen=True)
class Registration:
    name: str
    version: str
    run_id: str
    created: bool          # False: the run was registered before (idempotent re-run)
    logged: bool           # False: an already logged model of the run was used
    aliases: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "aliases": list(self.aliases), "model_uri": f"models:/{self.name}/{self.version}"}


def _train_dir_files(train_dir: str) -> tuple[str, Any]:
    from egnet.storage import Location

    loc = Location.from_str(train_dir)
    if not loc.exists("mlflow_run_id"):
        raise DataError(f"{loc.child('mlflow_run_id')}: not found (is {train_dir} an `egnet train --out`?)")
    run_id = loc.read_text("mlflow_run_id").strip()
    if not loc.exists("model.pt"):
        raise DataError(f"{loc.child('model.pt')}: not found (training did not finish?)")
    return run_id, loc


def _evaluation(eval_dir: Path, run_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
    doc = read_json(eval_dir / "metrics.json", "evaluation metrics")
    source = read_json(eval_dir / "model_source.json", "evaluation model source")
    if source.get("run_id") != run_id:
        raise DataError(f"{eval_dir}/model_source.json: evaluated run {source.get('run_id')!r}, not the train "
                        f"dir's run {run_id!r}; evaluate this train dir first")
    for key in ("mIoU", "mEF1"):
        if not isinstance(doc.get(key), (int, float)):
            raise DataError(f"{eval_dir}/metrics.json: '{key}' missing or not a number")
    return doc, source


def register(client: Any, name: str, train_dir: str, eval_dir: Path,
             serialization_format: str = "pt2", lock: LockSpec | None = None) -> Registration:
    """Log (once) and register (once) the model of ``train_dir``; new versions get ``challenger``.
    Find-or-create and the alias run under the registry lock ``lock``."""
    import mlflow
    from mlflow.exceptions import MlflowException

    run_id, loc = _train_dir_files(train_dir)
    evaluation, source = _evaluation(eval_dir, run_id)
    try:
        run = client.get_run(run_id)
    except MlflowException as exc:
        raise _mlflow_error(f"MLflow run {run_id} (from {train_dir})", exc) from None
    tags = version_tags(run, evaluation)
    description = describe(run, evaluation, source.get("model_config", {}))

    created = logged = False
    # Logging (slow: seconds to a minute) touches only this run, so it runs unlocked; two
    # registers of one run at once may then log it twice, and the older logged model is used.
    if find_version(client, name, run_id) is None and find_logged_model(client, run) is None:
        with loc.fetch("model.pt") as ckpt:
            log_model(run_id, ckpt, serialization_format)
        logged = True
    # locked: two registers of one run would otherwise make two versions, and two registers of
    # different runs could leave `challenger` on the older one
    with registry_lock(name, lock):
        mv = find_version(client, name, run_id)
        if mv is None:
            lm = find_logged_model(client, run)
            if lm is None:
                raise DataError(f"run {run_id}: its logged model '{MODEL_ARTIFACT}' disappeared while registering")
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
        print(f"{how} {name} version {reg.version} (run {reg.run_id}); aliases: {', '.join(reg.aliases) or '-'}")
    else:
        print(f"run {reg.run_id} is already {name} version {reg.version}; aliases: {', '.join(reg.aliases) or '-'}")
    if getattr(args, "out", None):
        write_json(args.out, reg.to_dict())
    return 0


# --------------------------------------------------------------------------- tables


def render_table(rows: list[tuple[str, ...]] | list[list[str]]) -> str:
    """Plain aligned columns; the first row is the header."""
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def render_markdown(rows: list[tuple[str, ...]] | list[list[str]]) -> str:
    def cell(c: Any) -> str:
        return str(c).replace("|", "\\|")

    out = ["| " + " | ".join(cell(c) for c in rows[0]) + " |", "|" + "---|" * len(rows[0])]
    out += ["| " + " | ".join(cell(c) for c in r) + " |" for r in rows[1:]]
    return "\n".join(out)


def promote_main(args: argparse.Namespace, cfg: Config) -> int:
    from egnet.promotion import promote, rollback

    name = args.name or cfg.register.model_name
    if args.rollback and (args.version or args.force):
        raise ConfigError("--rollback takes no --version or --force: it restores previous-champion")
    with mlflow_errors(f"promote {name}"):
        client = client_for(cfg)
        if args.rollback:
            return rollback(client, name, args.dry_run, lock_spec(cfg))
        return promote(client, name, cfg, args.version, args.dry_run, args.force)


def version_rows(client: Any, name: str) -> list[tuple[str, ...]]:
    """Table rows (header first) of a registered model's versions, newest first."""
    from egnet.promotion import aliases_of, fmt, version_metrics

    by_version: dict[str, list[str]] = {}
    for alias, v in aliases_of(client, name).items():
        by_version.setdefault(v, []).append(alias)
    versions = sorted(client.search_model_versions(f"name = '{name}'"), key=lambda mv: -int(mv.version))
    rows = [("version", "aliases", "test mIoU", "test mEF1", "data version", "created (UTC)", "run")]
    for mv in versions:
        m = version_metrics(client, mv)
        created = datetime.fromtimestamp(mv.creation_timestamp / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M")
        rows.append((str(mv.version), ",".join(sorted(by_version.get(str(mv.version), []))) or "-",
                     fmt(m["mIoU"]), fmt(m["mEF1"]), (mv.tags or {}).get("data_version", "-"), created,
                     mv.run_id or "-"))
    return rows


def models_main(args: argparse.Namespace, cfg: Config) -> int:
    name = args.name or cfg.register.model_name
    with mlflow_errors(f"models {name}"):
        rows = version_rows(client_for(cfg), name)
    print(f"{name}: {len(rows) - 1} version(s)")
    print(render_table(rows))
    return 0


def compare_main(args: argparse.Namespace, cfg: Config) -> int:
    from egnet.compare import compare

    with mlflow_errors("compare"):
        text = compare(client_for(cfg), args.run_ids, args.format)
    print(text)
    return 0
