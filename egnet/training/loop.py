"""The pieces of one training iteration: loaders, backends, the SGD step, validation, the log window.

Plain functions on tensors and loaders, as torchvision's references/segmentation keeps them;
:mod:`egnet.training.run` holds the state of a run and :mod:`egnet.training.train` the loop.
"""

from __future__ import annotations

import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from egnet.core.config import Config
from egnet.core.errors import DataError
from egnet.data.dataset import SegmentationDataset, to_float, train_transform
from egnet.data.layout import split_pairs
from egnet.training import distributed as D


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def step_seed(seed: int, rank: int, iteration: int) -> int:
    """The torch seed of iteration ``iteration`` on ``rank``: dropout masks are then a function of
    (seed, rank, iteration), identical after a resume."""
    return int(np.random.SeedSequence([seed, 0x5EED, rank, iteration]).generate_state(1)[0])


def _seed_worker(worker_id: int) -> None:
    # each worker's torch seed comes from the loader's generator; derive the others from it
    s = torch.initial_seed() % 2**32
    np.random.seed(s)
    random.seed(s)
    # one worker = one core: OpenCV's own thread pool would compete with the other workers
    import cv2

    cv2.setNumThreads(1)


CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")  # cgroup v2: "<quota> <period>" or "max <period>"


def available_cores() -> int:
    """CPU cores this process may use: its affinity mask, capped by a cgroup v2 CPU quota (a
    Kubernetes CPU limit), which the affinity mask does not show."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        quota, period = CGROUP_CPU_MAX.read_text().split()[:2]
        if quota != "max":
            n = min(n, max(1, -(-int(quota) // int(period))))
    except (OSError, ValueError):
        pass
    return max(1, n)


def resolve_workers(workers: int | str, local_processes: int) -> int:
    """``train.workers`` as a number: ``auto`` = the cores each training process on this node gets
    (``local_processes`` of them, one per GPU) minus one for the training process itself."""
    if workers != "auto":
        return int(workers)
    return max(0, available_cores() // max(1, local_processes) - 1)


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


def make_loaders(cfg: Config, data: Path, split: Path, quarantine: Path | None, info: D.DistInfo):
    """(train loader, its sampler, val loader) for this process."""
    t = cfg.train
    train_pairs, _ = split_pairs(data, split, "train", quarantine)
    if len(train_pairs) < t.batch_size:
        raise DataError(f"{split}/train.txt: {len(train_pairs)} usable images, fewer than "
                        f"train.batch_size={t.batch_size}")
    train_ds = SegmentationDataset(train_pairs, cfg.data.image_size, train=True, transform=train_transform(t))
    sampler = D.ResumableDistributedSampler(train_ds, t.batch_size, num_replicas=info.world_size,
                                            rank=info.rank, seed=t.seed)
    cuda = info.device.type == "cuda"
    workers = resolve_workers(t.workers, D.local_world_size())
    g = torch.Generator().manual_seed(t.seed * 1000 + info.rank)  # never touches the global RNG
    train_loader = DataLoader(
        train_ds, batch_size=sampler.batch, sampler=sampler, num_workers=workers,
        pin_memory=t.pin_memory and cuda, persistent_workers=t.persistent_workers and workers > 0,
        prefetch_factor=t.prefetch_factor if workers > 0 else None,
        drop_last=True, worker_init_fn=_seed_worker, generator=g,
    )
    test_pairs, _ = split_pairs(data, split, "test", quarantine)
    n = min(t.val_max_images, len(test_pairs))
    # evenly spaced over the sorted list: every city, not the first one only
    chosen = [test_pairs[i] for i in np.linspace(0, len(test_pairs) - 1, n).round().astype(int)] if n else []
    val_ds = SegmentationDataset([chosen[i] for i in D.shard(len(chosen), info)], cfg.data.image_size,
                                 train=False, eval_size=t.eval_size)
    val_loader = DataLoader(val_ds, batch_size=1, num_workers=min(workers, 2), worker_init_fn=_seed_worker,
                            pin_memory=t.pin_memory and cuda, generator=torch.Generator().manual_seed(0))
    return train_loader, sampler, val_loader


def sgd_step(net: torch.nn.Module, loss_fn: Any, optimizer: torch.optim.Optimizer, scheduler: Any,
             batch: dict[str, Any], device: torch.device, flags: dict[str, bool]) -> dict[str, torch.Tensor]:
    """One SGD step on a batch from the train loader; returns the detached loss parts and the
    labelled-pixel count, on the device. Nothing here waits for the device (no ``.item()``, no
    blocking copy): the host queues the next step while this one runs."""
    x = to_float(batch["image"].to(device, non_blocking=True))
    if flags["channels_last"]:
        x = x.contiguous(memory_format=torch.channels_last)
    target = batch["label"].to(device, non_blocking=True).long()  # uint8 on the wire, int64 for the loss
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
def val_metrics(model: torch.nn.Module, loader: DataLoader, cfg: Config, device: torch.device,
                flags: dict[str, bool]) -> dict[str, Any]:
    """mIoU / mEF1 on the val shard of every process (counts all-reduced); model left in train mode."""
    from egnet.metrics import ExposureConfusion

    model.eval()
    conf = ExposureConfusion(cfg.model.num_classes, device)
    for batch in loader:
        x = to_float(batch["image"].to(device, non_blocking=True))
        if flags["channels_last"]:
            x = x.contiguous(memory_format=torch.channels_last)
        label = batch["label"].to(device, non_blocking=True)  # uint8: the metric engine takes it as is
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=flags["amp"]):
            logits = model(x)["out"]
        logits = F.interpolate(logits.float(), size=label.shape[-2:], mode="bilinear", align_corners=False)
        conf.update(logits.argmax(1), label, batch["bins"])
    conf.all_reduce()
    model.train()
    return conf.compute(cfg.evaluate.ef1_average)


@dataclass
class LogWindow:
    """The losses of the steps since the last log line, summed on the device.

    ``sums`` = (CE x labelled pixels, labelled pixels, exposure L1, steps), so :meth:`close` gives
    the CE over all labelled pixels of the window's steps on all processes, as one process with
    the whole batch would compute it. Adding a step is device work only; :meth:`close` (once per
    ``log_every`` steps) is where the host waits for the device and the processes meet.

    Host-side clocks: ``waited`` = seconds spent waiting for the loader's next batch,
    ``excluded`` = seconds of boundary work (validation, checkpoints) kept out of the rates.
    """

    device: torch.device
    alpha: float
    beta: float
    lr: float
    sums: torch.Tensor = field(init=False)
    steps: int = 0
    t0: float = field(default_factory=time.perf_counter)
    waited: float = 0.0
    excluded: float = 0.0

    def __post_init__(self) -> None:
        self.sums = torch.zeros(4, device=self.device, dtype=torch.float64)

    def add(self, parts: dict[str, torch.Tensor], lr: float) -> None:
        """One step's parts from :func:`sgd_step` (detached losses and ``labelled``, on the device)."""
        labelled = parts["labelled"].double()
        self.sums += torch.stack([parts["loss_ce"].double() * labelled, labelled,
                                  parts["loss_exposure"].double(), labelled.new_ones(())])
        self.steps += 1
        self.lr = lr

    def close(self, it: int, world_images_per_step: int) -> dict[str, float]:
        """The window's history entry (all-reduced over processes), then start a new window:
        ``loss_total`` = ``alpha * CE + beta * L1``, lr of the last step, global images/s, and the
        fraction of the window this process spent waiting for data."""
        ce_px, px, l1, steps = D.all_reduce_sum(self.sums).tolist()
        ce, l1 = (ce_px / px if px else 0.0), l1 / max(steps, 1)
        now = time.perf_counter()
        span = max(now - self.t0 - self.excluded, 1e-9)
        entry = {"iteration": it, "loss_total": self.alpha * ce + self.beta * l1, "loss_ce": ce,
                 "loss_exposure": l1, "lr": self.lr,
                 "images_per_s": self.steps * world_images_per_step / span,
                 "data_wait_fraction": min(self.waited / span, 1.0)}
        self.sums.zero_()
        self.steps, self.t0, self.waited, self.excluded = 0, now, 0.0, 0.0
        return entry
