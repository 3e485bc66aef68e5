"""The evaluation and registry steps: the evaluation's KFP artifacts and page, the register
step's links, the gate, the like-with-like champion check and re-evaluation."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from egnet.core.errors import GateRefused
from egnet.pipeline.steps.common import Runner, log_metrics


def evaluation_metrics(doc: dict[str, Any]) -> dict[str, float]:
    """metrics.json -> the names the evaluation logs into the MLflow run (``test_*``), the same
    names in the KFP Metrics artifact."""
    from egnet.evaluation.evaluate import mlflow_metrics

    return mlflow_metrics(doc)


def confusion_matrix(evaluation_dir: str | Path) -> tuple[list[str], list[list[int]]]:
    """The evaluation's class confusion (rows: ground truth, columns: prediction; pixels of
    all exposure bins) as (class names, matrix) for a KFP ClassificationMetrics artifact.
    From ``confusion.npy`` ([bin, class, class + not-a-class]); the not-a-class column (an
    ignore-valued prediction) has no category of its own and is left out."""
    import numpy as np

    out = Path(evaluation_dir)
    names = list(json.loads((out / "metrics.json").read_text())["IoU"])
    counts = np.load(out / "confusion.npy")
    matrix = counts.sum(axis=0)[:, : len(names)]
    return names, [[int(v) for v in row] for row in matrix]


def record_evaluation(evaluation_dir: str | Path, metrics: Any, confusion: Any) -> dict[str, Any]:
    """The evaluate step's KFP artifacts: metrics.json's numbers into the Metrics artifact (the
    MLflow names), the class confusion into the ClassificationMetrics one. Returns metrics.json."""
    doc = json.loads((Path(evaluation_dir) / "metrics.json").read_text())
    log_metrics(metrics, evaluation_metrics(doc))
    names, matrix = confusion_matrix(evaluation_dir)
    confusion.log_confusion_matrix(names, matrix)
    return doc


def evaluation_page(evaluation_dir: str | Path, run: Runner, config: Sequence[str] = ()) -> str:
    """The evaluate step's HTML: ``egnet report RUN_ID`` (also logged into the training run)
    when evaluate logged into a run, else the metrics table and charts."""
    from egnet.core.html import simple_page
    from egnet.metrics import format_table

    out = Path(evaluation_dir)
    run_id = json.loads((out / "model_source.json").read_text()).get("logged_to_run")
    if run_id:
        run(["report", run_id, "--out", str(out / "report")], config)
        return (out / "report" / "report.html").read_text()
    doc = json.loads((out / "metrics.json").read_text())
    return simple_page("EGNet evaluation (test split)", format_table(doc), sorted(out.glob("*.png")))


def registration_links(reg: dict[str, Any], experiment_id: str = "", ui: str | None = None) -> str:
    """The register step's Markdown for the KFP UI: links to the MLflow run and model version.

    ``ui``: the MLflow UI's address as a browser reaches it (``MLFLOW_UI_URL``), else the
    tracking URI when it is http(s); links are left out when neither is known."""
    if ui is None:
        ui = os.environ.get("MLFLOW_UI_URL") or os.environ.get("MLFLOW_TRACKING_URI", "")
    base = ui.rstrip("/") if ui.startswith(("http://", "https://")) else ""
    name, version, run = reg["name"], reg["version"], reg["run_id"]
    run_ref = (f"[{run}]({base}/#/experiments/{experiment_id}/runs/{run})" if base and experiment_id
               else f"`{run}`")
    ver_ref = (f"[{name} v{version}]({base}/#/models/{name}/versions/{version})" if base
               else f"`{name} v{version}`")
    return "\n".join([
        f"# Registered {name} v{version}", "",
        f"- MLflow run: {run_ref}",
        f"- model version: {ver_ref} (aliases: {', '.join(reg.get('aliases') or []) or 'none'})",
        f"- model URI: `{reg.get('model_uri', f'models:/{name}/{version}')}`",
    ]) + "\n"


def experiment_of(run_id: str) -> str:
    """The MLflow experiment id of ``run_id`` ("" when the server does not answer)."""
    import mlflow

    try:
        return mlflow.MlflowClient().get_run(run_id).info.experiment_id
    except Exception:  # noqa: BLE001 - links are a convenience
        return ""


def gate_decision(version: str, params_file: str = "", profile: str = "",
                  overrides: Sequence[str] | None = ()) -> str:
    """``egnet promote --version V --dry-run``: "promote" if the gate passes, "keep" if it refuses."""
    from egnet.core.config import load_config
    from egnet.registry.promotion import promote
    from egnet.tracking.client import client_for, mlflow_errors

    cfg = load_config(params_file or None, profile or None, list(overrides or []))
    try:
        with mlflow_errors(f"gate {cfg.register.model_name} v{version}"):  # e.g. a 403: one line
            promote(client_for(cfg), cfg.register.model_name, cfg, version, dry_run=True)
    except GateRefused as exc:
        print(f"gate: {exc}")
        return "keep"
    return "promote"


def champion_check(version: str, params_file: str = "", profile: str = "",
                   overrides: Sequence[str] | None = ()) -> str:
    """"reevaluate" when the champion has no per-image evidence on ``version``'s test images (its
    test data differ), else "ready" (the pipeline runs its evaluate-champion step only then)."""
    from egnet.core.config import load_config
    from egnet.registry.like_with_like import needs_reevaluation
    from egnet.tracking.client import client_for

    cfg = load_config(params_file or None, profile or None, list(overrides or []))
    needed, why = needs_reevaluation(client_for(cfg), cfg.register.model_name, version)
    print(f"like with like: {why}; {'re-evaluating the champion' if needed else 'nothing to re-evaluate'}")
    return "reevaluate" if needed else "ready"


def evaluate_champion(version: str, data: str, split: str, out: str, params_file: str = "", profile: str = "",
                      overrides: Sequence[str] | None = ()) -> str:
    """The champion evaluated on ``version``'s test data (DATA/SPLIT), logged as its own MLflow run and
    recorded on the champion version; the evaluation folder in ``out``. Returns the run id."""
    from egnet.core.config import load_config
    from egnet.registry.like_with_like import ensure_champion_evidence
    from egnet.tracking.client import client_for, mlflow_errors

    cfg = load_config(params_file or None, profile or None, list(overrides or []))
    with mlflow_errors("evaluate-champion"):
        return ensure_champion_evidence(client_for(cfg), cfg.register.model_name, version, cfg, data, split,
                                        out)
