"""Helpers for evaluate / predict / registry tests: tiny checkpoints and CLI calls."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from tests.conftest import REPO, SMALL

PARAMS = REPO / "params.yaml"
#: resnet18 at stride 32 without pretrained weights: a forward pass of a 256x128 image is cheap
TINY_MODEL = ["model.backbone=resnet18", "model.output_stride=32", "model.backbone_weights=none"]


def cli_args(*overrides: str, profile: str = "quick") -> list[str]:
    """``--params/--profile/--set`` for any step on the small synthetic data."""
    out = ["--params", str(PARAMS), "--profile", profile]
    for o in [*SMALL, *TINY_MODEL, *overrides]:
        out += ["--set", o]
    return out


def make_checkpoint(out_dir: Path, seed: int = 0, *overrides: str, run_id: str | None = None) -> Path:
    """An untrained (seeded) model saved as an egnet ``model.pt`` in ``out_dir`` (a train dir
    look-alike; with ``run_id`` also its ``mlflow_run_id``). Returns the checkpoint path."""
    from egnet.core.config import load_config
    from egnet.core.storage import Location
    from egnet.models import build_model
    from egnet.training.checkpoint import save_final

    cfg = load_config(PARAMS, "quick", [*SMALL, *TINY_MODEL, *overrides])
    torch.manual_seed(seed)
    model = build_model(cfg.model)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_final(Location.from_str(out_dir), model=model, cfg=cfg, iteration=0)
    if run_id is not None:
        (out_dir / "mlflow_run_id").write_text(run_id + "\n")
    return out_dir / "model.pt"


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())
