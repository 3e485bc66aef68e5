"""`egnet train`: EGNet (or a variant / baseline) on a split, one process or under torchrun.

    # one process (CPU, or one GPU)
    egnet train --data data/nightcity --split outputs/split --out outputs/train
    # one node, 4 GPUs (global batch train.batch_size split over them)
    torchrun --standalone --nproc_per_node=4 -m egnet.cli train --data ... --split ... --out ...
    # multi-node / Kubeflow: see egnet/distributed.py and docs/training.md

Schedule (paper Sec. 5, params.yaml ``train``): SGD (momentum, weight decay), lr poly
decay ``(1 - it / iterations) ** poly_power`` per iteration, random-scale crops with
flip, loss ``alpha * CE + beta * L1(exposure, V)``; periodic validation at
``eval_size`` on up to ``val_max_images`` test images.

Outputs below ``--out`` (a directory or s3://bucket/prefix): ``checkpoints/ckpt_<it>.pt``
(every ``checkpoint_every`` iterations and on SIGTERM/SIGINT), ``model.pt`` (final),
``mlflow_run_id``, ``train_summary.json``. A rerun resumes from the latest readable
checkpoint. Exit codes: 0 done; 143 stopped by SIGTERM (130 by SIGINT) after saving a
checkpoint (128+signal: retryable under a PyTorchJob ``restartPolicy: ExitCode``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from egnet import checkpoint as ckpt
from egnet import distributed as D
from egnet import tracking
from egnet.config import Config, config_from_dict
from egnet.data.dataset import SegmentationDataset, TrainTransform, split_pairs, to_float
from egnet.data.labels import IGNORE_INDEX
from egnet.errors import ConfigError, DataError
from egnet.storage import Location

log = logging.getLogger("egnet.train")

RUN_ID_FILE = "mlflow_run_id"
SUMMARY_FILE = "train_summary.json"
# Keys that may change between a run and its resume: they do not change the weights' trajectory.
RESUMABLE_CHANGES = (
    "train.checkpoint_every", "train.log_every", "train.val_every", "train.val_max_images",
    "train.workers", "train.pin_memory", "train.persistent_workers", "train.compile",
    "train.channels_last", "train.deterministic",
)
TRAJECTORY_SECTIONS = ("model.", "train.", "data.image_size")


class StopFlag:
    """Set by SIGTERM (Kubernetes preemption) or SIGINT; the loop saves and exits at the step's end."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if signum == signal.SIGINT and self.signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now, without the checkpoint
        self.signum = signum

    @contextlib.contextmanager
    def installed(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)
        try:
            yield self
        finally:
            for sig, handler in self._previous.items():
                signal.signal(sig, handler)


@dataclass
class Progress:
    """What a checkpoint carries besides weights: the logged history (for train_summary.json)."""

    history: list[dict[str, float]] = field(default_factory=list)
    val: list[dict[str, float]] = field(default_factory=list)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _step_seed(seed: int, rank: int, iteration: int) -> int:
    return int(np.random.SeedSequence([seed, 0x5EED, rank, iteration]).generate_state(1)[0])


def _seed_worker(worker_id: int) -> None:
    # each worker's torch seed comes from the loader's generator; derive the others from it
    s = torch.initial_seed() % 2**32
    np.random.seed(s)
    random.seed(s)


def configure_backends(cfg: Config, device: torch.device) -> dict[str, bool]:
    """bf16 autocast, channels_last, cudnn.benchmark, compile: on CUDA only, as params say."""
    t = cfg.train
    cuda = device.type == "cuda"
    if t.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=cuda)
    if cuda:
        torch.backends.cudnn.benchmark = not t.deterministic  # fixed crop size: autotuning pays off
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return {"amp": cuda and t.amp, "channels_last": cuda and t.channels_last, "compile": cuda and t.compile}


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


def make_loaders(cfg: Config, data: Path, split: Path, quarantine: Path | None, info: D.DistInfo):
    """(train loader, its sampler, val loader) for this process."""
    t = cfg.train
    train_pairs = split_pairs(data, split, "train", quarantine)
    if len(train_pairs) < t.batch_size:
        raise DataError(f"{split}/train.txt: {len(train_pairs)} usable images, fewer than "
                        f"train.batch_size={t.batch_size}")
    train_ds = SegmentationDataset(train_pairs, cfg.data.image_size, train=True,
                                   transform=TrainTransform.from_config(t))
    sampler = D.ResumableDistributedSampler(train_ds, t.batch_size, num_replicas=info.world_size,
                                            rank=info.rank, seed=t.seed)
    cuda = info.device.type == "cuda"
    g = torch.Generator().manual_seed(t.seed * 1000 + info.rank)  # never touches the global RNG
    train_loader = DataLoader(
        train_ds, batch_size=sampler.batch, sampler=sampler, num_workers=t.workers,
        pin_memory=t.pin_memory and cuda, persistent_workers=t.persistent_workers and t.workers > 0,
        drop_last=True, worker_init_fn=_seed_worker, generator=g,
    )
    test_pairs = split_pairs(data, split, "test", quarantine)
    n = min(t.val_max_images, len(test_pairs))
    # evenly spaced over the sorted list: every city, not the first one only
    chosen = [test_pairs[i] for i in np.linspace(0, len(test_pairs) - 1, n).round().astype(int)] if n else []
    val_ds = SegmentationDataset([chosen[i] for i in D.shard(len(chosen), info)], cfg.data.image_size,
                                 train=False, eval_size=t.eval_size)
    val_loader = DataLoader(val_ds, batch_size=1, num_workers=min(t.workers, 2), pin_memory=t.pin_memory and cuda,
                            generator=torch.Generator().manual_seed(0))
    return train_loader, sampler, val_loader


def train_step(net: torch.nn.Module, loss_fn: Any, optimizer: torch.optim.Optimizer, scheduler: Any,
               batch: dict[str, Any], device: torch.device, flags: dict[str, bool]) -> dict[str, torch.Tensor]:
    """One SGD step on a batch from the train loader; returns the detached loss parts (on device)."""
    x = to_float(batch["image"].to(device, non_blocking=True))
    if flags["channels_last"]:
        x = x.contiguous(memory_format=torch.channels_last)
    target = batch["label"].to(device, non_blocking=True)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=flags["amp"]):
        outputs = net(x)
    total, parts = loss_fn(outputs, target, x)  # float32 inside
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    return parts


@torch.no_grad()
def validate(model: torch.nn.Module, loader: DataLoader, cfg: Config, device: torch.device,
             flags: dict[str, bool]) -> dict[str, Any]:
    """mIoU / mEF1 on the val shard of every process (counts all-reduced); model left in train mode."""
    from egnet.metrics import ExposureConfusion

    model.eval()
    conf = ExposureConfusion(cfg.model.num_classes, device)
    for batch in loader:
        x = to_float(batch["image"].to(device, non_blocking=True))
        if flags["channels_last"]:
            x = x.contiguous(memory_format=torch.channels_last)
        label = batch["label"].to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=flags["amp"]):
            logits = model(x)["out"]
        logits = F.interpolate(logits.float(), size=label.shape[-2:], mode="bilinear", align_corners=False)
        conf.update(logits.argmax(1), label, batch["bins"])
    conf.all_reduce()
    model.train()
    return conf.compute(cfg.evaluate.ef1_average)


def check_training(cfg: Config, source: str = "params") -> None:
    """Checks across sections that only training needs; `egnet train` runs them before any work.

    Not part of load_config (ConfigError naming the key all the same): the data steps must accept a small ``data.image_size`` under
    the paper profile (crop 300), which only training cannot use.
    """
    w, h = cfg.data.image_size
    if cfg.train.crop_size > min(w, h):
        raise ConfigError(f"{source}: 'train.crop_size' = {cfg.train.crop_size}: larger than the images' "
                          f"shorter side ({min(w, h)} of data.image_size {w}x{h}); crops would be mostly padding")


def train(cfg: Config, data: Path, split: Path, out: str, *, resume: bool = True,
          quarantine: Path | None = None, stop: StopFlag | None = None,
          stats_json: Path | None = None) -> dict[str, Any]:
    """Train to ``cfg.train.iterations`` (or until ``stop``); returns the summary (rank 0's is written).

    ``stats_json``: the split's stats.json, logged into the run as ``data/stats.json`` (drift reference).
    """
    from egnet.losses import SegExposureLoss
    from egnet.models import build_model

    t = cfg.train
    check_training(cfg)
    # before joining the job: a batch that does not divide would otherwise first wait for every rank
    D.per_process_batch(t.batch_size, D._env_int("WORLD_SIZE", 1))
    stop = stop or StopFlag()
    location = Location.from_str(out)
    info = D.init()
    deterministic_before = (torch.are_deterministic_algorithms_enabled(),
                            torch.is_deterministic_algorithms_warn_only_enabled())
    try:
        per_batch = D.per_process_batch(t.batch_size, info.world_size)
        flags = configure_backends(cfg, info.device)
        seed_everything(t.seed)
        uri = tracking.connect(cfg) if info.is_main else None

        train_loader, sampler, val_loader = make_loaders(cfg, data, split, quarantine, info)
        model = build_model(cfg.model).to(info.device)
        if flags["channels_last"]:
            model = model.to(memory_format=torch.channels_last)
        model.train()
        optimizer = torch.optim.SGD(model.parameters(), lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)
        scheduler = torch.optim.lr_scheduler.PolynomialLR(optimizer, total_iters=t.iterations, power=t.poly_power)
        loss_fn = SegExposureLoss(t.alpha, t.beta)

        # --- resume: rank 0 picks the checkpoint, every rank loads the same one
        progress, start_it, resumed_from, run_id = Progress(), 0, None, None
        if info.is_main and not resume:
            for _, name in ckpt.list_checkpoints(location):
                location.delete(name)
        found = ckpt.latest_train_state(location) if (info.is_main and resume) else None
        name = D.broadcast_object(found[1] if found else None)
        if name is not None:
            state = found[0] if found else ckpt.read_location_checkpoint(location, name)
            check_resumable(state["config"], cfg, location.child(name))
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            ckpt.set_rng_state(state["rng"])
            start_it, resumed_from = int(state["iteration"]), location.child(name)
            progress = Progress(list(state.get("history", [])), list(state.get("val", [])))
            run_id = state.get("mlflow_run_id")
            del state
        if info.is_main and resume and not run_id and location.exists(RUN_ID_FILE):
            run_id = location.read_text(RUN_ID_FILE).strip() or None

        net, model_without_ddp = D.wrap_model(model, info)
        if flags["compile"]:
            net = torch.compile(net)

        logger = None
        if info.is_main:
            run_id = tracking.start_run(cfg, uri, run_id, tracking.run_tags(cfg, data, split))
            location.write_text(RUN_ID_FILE, run_id + "\n")
            logger = tracking.RunLogger(run_id, uri)
            if start_it == 0:
                import mlflow
                logger.safe("log_params", mlflow.log_params, {k: str(v) for k, v in cfg.flat().items()})
                if stats_json is not None:  # the reference `egnet data drift` compares new data with
                    logger.safe("log data stats", tracking.log_data_stats, run_id, stats_json, uri)
            log.info("run %s: %s, %d process(es) x batch %d, iterations %d..%d%s", run_id, info.device,
                     info.world_size, per_batch, start_it, t.iterations,
                     f" (resumed from {resumed_from})" if resumed_from else "")

        def save(it: int) -> None:
            if info.is_main:
                ckpt.save_train_state(
                    location, iteration=it, cfg=cfg, model=model_without_ddp, optimizer=optimizer,
                    scheduler=scheduler, extra={"mlflow_run_id": run_id, "history": progress.history,
                                                "val": progress.val, "world_size": info.world_size})

        def run_val(it: int) -> None:
            if len(val_loader.dataset) == 0 and not info.distributed:
                return
            m = validate(model_without_ddp, val_loader, cfg, info.device, flags)
            if info.is_main:
                entry = {"iteration": it, "val_mIoU": m["mIoU"], "val_mEF1": m["mEF1"]}
                progress.val.append(entry)
                log.info("val at iteration %d: mIoU %s, mEF1 %s (%d images)", it, _fmt(m["mIoU"]),
                         _fmt(m["mEF1"]), m.get("num_images", 0))
                logger.log({k: v for k, v in entry.items() if k != "iteration" and v is not None}, it)

        if start_it == 0 and t.val_every <= t.iterations:
            run_val(0)  # the untrained model's score: the baseline in the same run
        it, wall0 = start_it, time.perf_counter()
        # sums over the log window: CE x labelled pixels, labelled pixels, exposure L1, steps
        window = {"sum": torch.zeros(4, device=info.device, dtype=torch.float64), "n": 0,
                  "t": time.perf_counter(), "lr": t.lr, "alpha": t.alpha, "beta": t.beta}
        bar = _progress_bar(info, start_it, t.iterations)
        stopped = False
        while it < t.iterations and not stopped:
            epoch, k = divmod(it, sampler.batches_per_epoch)
            sampler.set_epoch(epoch)
            sampler.set_start(k)
            for batch in train_loader:
                # dropout masks a function of (seed, rank, iteration): identical after a resume
                torch.manual_seed(_step_seed(t.seed, info.rank, it))
                window["lr"] = scheduler.get_last_lr()[0]
                parts = train_step(net, loss_fn, optimizer, scheduler, batch, info.device, flags)
                labelled = (batch["label"] != IGNORE_INDEX).sum().to(info.device, torch.float64)
                window["sum"] += torch.stack([parts["loss_ce"].double() * labelled, labelled,
                                              parts["loss_exposure"].double(), labelled.new_ones(())])
                window["n"] += 1
                it += 1
                if it % t.log_every == 0 or it == t.iterations:
                    _log_window(window, it, info, progress, logger, bar, per_batch)
                if it % t.val_every == 0 or it == t.iterations:
                    run_val(it)
                stopped = D.any_rank(stop.signum is not None, info.device)
                if it % t.checkpoint_every == 0 or it == t.iterations or stopped:
                    save(it)
                if stopped or it >= t.iterations:
                    break
        if bar is not None:
            bar.close()

        summary: dict[str, Any] = {}
        if info.is_main:
            wall = time.perf_counter() - wall0
            if not stopped:
                ckpt.save_final(location, model=model_without_ddp, cfg=cfg, iteration=it)
            summary = {
                "status": "stopped" if stopped else "finished",
                "iteration": it, "iterations": t.iterations, "start_iteration": start_it,
                "resumed_from": resumed_from, "world_size": info.world_size, "global_batch": t.batch_size,
                "per_process_batch": per_batch, "device": str(info.device), "wall_s": round(wall, 2),
                "images_per_s": round((it - start_it) * t.batch_size / wall, 3) if wall > 0 else None,
                "mlflow_run_id": run_id, "tracking_uri": uri, "params_hash": cfg.params_hash(),
                "model": None if stopped else location.child(ckpt.FINAL_NAME),
                "final": progress.history[-1] if progress.history else None,
                "peak_memory_gib": (round(torch.cuda.max_memory_allocated(info.device) / 2**30, 3)
                                    if info.device.type == "cuda" else None),
                "val": progress.val, "history": progress.history,
            }
            logger.flush(final=True)  # first: the summary then says whether the last values got there
            summary["tracking_gaps"] = _report_gaps(logger)
            if not stopped:
                location.write_text(SUMMARY_FILE, _json(summary))
            tracking.end_run("KILLED" if stopped else "FINISHED")
        D.barrier()
        return summary
    except BaseException:
        if info.is_main:
            with contextlib.suppress(Exception):
                import mlflow
                if mlflow.active_run() is not None:
                    tracking.end_run("FAILED")
        raise
    finally:
        torch.use_deterministic_algorithms(deterministic_before[0], warn_only=deterministic_before[1])
        D.cleanup()


def _report_gaps(logger: tracking.RunLogger) -> list[dict[str, Any]]:
    """The tracking server's outages during this run: one warning line, the run tag
    ``tracking_gaps`` (JSON, if the server answers now); returned for train_summary.json."""
    import json

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


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.4f}"


def _json(obj: Any) -> str:
    import json

    return json.dumps(obj, indent=2, allow_nan=False) + "\n"


def _progress_bar(info: D.DistInfo, start: int, total: int):
    if not info.is_main:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=start, desc="train", unit="it", disable=None, dynamic_ncols=True)


def _log_window(window: dict[str, Any], it: int, info: D.DistInfo, progress: Progress,
                logger: tracking.RunLogger | None, bar: Any, per_batch: int) -> None:
    """Window losses -> history + MLflow: CE over all labelled pixels of the window's steps on all
    processes (as one process with the whole batch would compute it), mean exposure L1, the total
    ``alpha * CE + beta * L1``; lr of the last step; global images/s."""
    ce_px, px, l1, steps = D.all_reduce_sum(window["sum"]).tolist()
    ce, l1 = (ce_px / px if px else 0.0), l1 / max(steps, 1)
    means = [window["alpha"] * ce + window["beta"] * l1, ce, l1]
    now = time.perf_counter()
    ips = window["n"] * per_batch * info.world_size / max(now - window["t"], 1e-9)
    entry = {"iteration": it, "loss_total": means[0], "loss_ce": means[1], "loss_exposure": means[2],
             "lr": window["lr"], "images_per_s": ips}
    window["sum"].zero_()
    window["n"], window["t"] = 0, now
    if info.is_main:
        progress.history.append(entry)
        logger.log({k: v for k, v in entry.items() if k != "iteration"}, it)
        if bar is not None and not bar.disable:
            bar.set_postfix(loss=f"{means[0]:.3f}", lr=f"{window['lr']:.2e}")
            bar.update(it - bar.n)
        else:  # no terminal (a pod's log): one line per log window instead of a bar
            log.info("iteration %d: loss %.4f (ce %.4f, exposure %.4f), lr %.3g, %.1f images/s",
                     it, means[0], means[1], means[2], window["lr"], ips)


def main(args: Any, cfg: Config) -> int:
    """CLI handler: `egnet train --data --split --out [--no-resume] [--quarantine]`."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="egnet train: %(message)s", stream=sys.stderr)
    stop = StopFlag()
    with stop.installed():
        stats_json = Path(args.stats) / "stats.json" if args.stats else None
        if stats_json is not None and not stats_json.is_file():
            raise DataError(f"{stats_json}: not found (--stats takes an `egnet data stats --out` folder)")
        summary = train(cfg, Path(args.data), Path(args.split), str(args.out), resume=not args.no_resume,
                        quarantine=args.quarantine, stop=stop, stats_json=stats_json)
    if stop.signum is not None:
        if summary:
            print(f"egnet train: stopped by {signal.Signals(stop.signum).name} at iteration "
                  f"{summary['iteration']}; checkpoint saved in {Location.from_str(args.out).child(ckpt.CKPT_DIR)}; "
                  "run the same command again to resume", file=sys.stderr)
        return 128 + stop.signum
    if summary:
        val = summary["val"][-1] if summary["val"] else {}
        print(f"egnet train: done, {summary['iteration']} iterations, model {summary['model']}, "
              f"MLflow run {summary['mlflow_run_id']}"
              + (f", val mIoU {val['val_mIoU']:.4f}" if val.get("val_mIoU") is not None else ""))
    return 0
