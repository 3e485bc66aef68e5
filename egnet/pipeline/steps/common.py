"""What every step shares: the KFP artifact constants, the ``egnet`` runner type, the config
arguments, the tracking URI, and writing a text or KFP Metrics artifact."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

POINTER = "dataset.json"
QUARANTINE = "quarantine.txt"
MODEL_FILES = ("model.pt", "mlflow_run_id", "train_summary.json")
RESOURCE_KEYS = ("cpu_request", "cpu_limit", "memory_request", "memory_limit")
#: MLflow tags that link a training run to its KFP run (set when the run starts, EGNET_RUN_TAGS)
KFP_TAGS = ("kfp_run_id", "kfp_run_name", "kfp_pipeline_version")
#: the tag the pipeline's exit handler sets on the training run: the KFP run's final state
FINAL_STATE_TAG = "kfp_final_state"
#: KFP final states of a run that ended well (MLMD ``COMPLETE``; kfp.local says ``SUCCEEDED``)
SUCCESS_STATES = ("COMPLETE", "SUCCEEDED")


#: runs ``egnet <argv> <config>`` and raises StepFailed on a non-zero exit (``egnet.cli.run_step``)
Runner = Callable[[Sequence[str], Sequence[str]], int]


def config_args(params_file: str = "", profile: str = "", overrides: Sequence[str] | None = (),
                experiment: str = "") -> list[str]:
    """The common ``--params/--profile/--set`` arguments; empty values are left out."""
    args: list[str] = []
    if params_file:
        args += ["--params", params_file]
    if profile:
        args += ["--profile", profile]
    for item in overrides or []:
        args += ["--set", str(item)]
    if experiment:
        args += ["--set", f"tracking.experiment={experiment}"]
    return args


def use_tracking(mlflow_uri: str) -> None:
    """A non-empty pipeline ``mlflow_uri`` wins over the pod's MLFLOW_TRACKING_URI.

    ``MLFLOW_RUN_ID`` is dropped: KFP 2.17's MLflow plugin (when a cluster enables it with
    ``injectUserEnvVars``) injects its own per-task run there, and ``mlflow.start_run()``
    would silently log the training into it instead of the run the steps manage.
    """
    if mlflow_uri:
        os.environ["MLFLOW_TRACKING_URI"] = mlflow_uri
    if os.environ.pop("MLFLOW_RUN_ID", None):
        print("ignoring MLFLOW_RUN_ID (KFP's MLflow plugin): the steps manage their own MLflow runs")


def write_text(artifact: Any, text: str) -> None:
    Path(artifact.path).parent.mkdir(parents=True, exist_ok=True)
    Path(artifact.path).write_text(text)


def log_metrics(metrics: Any, values: dict[str, Any]) -> dict[str, float]:
    """Log every finite number of ``values`` to a KFP Metrics artifact; returns what was logged."""
    logged = {}
    for name, value in values.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value == value:
            metrics.log_metric(name, float(value))
            logged[name] = float(value)
    return logged
