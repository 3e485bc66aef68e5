"""`egnet compare RUN_ID RUN_ID ...`: MLflow runs side by side for reviewers.

Three tables: the runs (name, lineage tags), the params that differ between them,
and the test metrics (mIoU, mEF1, pixel accuracy, EF1 per exposure bin, IoU per
class, then any extra-mode ``test_<mode>_*`` metrics and ``val_mIoU``) with the
delta of each run against the first. ``--format markdown`` gives the same as
GitHub tables for a pull-request comment.
"""

from __future__ import annotations

import argparse
from typing import Any

from egnet.core.config import Config
from egnet.core.errors import DataError
from egnet.core.text import fmt, render_markdown, render_table
from egnet.data.exposure import BIN_NAMES, NUM_BINS
from egnet.data.labels import CLASS_NAMES
from egnet.tracking.access import is_denied
from egnet.tracking.client import client_for, mlflow_error, mlflow_errors
from egnet.tracking.runs import LINEAGE_TAGS


def metric_order(names: set[str]) -> list[str]:
    """Headline metrics first, then EF1 bins low to high, IoU in trainId order, then the rest sorted."""
    head = ["test_mIoU", "test_mEF1", "test_pixel_acc"]
    head += [f"test_EF1_bin{g}" for g in range(NUM_BINS)]
    head += [f"test_IoU_{c.replace(' ', '_')}" for c in CLASS_NAMES]
    ordered = [n for n in head if n in names]
    rest = sorted(n for n in names if n not in ordered and (n.startswith("test_") or n == "val_mIoU"))
    return ordered + rest


def _label(metric: str) -> str:
    if metric.startswith("test_EF1_bin"):
        g = int(metric[len("test_EF1_bin"):])
        return f"{metric} {BIN_NAMES[g]}"
    return metric


def compare_tables(runs: list[Any]) -> dict[str, list[tuple[str, ...]]]:
    """{"runs": rows, "params": rows, "metrics": rows}; each list's first row is the header."""
    ids = [r.info.run_id[:8] for r in runs]
    run_rows = [("run", "run id", "name", *LINEAGE_TAGS)]
    for short, r in zip(ids, runs, strict=True):
        run_rows.append((short, r.info.run_id, r.info.run_name or "-",
                         *(r.data.tags.get(t, "-") for t in LINEAGE_TAGS)))

    keys = sorted(set().union(*(r.data.params.keys() for r in runs)))
    param_rows = [("param", *ids)]
    for k in keys:
        values = [r.data.params.get(k, "-") for r in runs]
        if len(set(values)) > 1:
            param_rows.append((k, *values))

    names = set().union(*(r.data.metrics.keys() for r in runs))
    metric_rows = [("metric", ids[0], *(f"{i} (delta)" for i in ids[1:]))]
    for name in metric_order(names):
        base = runs[0].data.metrics.get(name)
        cells = [fmt(base)]
        for r in runs[1:]:
            v = r.data.metrics.get(name)
            delta = f" ({v - base:+.4f})" if v is not None and base is not None else ""
            cells.append(fmt(v) + delta)
        metric_rows.append((_label(name), *cells))
    return {"runs": run_rows, "params": param_rows, "metrics": metric_rows}


def compare(client: Any, run_ids: list[str], fmt: str = "table") -> str:
    """The comparison as text (``table``) or GitHub markdown (``markdown``)."""
    from mlflow.exceptions import MlflowException

    runs = []
    for rid in run_ids:
        try:
            runs.append(client.get_run(rid))
        except MlflowException as exc:
            if is_denied(exc):
                raise mlflow_error(f"MLflow run {rid}", exc) from None
            raise DataError(f"MLflow run {rid}: {str(exc).splitlines()[0][:200]}") from None
    tables = compare_tables(runs)
    render = render_markdown if fmt == "markdown" else render_table
    titles = {"runs": "Runs", "params": "Params that differ",
              "metrics": f"Metrics (test = paper protocol; delta against {tables['runs'][1][0]})"}
    parts = []
    for key, title in titles.items():
        rows = tables[key]
        heading = f"### {title}" if fmt == "markdown" else f"== {title}"
        body = render(rows) if len(rows) > 1 else "(none)"
        parts.append(f"{heading}\n\n{body}" if fmt == "markdown" else f"{heading}\n{body}")
    return "\n\n".join(parts)


def compare_main(args: argparse.Namespace, cfg: Config) -> int:
    """`egnet compare RUN_ID RUN_ID ... [--format table|markdown]`."""
    with mlflow_errors("compare"):
        text = compare(client_for(cfg, read_only=True), args.run_ids, args.format)
    print(text)
    return 0
