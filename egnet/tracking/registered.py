"""Registered models: ``models:/`` URIs, the version one names, and the egnet checkpoint stored
with a version's MLflow model (docs/registry.md).

``egnet register`` logs every model with the weights-only egnet checkpoint as an extra file
(``extra_files/egnet-checkpoint.pt``); loading a registered model downloads that file, so no
pickled code runs. These look-ups need no torch: evaluation, drift and the registry share them.
"""

from __future__ import annotations

from typing import Any

from egnet.core.errors import ConfigError

CHAMPION, CHALLENGER, PREVIOUS = "champion", "challenger", "previous-champion"
MODEL_ARTIFACT = "model"                       # name of the logged MLflow model inside the run
CHECKPOINT_EXTRA_FILE = "egnet-checkpoint.pt"  # the egnet checkpoint inside that model's extra_files/


def parse_models_uri(uri: str) -> tuple[str, str | None, str | None]:
    """``models:/NAME@ALIAS`` -> (NAME, None, ALIAS); ``models:/NAME/VERSION`` -> (NAME, VERSION, None)."""
    rest = uri[len("models:/"):].strip("/")
    if "@" in rest:
        name, _, alias = rest.rpartition("@")
        if name and alias and "/" not in name:
            return name, None, alias
    else:
        name, _, version = rest.rpartition("/")
        if name and version.isdigit() and "/" not in name:
            return name, version, None
    raise ConfigError(f"--model {uri}: expected models:/NAME@ALIAS or models:/NAME/VERSION")


def registered_version(client: Any, uri: str) -> Any:
    """The ModelVersion a ``models:/`` URI names; ConfigError when there is none."""
    from mlflow.exceptions import MlflowException

    name, version, alias = parse_models_uri(uri)
    try:
        if alias is not None:
            return client.get_model_version_by_alias(name, alias)
        return client.get_model_version(name, version)
    except MlflowException as exc:
        if exc.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise
        what = f"alias '{alias}'" if alias else f"version {version}"
        raise ConfigError(f"--model {uri}: registered model '{name}' has no {what} "
                          f"({exc.error_code})") from None


def logged_model_id(mv: Any) -> str | None:
    """The MLflow 3 logged-model id behind a registered version (``m-...``), or None.

    ``ModelVersion.model_id`` is not always filled in by the registry store; the source
    URI of a version registered from a logged model is ``models:/<model_id>``.
    """
    if getattr(mv, "model_id", None):
        return mv.model_id
    source = mv.source or ""
    if source.startswith("models:/m-") and "/" not in source[len("models:/"):]:
        return source[len("models:/"):]
    return None


def checkpoint_artifact_uri(client: Any, mv: Any) -> str:
    """Artifact URI of the egnet checkpoint stored with a registered version's MLflow model."""
    model_id = logged_model_id(mv)
    base = client.get_logged_model(model_id).artifact_location if model_id else mv.source
    return f"{base.rstrip('/')}/extra_files/{CHECKPOINT_EXTRA_FILE}"
