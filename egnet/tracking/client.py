"""Shared MLflow client helpers: a checked client, and MLflow failures as one-line errors."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from egnet.core.config import Config
from egnet.core.errors import ConfigError, DataError, EgnetError
from egnet.tracking.access import denial
from egnet.tracking.runs import connect_mlflow


def client_for(cfg: Config, read_only: bool = False) -> Any:
    """An MlflowClient on the checked tracking URI (also the registry URI).

    ``read_only``: the command only reads, so a local store that does not exist is an error
    (exit 2, :class:`egnet.tracking.runs.TrackingStoreMissing`) rather than a new empty one.
    """
    import mlflow

    uri = connect_mlflow(cfg, read_only=read_only)
    mlflow.set_registry_uri(uri)
    return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)


def mlflow_error(what: str, exc: BaseException) -> EgnetError:
    """``what: <first line of the error>`` as a DataError (exit 1); a 401/403 of the server as a
    ConfigError (exit 2) naming the user and the permission that is missing (egnet.tracking.access)."""
    refused = denial(exc)
    if refused is not None:
        return ConfigError(f"{what}: {refused}")
    return DataError(f"{what}: {str(exc).splitlines()[0][:200]}")


@contextlib.contextmanager
def mlflow_errors(what: str) -> Iterator[None]:
    """Turn an MLflow or transport failure into one line (DataError, exit 1; a refused login or
    permission: ConfigError, exit 2), not a traceback."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except (MlflowException, OSError) as exc:  # requests' connection and HTTP errors are OSErrors
        if denial(exc) is not None:
            raise mlflow_error(what, exc) from None
        label = "MLflow" if isinstance(exc, MlflowException) else type(exc).__name__
        raise mlflow_error(f"{what}: {label}", exc) from None


#: MLflow's switch for its artifact download progress bars (tqdm on stderr)
PROGRESS_BAR_ENV = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"


@contextlib.contextmanager
def no_download_bars() -> Iterator[None]:
    """MLflow downloads without their progress bars: for a small file a command reads on the way
    (the gate's evidence), where a bar is only noise before the one line that matters."""
    import os

    before = os.environ.get(PROGRESS_BAR_ENV)
    os.environ[PROGRESS_BAR_ENV] = "false"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(PROGRESS_BAR_ENV, None)
        else:
            os.environ[PROGRESS_BAR_ENV] = before
