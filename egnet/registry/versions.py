"""Registered versions: their aliases, test metrics, and the `egnet models` listing."""

from __future__ import annotations

import argparse
from datetime import datetime, timezone
from typing import Any

from egnet.core.config import Config
from egnet.core.errors import ConfigError
from egnet.core.text import fmt, render_table
from egnet.tracking.client import client_for, mlflow_errors


def aliases_of(client: Any, name: str) -> dict[str, str]:
    """alias -> version (strings) of a registered model; ConfigError when the model does not exist."""
    from mlflow.exceptions import MlflowException

    try:
        return {a: str(v) for a, v in client.get_registered_model(name).aliases.items()}
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            raise ConfigError(f"registered model '{name}' does not exist "
                              "(run `egnet register` first)") from None
        raise


def version_metrics(client: Any, mv: Any) -> dict[str, float | None]:
    """Test mIoU/mEF1 of a version: its tags (set by register), else its run's metrics."""
    out: dict[str, float | None] = {}
    run_metrics: dict[str, float] | None = None
    for key in ("mIoU", "mEF1"):
        text = (mv.tags or {}).get(f"test_{key}")
        if text is not None:
            try:
                out[key] = float(text)
                continue
            except ValueError:
                pass
        if run_metrics is None:
            run_metrics = client.get_run(mv.run_id).data.metrics if mv.run_id else {}
        out[key] = run_metrics.get(f"test_{key}")
    return out


def version_rows(client: Any, name: str) -> list[tuple[str, ...]]:
    """Table rows (header first) of a registered model's versions, newest first."""
    by_version: dict[str, list[str]] = {}
    for alias, v in aliases_of(client, name).items():
        by_version.setdefault(v, []).append(alias)
    versions = sorted(client.search_model_versions(f"name = '{name}'"), key=lambda mv: -int(mv.version))
    rows = [("version", "aliases", "test mIoU", "test mEF1", "data version", "created (UTC)", "run")]
    for mv in versions:
        m = version_metrics(client, mv)
        created = datetime.fromtimestamp(mv.creation_timestamp / 1000,
                                         timezone.utc).strftime("%Y-%m-%d %H:%M")
        rows.append((str(mv.version), ",".join(sorted(by_version.get(str(mv.version), []))) or "-",
                     fmt(m["mIoU"]), fmt(m["mEF1"]), (mv.tags or {}).get("data_version", "-"), created,
                     mv.run_id or "-"))
    return rows


def models_main(args: argparse.Namespace, cfg: Config) -> int:
    """`egnet models [--name N]`."""
    name = args.name or cfg.register.model_name
    with mlflow_errors(f"models {name}"):
        rows = version_rows(client_for(cfg, read_only=True), name)
    print(f"{name}: {len(rows) - 1} version(s)")
    print(render_table(rows))
    return 0
