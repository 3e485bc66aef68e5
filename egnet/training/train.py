"""`egnet train`: EGNet (or a variant / baseline) on a split, one process or under torchrun.

    # one process (CPU, or one GPU)
    egnet train --data data/nightcity --split outputs/split --out outputs/train
    # one node, 4 GPUs (global batch train.batch_size split over them)
    torchrun --standalone --nproc_per_node=4 -m egnet.cli train --data ... --split ... --out ...
    # multi-node / Kubeflow: see egnet/training/distributed.py and docs/training.md

Schedule (paper Sec. 5, params.yaml ``train``; docs/training.md says what is the paper's):
SGD (momentum, weight decay), lr poly decay ``(1 - it / iterations) ** poly_power`` per
iteration, the whole image resized to ``crop_size`` (``train.input: resize``) or
random-scale crops (``crop``), with flip, loss ``alpha * CE + beta * L1(exposure, V)``;
periodic validation at ``eval_size`` on up to ``val_max_images`` test images.

Outputs below ``--out`` (a directory or s3://bucket/prefix): ``checkpoints/ckpt_<it>.pt``
(every ``checkpoint_every`` iterations and on SIGTERM/SIGINT), ``model.pt`` (final),
``mlflow_run_id``, ``train_summary.json``. A rerun resumes from the latest readable
checkpoint. Exit codes: 0 done; 143 stopped by SIGTERM (130 by SIGINT) after saving a
checkpoint (128+signal: retryable under a PyTorchJob ``restartPolicy: ExitCode``).

Laid out as torchvision's references/segmentation: :func:`train_iterations` is the loop (its
pieces in :mod:`egnet.training.loop`), :class:`egnet.training.run.Run` the run's state
(resume, MLflow, checkpoints, summary), :func:`train` puts them together, :func:`main` is the CLI.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from egnet.core.config import Config
from egnet.core.errors import ConfigError, DataError
from egnet.core.storage import Location
from egnet.tracking import runs as tracking
from egnet.training import checkpoint as ckpt
from egnet.training import distributed as D
from egnet.training.loop import LogWindow, seed_everything, sgd_step, step_seed
from egnet.training.run import Run

log = logging.getLogger(__name__)


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


def check_training(cfg: Config, source: str = "params") -> None:
    """Checks across sections that only training needs; `egnet train` runs them before any work.

    Not part of load_config (ConfigError naming the key all the same): the data steps must accept
    a small ``data.image_size`` under the paper profile (crop 300), which only training cannot use.
    """
    w, h = cfg.data.image_size
    if cfg.train.crop_size > min(w, h):
        why = ("crops would be mostly padding" if cfg.train.input == "crop"
               else "train.input resize would only upsample it")
        raise ConfigError(f"{source}: 'train.crop_size' = {cfg.train.crop_size}: larger than the images' "
                          f"shorter side ({min(w, h)} of data.image_size {w}x{h}); {why}")


def train_iterations(run: Run, stop: StopFlag) -> tuple[int, bool]:
    """Iterations ``run.start_it`` .. ``train.iterations`` (or until ``stop``): SGD steps, a log
    line every ``log_every``, validation every ``val_every``, a checkpoint every ``checkpoint_every``
    and on stop. Returns (iterations done, stopped).

    Between log boundaries the host never waits for the device: a step's losses stay on the
    device in the log window, and the processes agree on a stop signal only at log boundaries
    (one all-reduce there; a single process reads its own flag after every step, for free).
    """
    t, info = run.cfg.train, run.info
    it, stopped = run.start_it, False
    window = LogWindow(info.device, t.alpha, t.beta, t.lr)
    run.open_bar()
    while it < t.iterations and not stopped:
        epoch, k = divmod(it, run.sampler.batches_per_epoch)
        run.sampler.set_epoch(epoch)
        run.sampler.set_start(k)
        batches = iter(run.train_loader)
        while True:
            wait0 = time.perf_counter()
            batch = next(batches, None)
            if batch is None:
                break
            window.waited += time.perf_counter() - wait0
            torch.manual_seed(step_seed(t.seed, info.rank, it))
            lr = run.scheduler.get_last_lr()[0]
            parts = sgd_step(run.net, run.loss_fn, run.optimizer, run.scheduler, batch, info.device,
                             run.flags)
            window.add(parts, lr)
            it += 1
            log_now = it % t.log_every == 0 or it == t.iterations
            if log_now:
                run.log_losses(window.close(it, run.per_batch * info.world_size))
            boundary0 = time.perf_counter()
            if it % t.val_every == 0 or it == t.iterations:
                run.validate(it)
            if log_now or not info.distributed:
                stopped = D.any_rank(stop.signum is not None, info.device)
            if it % t.checkpoint_every == 0 or it == t.iterations or stopped:
                run.save(it)
            window.excluded += time.perf_counter() - boundary0
            if stopped or it >= t.iterations:
                break
    return it, stopped


@contextlib.contextmanager
def _deterministic_setting_kept() -> Iterator[None]:
    """``train.deterministic`` switches torch's global flag; put it back for the caller."""
    before = (torch.are_deterministic_algorithms_enabled(),
              torch.is_deterministic_algorithms_warn_only_enabled())
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])


def train(cfg: Config, data: Path, split: Path, out: str, *, resume: bool = True,
          quarantine: Path | None = None, stop: StopFlag | None = None,
          stats_json: Path | None = None) -> dict[str, Any]:
    """Train to ``cfg.train.iterations`` (or until ``stop``); returns the summary (rank 0's is written).

    ``stats_json``: the split's stats.json, logged into the run as ``data/stats.json`` (drift reference).
    """
    t = cfg.train
    check_training(cfg)
    # before joining the job: a batch that does not divide would otherwise first wait for every rank
    D.per_process_batch(t.batch_size, D.env_world_size())
    stop = stop or StopFlag()
    info = D.init()
    with _deterministic_setting_kept():
        try:
            D.per_process_batch(t.batch_size, info.world_size)
            seed_everything(t.seed)
            run = Run.create(cfg, info, Location.from_str(out), data, split, quarantine)
            run.restore(resume)
            run.restarts = D.restart_count(info.device)
            run.start_tracking(data, split, stats_json)
            if run.start_it == 0 and t.val_every <= t.iterations:
                run.validate(0)  # the untrained model's score: the baseline in the same run
            wall0 = time.perf_counter()
            it, stopped = train_iterations(run, stop)
            summary = run.finish(it, stopped, time.perf_counter() - wall0) if info.is_main else {}
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
            D.cleanup()


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
                  f"{summary['iteration']}; "
                  f"checkpoint saved in {Location.from_str(args.out).child(ckpt.CKPT_DIR)}; "
                  "run the same command again to resume", file=sys.stderr)
        return 128 + stop.signum
    if summary:
        val = summary["val"][-1] if summary["val"] else {}
        print(f"egnet train: done, {summary['iteration']} iterations, model {summary['model']}, "
              f"MLflow run {summary['mlflow_run_id']}"
              + (f", val mIoU {val['val_mIoU']:.4f}" if val.get("val_mIoU") is not None else ""))
    return 0
