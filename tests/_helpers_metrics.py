"""Random label maps for metric tests, and the gloo rank worker (kept here, light to import,
because torch.multiprocessing.spawn re-imports the worker's module in every child)."""

from __future__ import annotations

import numpy as np
import torch

from egnet.data import labels
from egnet.data.exposure import NUM_BINS
from egnet.metrics import ExposureConfusion

C = labels.NUM_CLASSES


def random_batch(seed: int, n: int = 3, h: int = 24, w: int = 40, classes: int = C,
                  ignore_frac: float = 0.1, void_pred_frac: float = 0.0, empty_bins: tuple[int, ...] = ()):
    """Random trainIds gt/pred (pred mostly right, so scores are far from 0) and bins."""
    rng = np.random.default_rng(seed)
    gt = rng.integers(0, classes, size=(n, h, w))
    pred = np.where(rng.random((n, h, w)) < 0.6, gt, rng.integers(0, classes, size=(n, h, w)))
    gt[rng.random((n, h, w)) < ignore_frac] = labels.IGNORE_INDEX
    pred[rng.random((n, h, w)) < void_pred_frac] = labels.IGNORE_INDEX
    allowed = np.array([g for g in range(NUM_BINS) if g not in empty_bins])
    bins = allowed[rng.integers(0, len(allowed), size=(n, h, w))]
    return torch.from_numpy(pred), torch.from_numpy(gt), torch.from_numpy(bins)


def rank_worker(rank: int, world: int, init: str, out: str) -> None:
    torch.distributed.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        pred, gt, bins = random_batch(9, n=4, void_pred_frac=0.02)
        half = slice(2 * rank, 2 * rank + 2)
        acc = ExposureConfusion(num_classes=C)
        acc.update(pred[half], gt[half], bins[half])
        acc.all_reduce()
        if rank == 0:
            torch.save({"mat": acc.mat, "void": acc.void_pred, "n": acc.num_images}, out)
    finally:
        torch.distributed.destroy_process_group()
