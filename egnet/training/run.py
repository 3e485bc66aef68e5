"""One training run's state: model, optimizer, resume, MLflow, checkpoints, the summary.

:class:`Run` is what the loop in :mod:`egnet.training.train` works on. Rank 0 alone talks to
MLflow and writes checkpoints (``model_without_ddp``); every rank loads the same checkpoint
on resume.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from egnet.core.config import Config, config_from_dict
from egnet.core.errors import ConfigError
from egnet.core.storage import Location
from egnet.core.text import fmt
from egnet.tracking import runs as tracking
from egnet.training import checkpoint as ckpt
from egnet.training import distributed as D
from egnet.training.checkpoint import RUN_ID_FILE, SUMMARY_FILE
from egnet.training.loop import configure_backends, make_loaders, val_metrics

log = logging.getLogger(__name__)

# Keys that may change between a run and its resume: they do not change the weights' trajectory.
RESUMABLE_CHANGES = (
    "train.checkpoint_every", "train.log_every", "train.val_every", "train.val_max_images",
    "train.workers", "train.prefetch_factor", "train.pin_memory", "train.persistent_workers", "train.compile",
    "train.channels_last", "train.deterministic", "train.max_restarts",
)
TRAJECTORY_SECTIONS = ("model.", "train.", "data.image_size")


@dataclass
class Progress:
    """What a checkpoint carries besides weights: the logged history (for train_summary.json)."""

    history: list[dict[str, float]] = field(default_factory=list)
    val: list[dict[str, float]] = field(default_factory=list)


def check_resumable(saved: dict[str, Any], cfg: Config, source: str) -> None:
    """ConfigError if the checkpoint was trained with other trajectory settings."""
    old = config_from_dict(saved, source).flat()
    new = cfg.flat()
    changed = [k for k in new if old.get(k) != new[k] and k.startswith(TRAJECTORY_SECTIONS)
               and k not in RESUMABLE_CHANGES]
    if changed:
        k = changed[0]
        raise ConfigError(
            f"{source} was trained with {k}={old.get(k)!r}, now {new[k]!r}"
            f"{f' (and {len(changed) - 1} more)' if len(changed) > 1 else ''}; "
            "use --no-resume or another --out"
        )


@dataclass
class Run:
    """A training run of this process. ``model`` is the bare model (torchvision's
    ``model_without_ddp``: saved, validated); ``net`` what the steps run (DDP and/or compiled)."""

    cfg: Config
    info: D.DistInfo
    location: Location
    flags: dict[str, bool]
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    loss_fn: Any
    train_loader: Any
    sampler: D.ResumableDistributedSampler
    val_loader: Any
    net: torch.nn.Module | None = None          # what steps run: DDP and/or compiled ``model``
    progress: Progress = field(default_factory=Progress)
    start_it: int = 0
    resumed_from: str | None = None
    run_id: str | None = None
    restarts: int = 0                           # torchrun's elastic restarts (D.restart_count)
    uri: str | None = None
    logger: tracking.RunLogger | None = None
    bar: Any = None

    @classmethod
    def create(cls, cfg: Config, info: D.DistInfo, location: Location, data: Path, split: Path,
               quarantine: Path | None) -> Run:
        """Loaders, model, SGD with poly decay and the loss, on this process's device."""
        from egnet.models import build_model
        from egnet.training.losses import SegExposureLoss

        t = cfg.train
        flags = configure_backends(cfg, info.device)
        uri = tracking.connect_mlflow(cfg) if info.is_main else None
        train_loader, sampler, val_loader = make_loaders(cfg, data, split, quarantine, info)
        model = build_model(cfg.model).to(info.device)
        if flags["channels_last"]:
            model = model.to(memory_format=torch.channels_last)
        model.train()
        optimizer = torch.optim.SGD(model.parameters(), lr=t.lr, momentum=t.momentum,
                                    weight_decay=t.weight_decay)
        scheduler = torch.optim.lr_scheduler.PolynomialLR(optimizer, total_iters=t.iterations,
                                                          power=t.poly_power)
        return cls(cfg, info, location, flags, model, optimizer, scheduler, SegExposureLoss(t.alpha, t.beta),
                   train_loader, sampler, val_loader, uri=uri)

    @property
    def per_batch(self) -> int:
        return self.sampler.batch

    def restore(self, resume: bool) -> None:
        """Rank 0 picks the newest readable checkpoint (or, without ``resume``, deletes them);
        every rank loads the same one. Then wrap for DDP (and compile)."""
        info, location = self.info, self.location
        if info.is_main and not resume:
            for _, name in ckpt.list_checkpoints(location):
                location.delete(name)
        found = ckpt.latest_train_state(location) if (info.is_main and resume) else None
        name = D.broadcast_object(found[1] if found else None)
        if name is not None:
            state = found[0] if found else ckpt.read_location_checkpoint(location, name)
            check_resumable(state["config"], self.cfg, location.child(name))
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            ckpt.set_rng_state(state["rng"])
            self.start_it, self.resumed_from = int(state["iteration"]), location.child(name)
            self.progress = Progress(list(state.get("history", [])), list(state.get("val", [])))
            self.run_id = state.get("mlflow_run_id")
        if info.is_main and resume and not self.run_id and location.exists(RUN_ID_FILE):
            self.run_id = location.read_text(RUN_ID_FILE).strip() or None
        self.net, self.model = D.wrap_model(self.model, info)
        if self.flags["compile"]:
            self.net = torch.compile(self.net)

    def start_tracking(self, data: Path, split: Path, stats_json: Path | None) -> None:
        """Rank 0: start (or reopen) the MLflow run; params and the drift reference on a fresh start."""
        if not self.info.is_main:
            return
        cfg, t = self.cfg, self.cfg.train
        self.run_id = tracking.start_run(cfg, self.uri, self.run_id, tracking.run_tags(cfg, data, split))
        self.location.write_text(RUN_ID_FILE, self.run_id + "\n")
        self.logger = tracking.RunLogger(self.run_id, self.uri)
        # one run across elastic restarts: the count as a tag, and a metric at the iteration resumed from
        self.logger.safe("set_tag", self.logger.client.set_tag, self.run_id, "restarts", str(self.restarts))
        if self.restarts:
            self.logger.log({"restarts": float(self.restarts)}, self.start_it)
        if self.start_it == 0:
            import mlflow

            self.logger.safe("log_params", mlflow.log_params, {k: str(v) for k, v in cfg.flat().items()})
            if stats_json is not None:  # the reference `egnet data drift` compares new data with
                self.logger.safe("log data stats", tracking.log_data_stats, self.run_id, stats_json, self.uri)
        log.info("run %s: %s, %d process(es) x batch %d, %d loader worker(s) each, iterations %d..%d%s",
                 self.run_id, self.info.device, self.info.world_size, self.per_batch,
                 self.train_loader.num_workers, self.start_it, t.iterations,
                 f" (resumed from {self.resumed_from})" if self.resumed_from else "")

    def open_bar(self) -> None:
        """Rank 0: the training progress bar (tqdm; off without a terminal, where log lines replace it)."""
        if self.info.is_main:
            from tqdm import tqdm

            self.bar = tqdm(total=self.cfg.train.iterations, initial=self.start_it, desc="train", unit="it",
                            disable=None, dynamic_ncols=True)

    def save(self, it: int) -> None:
        """Rank 0: the full train state as ``checkpoints/ckpt_<it>.pt``."""
        if self.info.is_main:
            ckpt.save_train_state(
                self.location, iteration=it, cfg=self.cfg, model=self.model,
                optimizer=self.optimizer, scheduler=self.scheduler,
                extra={"mlflow_run_id": self.run_id, "history": self.progress.history,
                       "val": self.progress.val, "world_size": self.info.world_size})

    def validate(self, it: int) -> None:
        """Val mIoU / mEF1 on the val subset (every rank takes part), logged by rank 0."""
        if len(self.val_loader.dataset) == 0 and not self.info.distributed:
            return
        m = val_metrics(self.model, self.val_loader, self.cfg, self.info.device, self.flags)
        if self.info.is_main:
            entry = {"iteration": it, "val_mIoU": m["mIoU"], "val_mEF1": m["mEF1"]}
            self.progress.val.append(entry)
            log.info("val at iteration %d: mIoU %s, mEF1 %s (%d images)", it, fmt(m["mIoU"], missing="n/a"),
                     fmt(m["mEF1"], missing="n/a"), m.get("num_images", 0))
            self.logger.log({k: v for k, v in entry.items() if k != "iteration" and v is not None}, it)

    def log_losses(self, entry: dict[str, float]) -> None:
        """Rank 0: a closed log window into the history, MLflow, and the bar (or a log line)."""
        if not self.info.is_main:
            return
        it = int(entry["iteration"])
        self.progress.history.append(entry)
        self.logger.log({k: v for k, v in entry.items() if k != "iteration"}, it)
        if self.bar is not None and not self.bar.disable:
            self.bar.set_postfix(loss=f"{entry['loss_total']:.3f}", lr=f"{entry['lr']:.2e}")
            self.bar.update(it - self.bar.n)
        else:  # no terminal (a pod's log): one line per log window instead of a bar
            log.info("iteration %d: loss %.4f (ce %.4f, exposure %.4f), lr %.3g, %.1f images/s", it,
                     entry["loss_total"], entry["loss_ce"], entry["loss_exposure"], entry["lr"],
                     entry["images_per_s"])

    def finish(self, it: int, stopped: bool, wall: float) -> dict[str, Any]:
        """Rank 0: ``model.pt`` (unless stopped), train_summary.json, the run's end; returns the summary."""
        if self.bar is not None:
            self.bar.close()
        t, info = self.cfg.train, self.info
        if not stopped:
            ckpt.save_final(self.location, model=self.model, cfg=self.cfg, iteration=it)
        summary = {
            "status": "stopped" if stopped else "finished",
            "iteration": it, "iterations": t.iterations, "start_iteration": self.start_it,
            "resumed_from": self.resumed_from, "world_size": info.world_size, "global_batch": t.batch_size,
            "per_process_batch": self.per_batch, "device": str(info.device), "wall_s": round(wall, 2),
            "images_per_s": round((it - self.start_it) * t.batch_size / wall, 3) if wall > 0 else None,
            "mlflow_run_id": self.run_id, "tracking_uri": self.uri, "params_hash": self.cfg.params_hash(),
            "model": None if stopped else self.location.child(ckpt.FINAL_NAME),
            "final": self.progress.history[-1] if self.progress.history else None,
            "peak_memory_gib": (round(torch.cuda.max_memory_allocated(info.device) / 2**30, 3)
                                if info.device.type == "cuda" else None),
            "val": self.progress.val, "history": self.progress.history,
        }
        self.logger.flush(final=True)  # first: the summary then says whether the last values got there
        summary["tracking_gaps"] = report_gaps(self.logger)
        if not stopped:
            self.location.write_text(SUMMARY_FILE, json.dumps(summary, indent=2, allow_nan=False) + "\n")
        tracking.end_run("KILLED" if stopped else "FINISHED")
        return summary


def report_gaps(logger: tracking.RunLogger) -> list[dict[str, Any]]:
    """The tracking server's outages during this run: one warning line, the run tag
    ``tracking_gaps`` (JSON, if the server answers now); returned for train_summary.json."""
    gaps = logger.gap_report()
    if gaps:
        lost = sum(g.get("values_lost", 0) + g["values_dropped"] for g in gaps)
        spans = ", ".join(f"{g['from']}..{g['to'] or 'end'} (iterations {g['from_iteration']}-"
                          f"{g['to_iteration'] or 'end'})" for g in gaps[:3])
        log.warning("MLflow was unreachable %d time(s) during training: %s%s; %s; see tracking_gaps in %s",
                    len(gaps), spans, " ..." if len(gaps) > 3 else "",
                    f"{lost} metric value(s) never logged" if lost else "every metric value logged late",
                    SUMMARY_FILE)
        logger.safe("set_tag", logger.client.set_tag, logger.run_id, "tracking_gaps", json.dumps(gaps[-20:]))
    return gaps
