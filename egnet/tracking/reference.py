"""The drift reference of a training run: its data's stats.json, found through MLflow.

`egnet data drift NEW --reference runs:/RUN_ID | models:/NAME@ALIAS | models:/NAME/VERSION`
reads the stats.json the training run logged as ``data/stats.json``
(:func:`egnet.tracking.runs.log_data_stats`; ``data_stats/stats.json``, or a run tag
``data_stats`` naming a file, are read when it is absent) and hands it to the pure
comparison in :mod:`egnet.data.drift`.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from egnet.core.config import Config
from egnet.core.errors import ConfigError, DataError
from egnet.core.files import read_json
from egnet.data.drift import Reference, reference_file
from egnet.tracking.access import denial, is_denied
from egnet.tracking.registered import parse_models_uri
from egnet.tracking.runs import DATA_STATS_ARTIFACT, TrackingStoreMissing, connect_mlflow

#: where a training run keeps its data's stats.json, in the order they are tried (the second: an older name)
REFERENCE_ARTIFACTS = (DATA_STATS_ARTIFACT, "data_stats/stats.json")
#: run tag (or param) naming a stats.json file (local or s3://) when no artifact holds one
REFERENCE_TAG = "data_stats"


class ReferenceMissing(ConfigError):
    """The registered version named by ``--reference`` does not exist (e.g. no champion yet,
    or no tracking store at all yet)."""


def _registry_run(client: Any, spec: str) -> tuple[str, dict[str, Any]]:
    from mlflow.exceptions import MlflowException

    try:
        name, version, alias = parse_models_uri(spec)
    except ConfigError as exc:
        raise ConfigError(str(exc).replace("--model", "--reference", 1)) from None
    try:
        mv = (client.get_model_version_by_alias(name, alias) if alias
              else client.get_model_version(name, version))
    except MlflowException as exc:
        if is_denied(exc):  # not "no reference": --allow-missing-reference must not skip it
            raise ConfigError(f"--reference {spec}: {denial(exc)}") from None
        what = f"alias '{alias}'" if alias else f"version {version}"
        raise ReferenceMissing(f"--reference {spec}: registered model '{name}' has no {what} "
                               f"({exc.error_code})") from None
    if not mv.run_id:
        raise DataError(f"--reference {spec}: version {mv.version} has no training run to read stats from")
    return mv.run_id, {"kind": "registry", "name": mv.name, "version": str(mv.version), "alias": alias}


def _run_stats(client: Any, run_id: str, spec: str, dst: Path) -> tuple[Path, str]:
    """Download the run's stats.json; returns (local file, where it came from)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        run = client.get_run(run_id)
    except MlflowException as exc:
        if is_denied(exc):
            raise ConfigError(f"--reference {spec}: {denial(exc)}") from None
        raise DataError(f"--reference {spec}: MLflow run {run_id}: {exc.error_code}") from None
    for artifact in REFERENCE_ARTIFACTS:
        folder, _, fname = artifact.rpartition("/")
        if any(f.path == artifact for f in client.list_artifacts(run_id, folder)):
            local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact,
                                                        dst_path=str(dst),
                                                        tracking_uri=mlflow.get_tracking_uri())
            return Path(local), f"runs:/{run_id}/{artifact}"
    named = run.data.tags.get(REFERENCE_TAG) or run.data.params.get(REFERENCE_TAG)
    if named:
        return reference_file(named, dst, f"--reference {spec} (run tag {REFERENCE_TAG})"), named
    raise DataError(f"--reference {spec}: run {run_id} has no {' or '.join(REFERENCE_ARTIFACTS)} artifact "
                    f"and no '{REFERENCE_TAG}' tag; log the training data's stats.json into it "
                    "(`egnet train --stats DIR` or egnet.tracking.runs.log_data_stats) "
                    "or pass the stats.json itself")


def resolve_reference(spec: str, cfg: Config) -> Reference:
    """The reference stats.json ``spec`` names: a file, its folder or an s3:// object, or the
    stats.json logged into a run (``runs:/RUN_ID``) or a registered version's training run."""
    if not spec.startswith(("models:/", "runs:/")):
        return Reference.from_file(spec)
    import mlflow

    try:
        uri = connect_mlflow(cfg, read_only=True)
    except TrackingStoreMissing as exc:  # no store, so no champion: --allow-missing-reference skips
        raise ReferenceMissing(f"--reference {spec}: {exc}") from None
    client = mlflow.MlflowClient(tracking_uri=uri)
    if spec.startswith("models:/"):
        run_id, info = _registry_run(client, spec)
    else:
        run_id, info = spec[len("runs:/"):].strip("/").split("/")[0], {"kind": "run"}
    with tempfile.TemporaryDirectory(prefix="egnet-drift-") as tmp:
        path, where = _run_stats(client, run_id, spec, Path(tmp))
        doc = read_json(path, "reference stats.json")
    return Reference(doc, {"spec": spec, **info, "run_id": run_id, "stats": where})
