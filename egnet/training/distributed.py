"""All DDP set-up in one place (torchvision references/segmentation style).

Launch lines (the same ``egnet train`` arguments in every case)::

    # one process (CPU, or one GPU)
    egnet train --data DATA --split SPLIT --out OUT

    # one node, N GPUs (or N CPU processes with gloo)
    torchrun --standalone --nproc_per_node=N -m egnet.cli train --data DATA --split SPLIT --out OUT

    # several nodes: run on every node (NODE_RANK 0..NNODES-1), same rendezvous endpoint
    torchrun --nnodes=NNODES --nproc_per_node=N --node_rank=NODE_RANK \\
        --rdzv_backend=c10d --rdzv_endpoint=HOST:29400 --rdzv_id=JOB \\
        -m egnet.cli train --data DATA --split SPLIT --out s3://bucket/run

    # Kubeflow PyTorchJob / Trainer: the operator sets PET_NNODES, PET_NPROC_PER_NODE,
    # PET_NODE_RANK, PET_MASTER_ADDR, PET_MASTER_PORT, which torchrun reads itself:
    torchrun -m egnet.cli train --data DATA --split SPLIT --out s3://bucket/run

Ranks come from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK; MASTER_ADDR/PORT).
A launcher that starts one process per pod without torchrun (PyTorchJob setting RANK,
WORLD_SIZE, MASTER_ADDR, MASTER_PORT) works too: LOCAL_RANK then defaults to 0.
Backend: NCCL on CUDA, gloo on CPU. The global batch ``train.batch_size`` is split
evenly over processes; BatchNorm becomes SyncBatchNorm when world size > 1, so a step
sees the same batch statistics as one process with the whole batch.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset, DistributedSampler

from egnet.core.errors import ConfigError


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"environment {name}={raw!r}: expected an integer") from None


def env_world_size() -> int:
    """WORLD_SIZE as the launcher set it (1 without a launcher), before joining the group."""
    return _env_int("WORLD_SIZE", 1)


def local_world_size() -> int:
    """Processes of this job on this node (torchrun's LOCAL_WORLD_SIZE; 1 without it)."""
    return _env_int("LOCAL_WORLD_SIZE", 1)


def init(timeout_min: int = 30) -> DistInfo:
    """Join the process group the launcher describes (no-op for one process); pick the device."""
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    if world > 1 and not (0 <= rank < world):
        raise ConfigError(f"environment RANK={rank} outside WORLD_SIZE={world}")
    if torch.cuda.is_available():
        n = torch.cuda.device_count()
        if local_rank >= n:
            raise ConfigError(f"LOCAL_RANK={local_rank} but this node has {n} GPU(s); "
                              f"use --nproc_per_node={n} or fewer")
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        kwargs: dict[str, Any] = {"timeout": datetime.timedelta(minutes=timeout_min)}
        if device.type == "cuda":
            kwargs["device_id"] = device  # eager NCCL init, bound to this GPU
        dist.init_process_group(backend=backend, **kwargs)
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=device)


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def per_process_batch(global_batch: int, world_size: int) -> int:
    """``train.batch_size`` (global) / world size; ConfigError if it does not divide."""
    if global_batch % world_size:
        raise ConfigError(
            f"train.batch_size={global_batch} is the global batch and must divide evenly over "
            f"{world_size} processes (per-process batch = batch_size / world size)"
        )
    return global_batch // world_size


class _AllReduceSum(torch.autograd.Function):
    """Sum over processes; its gradient is the sum of the processes' gradients."""

    @staticmethod
    def forward(ctx: Any, t: torch.Tensor) -> torch.Tensor:
        t = t.clone()
        dist.all_reduce(t)
        return t

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class CpuSyncBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are taken over all processes, for CPU (gloo).

    torch's SyncBatchNorm runs on GPUs only. Here each process contributes its count,
    mean and centred sum of squares (combined in float64, so no cancellation), through
    a differentiable all-reduce: autograd then sums
    the statistics' gradients over processes, as SyncBatchNorm's backward does. Same
    parameters and buffers as BatchNorm2d (checkpoints are interchangeable).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized()
                and dist.get_world_size() > 1):
            return super().forward(x)
        c, n = x.shape[1], x.numel() // x.shape[1]
        dims, shape = [0, 2, 3], (1, -1, 1, 1)
        m = x.mean(dims)
        m2 = ((x - m.view(shape)) ** 2).sum(dims)
        md = m.double()
        local = torch.cat([md * n, m2.double() + n * md * md, md.new_tensor([float(n)])])
        total = _AllReduceSum.apply(local)
        count = total[-1]
        mean = total[:c] / count
        var = (total[c:2 * c] / count - mean * mean).clamp(min=0)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                mom = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                unbiased = var * count / (count - 1).clamp(min=1)
                self.running_mean.mul_(1 - mom).add_(mom * mean.to(self.running_mean.dtype))
                self.running_var.mul_(1 - mom).add_(mom * unbiased.to(self.running_var.dtype))
        y = (x - mean.to(x.dtype).view(shape)) * torch.rsqrt(var.to(x.dtype).view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y


def convert_cpu_sync_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm2d by :class:`CpuSyncBatchNorm` (state kept); returns ``module``."""
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            new = CpuSyncBatchNorm(child.num_features, child.eps, child.momentum, child.affine,
                                   child.track_running_stats)
            new.load_state_dict(child.state_dict())
            if child.affine:
                new.weight.requires_grad_(child.weight.requires_grad)
                new.bias.requires_grad_(child.bias.requires_grad)
            new.train(child.training)
            setattr(module, name, new)
        else:
            convert_cpu_sync_batchnorm(child)
    return module


def wrap_model(model: nn.Module, info: DistInfo) -> tuple[nn.Module, nn.Module]:
    """(model to train, model_without_ddp to save). Synchronised BatchNorm + DDP when world size > 1.

    CUDA: torch's SyncBatchNorm; CPU (gloo): :class:`CpuSyncBatchNorm`, as torch's refuses CPU.
    """
    if not info.distributed:
        return model, model
    if info.device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    else:
        model = convert_cpu_sync_batchnorm(model)
    device_ids = [info.device.index] if info.device.type == "cuda" else None
    ddp = nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    return ddp, ddp.module


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum over processes (on a copy); identity for one process."""
    if not (dist.is_available() and dist.is_initialized()):
        return values
    out = values.clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def any_rank(flag: bool, device: torch.device) -> bool:
    """True if ``flag`` is set on any process (e.g. a SIGTERM seen by one of them)."""
    if not (dist.is_available() and dist.is_initialized()):
        return flag
    t = torch.tensor([1 if flag else 0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


#: torchrun sets it in each worker: how often that node's agent has restarted its workers (0 at first)
RESTART_COUNT_ENV = "TORCHELASTIC_RESTART_COUNT"


def restart_count(device: torch.device) -> int:
    """torchrun's elastic restarts of the job so far: the largest TORCHELASTIC_RESTART_COUNT over
    the processes (an agent that restarts only because another node's worker died and re-joined
    may not count it); 0 without torchrun."""
    n = _env_int(RESTART_COUNT_ENV, 0)
    if not (dist.is_available() and dist.is_initialized()):
        return n
    t = torch.tensor([n], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every process."""
    if not (dist.is_available() and dist.is_initialized()):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def sample_seed(seed: int, epoch: int, position: int) -> int:
    """Seed of the sample at ``position`` of epoch ``epoch``'s order (independent streams)."""
    return int(np.random.SeedSequence([seed, epoch, position]).generate_state(1)[0])


class ResumableDistributedSampler(DistributedSampler):
    """Per-epoch shuffled order from (seed, epoch), cut into global batches; resumable mid-epoch.

    Epoch ``e`` is ``randperm(N)`` drawn from ``seed + e``, truncated to whole global batches
    of ``global_batch`` (so every process runs ``len(dataset) // global_batch`` steps per
    epoch whatever the world size). Global batch ``k`` is positions
    ``[k*B, (k+1)*B)`` of that order; process ``r`` takes the slice ``[r*b, (r+1)*b)`` of it
    (b = B / world size), so one process and N processes see the same images in step k.
    Yields ``(index, sample_seed)``: the dataset draws its augmentation from that seed.
    ``set_epoch(e)`` as usual; ``set_start(k)`` skips the first k batches of the epoch
    without loading them (resume).
    """

    def __init__(self, dataset: Dataset, global_batch: int, *, num_replicas: int, rank: int,
                 seed: int = 0, shuffle: bool = True) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle,
                         seed=seed, drop_last=True)
        self.global_batch = global_batch
        self.batch = per_process_batch(global_batch, num_replicas)
        self.batches_per_epoch = len(dataset) // global_batch  # type: ignore[arg-type]
        self.start = 0
        self.num_samples = self.batches_per_epoch * self.batch
        self.total_size = self.batches_per_epoch * global_batch

    def set_start(self, batch: int) -> None:
        if not 0 <= batch <= self.batches_per_epoch:
            raise ValueError(f"start batch {batch} outside 0..{self.batches_per_epoch}")
        self.start = batch

    def __len__(self) -> int:
        return (self.batches_per_epoch - self.start) * self.batch

    def __iter__(self) -> Iterator[tuple[int, int]]:  # type: ignore[override]
        n = len(self.dataset)  # type: ignore[arg-type]
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(self.seed + self.epoch)
            order = torch.randperm(n, generator=g).tolist()
        else:
            order = list(range(n))
        lo = self.rank * self.batch
        for k in range(self.start, self.batches_per_epoch):
            for pos in range(k * self.global_batch + lo, k * self.global_batch + lo + self.batch):
                yield order[pos], sample_seed(self.seed, self.epoch, pos)


def shard(n: int, info: DistInfo) -> list[int]:
    """Indices ``rank, rank + world, ...`` of ``range(n)``: an even split for evaluation."""
    return list(range(info.rank, n, info.world_size))
