"""Training checkpoints and the final model file.

Files (below a train ``--out`` location, local or ``s3://``):

    checkpoints/ckpt_<iter>.pt   full train state: model, optimizer, scheduler,
                                 iteration, RNG states, resolved config, MLflow run id
    model.pt                     final: {"format", "config", "model", "iteration"}
    mlflow_run_id                the training run's id (register and evaluate find it here)
    train_summary.json           written by `egnet train` when it finishes

Both carry ``"format": "egnet-checkpoint/1"`` and the resolved config
(``Config.to_dict()``), so a file alone rebuilds its model. Everything inside is
tensors and plain Python values: files load with ``torch.load(weights_only=True)``
(no pickled code runs). Files are written through a temporary file and renamed
(or PUT whole to S3), so a reader never sees a partial file; should one be
damaged anyway, resume falls back to the previous good checkpoint and says so.
"""

from __future__ import annotations

import io
import logging
import pickle
import random
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from egnet.core.config import Config, config_from_dict
from egnet.core.errors import DataError
from egnet.core.storage import Location

log = logging.getLogger(__name__)

FORMAT = "egnet-checkpoint/1"
CKPT_DIR = "checkpoints"
FINAL_NAME = "model.pt"
RUN_ID_FILE = "mlflow_run_id"       # the training run's MLflow id, beside model.pt
SUMMARY_FILE = "train_summary.json"
KEEP_CHECKPOINTS = 3  # the latest few: enough to fall back past a damaged file, bounded disk use
_CKPT_RE = re.compile(r"^ckpt_(\d+)\.pt$")


def ckpt_name(iteration: int) -> str:
    return f"{CKPT_DIR}/ckpt_{iteration}.pt"


# --- RNG state as tensors (weights_only-loadable) ---------------------------

def rng_state() -> dict[str, Any]:
    """Python, NumPy, torch (and CUDA) RNG states as tensors and lists."""
    py = random.getstate()
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": {
            "key": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured (CUDA only if both sides have it)."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state(
        ("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


# --- reading and writing -----------------------------------------------------

def _save(obj: dict[str, Any], location: Location, name: str) -> None:
    # serialised in memory first: torch.save's own file writer turns a full disk into an opaque
    # RuntimeError ("unexpected pos ..."); a plain write raises OSError(ENOSPC), which the CLI
    # reports in one line (the temporary file is removed, older checkpoints stay)
    data = to_bytes(obj)
    location.write(name, lambda p: p.write_bytes(data))


def read_checkpoint(path: str | Path, source: str | None = None) -> dict[str, Any]:
    """Load an egnet checkpoint file safely; a damaged or foreign file is a DataError naming it."""
    source = source or str(path)
    if not Path(path).is_file():
        raise DataError(f"{source}: checkpoint not found")
    # torch.save writes a zip whose directory is at the end: a cut-off copy is not a zip
    if not zipfile.is_zipfile(path):
        raise DataError(f"{source}: not a complete torch.save archive (truncated, or not a checkpoint)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise DataError(
            f"{source}: refused by torch.load(weights_only=True): it holds pickled objects, "
            "not an egnet checkpoint"
        ) from None
    except Exception as exc:  # damaged record inside the archive
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise DataError(f"{source}: damaged checkpoint ({first})") from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        found = obj.get("format") if isinstance(obj, dict) else type(obj).__name__
        raise DataError(f"{source}: not an egnet checkpoint (format {found!r}, expected {FORMAT!r})")
    for key in ("config", "model", "iteration"):
        if key not in obj:
            raise DataError(f"{source}: egnet checkpoint without '{key}'")
    return obj


def read_location_checkpoint(location: Location, name: str) -> dict[str, Any]:
    with location.fetch(name) as local:
        return read_checkpoint(local, location.child(name))


def list_checkpoints(location: Location) -> list[tuple[int, str]]:
    """(iteration, name) of the checkpoints under ``location``, newest first."""
    found = []
    for name in location.list(CKPT_DIR):
        m = _CKPT_RE.match(name.rsplit("/", 1)[-1])
        if m and name == f"{CKPT_DIR}/{m.group(0)}":
            found.append((int(m.group(1)), name))
    return sorted(found, reverse=True)


def latest_train_state(location: Location) -> tuple[dict[str, Any], str] | None:
    """The newest checkpoint that loads, and its name; None if there is none.

    A newest file that does not load (truncated copy, disk error) is skipped with a
    warning naming it and the one used instead.
    """
    skipped: list[str] = []
    for _, name in list_checkpoints(location):
        try:
            state = read_location_checkpoint(location, name)
        except DataError as exc:
            log.warning("skipping damaged checkpoint: %s", exc)
            skipped.append(name)
            continue
        if skipped:
            log.warning("resuming from %s instead of %s", location.child(name), ", ".join(skipped))
        return state, name
    if skipped:
        log.warning("no readable checkpoint in %s (damaged: %s); starting fresh",
                    location.child(CKPT_DIR), ", ".join(skipped))
    return None


def save_train_state(
    location: Location,
    *,
    iteration: int,
    cfg: Config,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    extra: dict[str, Any] | None = None,
    keep: int = KEEP_CHECKPOINTS,
) -> str:
    """Write ``checkpoints/ckpt_<iteration>.pt`` and drop all but the newest ``keep``; returns its name."""
    state = {
        "format": FORMAT,
        "kind": "train-state",
        "iteration": int(iteration),
        "config": cfg.to_dict(),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": rng_state(),
        **(extra or {}),
    }
    name = ckpt_name(iteration)
    _save(state, location, name)
    for _, old in list_checkpoints(location)[keep:]:
        location.delete(old)
    return name


def save_final(location: Location, *, model: torch.nn.Module, cfg: Config, iteration: int) -> str:
    """Write ``model.pt`` (weights + config only); returns its name."""
    _save({"format": FORMAT, "kind": "model", "config": cfg.to_dict(),
           "model": model.state_dict(), "iteration": int(iteration)}, location, FINAL_NAME)
    return FINAL_NAME


def to_bytes(obj: dict[str, Any]) -> bytes:
    """Serialise like a checkpoint file (for MLflow artifacts and tests)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


# --- loading a model for evaluation / prediction ----------------------------

def _clean_state_dict(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop wrappers' prefixes (DDP 'module.', torch.compile '_orig_mod.')."""
    out = {}
    for k, v in sd.items():
        for prefix in ("module.", "_orig_mod."):
            while k.startswith(prefix):
                k = k[len(prefix):]
        out[k] = v
    return out


def _resolve(path: str | Path) -> tuple[Location, str]:
    """A model file, a train --out directory (model.pt, else the latest checkpoint), local or s3://."""
    text = str(path)
    if text.endswith(".pt"):
        parent, _, name = text.rpartition("/")
        return Location.from_str(parent or "."), name
    location = Location.from_str(text)
    if location.exists(FINAL_NAME):
        return location, FINAL_NAME
    ckpts = list_checkpoints(location)
    if ckpts:
        return location, ckpts[0][1]
    raise DataError(f"{text}: no {FINAL_NAME} and no checkpoints/ckpt_<iter>.pt (is it a train --out?)")


def load_model(path: str | Path) -> tuple[torch.nn.Module, Config]:
    """(model in eval mode on CPU, its Config) from a checkpoint/model file or a train output dir.

    The model is rebuilt from the config saved in the file with ``backbone_weights: none``
    (the file's weights replace them; nothing is downloaded).
    """
    from egnet.models import build_model

    location, name = _resolve(path)
    obj = read_location_checkpoint(location, name)
    cfg = config_from_dict(obj["config"], source=location.child(name))
    model = build_model(cfg.model.model_copy(update={"backbone_weights": "none"}))
    missing, unexpected = model.load_state_dict(_clean_state_dict(obj["model"]), strict=False)
    if missing or unexpected:
        raise DataError(
            f"{location.child(name)}: weights do not fit model {cfg.model.variant}/{cfg.model.backbone} "
            f"({len(missing)} missing, {len(unexpected)} unexpected, e.g. {(missing or unexpected)[0]})"
        )
    return model.eval(), cfg
