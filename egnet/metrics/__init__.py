"""The one definition of the metrics: mIoU, pixel accuracy, EF1 per exposure bin, mEF1.

Everything derives from one accumulator of pixel counts indexed by (exposure bin,
ground truth, prediction), filled in one ``bincount`` pass per batch on the
tensors' device, and summed across ranks as counts (never as finished metrics),
as torchvision's references/segmentation ``ConfusionMatrix`` does. Definitions
(docs/metrics.md):

- IoU_c = TP / (TP + FP + FN) over all labelled pixels; a class with no gt and no
  predicted pixel has no IoU (None). mIoU = mean over classes with an IoU, exactly
  cityscapesscripts' "Score Average" for classes.
- pixel_acc = correct labelled pixels / labelled pixels.
- EF1_g (paper Eq. 2, beta = 1) = F1 of the labelled pixels whose exposure falls
  in bin g, averaged over classes like ``sklearn.metrics.f1_score`` with
  ``zero_division=0``: ``weighted`` (default; weights = gt pixels per class),
  ``macro`` (classes present in gt or prediction of the bin) or ``micro``.
  A bin without labelled pixels has no EF1 (None).
- mEF1 (paper Eq. 3) = mean of EF1_g over the bins that have one.

Ignore pixels (gt 255) are dropped. A prediction that is not a class (255, or a
void labelId mapped to 255) at a labelled pixel is wrong: a false negative of the
gt class and a false positive of no class (cityscapesscripts' rule).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from egnet.core.text import fmt, render_table
from egnet.data.exposure import BIN_NAMES, NUM_BINS
from egnet.data.labels import CLASS_NAMES, IGNORE_INDEX
from egnet.metrics import counting
from egnet.metrics.counting import count_pixels  # noqa: F401 - part of this package's API

AVERAGES = ("weighted", "macro", "micro")


class ExposureConfusion:
    """Pixel counts per (exposure bin, gt class, predicted class) and the metrics from them.

    ``table``: int64 [10, C, C+1] on ``device``, predicted classes then not-a-class; ``mat``
    ([10, C, C]) and ``void_pred`` ([10, C]: labelled pixels whose prediction is not a class,
    e.g. 255) are views of it; ``num_images``: images seen.
    Usage: ``update`` per batch, ``all_reduce`` once under torch.distributed, then
    ``compute`` (on every rank or rank 0).

    No host synchronisation on an accelerator: inputs out of range are counted aside on the
    device and raise when the counts are read (:meth:`check`, called by :meth:`counts`); on
    the CPU they raise in :meth:`update` itself, before anything is added.
    """

    def __init__(self, num_classes: int = 19, device: str | torch.device = "cpu") -> None:
        if not 0 < int(num_classes) < IGNORE_INDEX:
            raise ValueError(f"num_classes must lie in 1..{IGNORE_INDEX - 1}, got {num_classes}")
        self.num_classes = int(num_classes)
        self.device = torch.device(device)
        self.table = torch.zeros(NUM_BINS, self.num_classes, self.num_classes + 1, dtype=torch.int64,
                                 device=self.device)
        self.mat = self.table[..., :self.num_classes]
        self.void_pred = self.table[..., self.num_classes]
        self._invalid = torch.zeros(2, dtype=torch.int64, device=self.device)  # bad bins, bad gt pixels
        self.num_images = 0

    @property
    def class_names(self) -> tuple[str, ...]:
        if self.num_classes == len(CLASS_NAMES):
            return CLASS_NAMES
        return tuple(f"class_{i}" for i in range(self.num_classes))

    def count(self, pred: torch.Tensor, target: torch.Tensor, bins: torch.Tensor) -> torch.Tensor:
        """The [10, C, C+1] int64 counts of a batch on ``device``, not added: one counting pass
        (:func:`count_pixels`' kernel). NxHxW (or HxW) integer trainIds ``pred``/``target``
        (255 = ignore; uint8 is counted as it is, wider types are narrowed) and exposure
        ``bins`` (0..9, from ``exposure.bin_index_torch``). Any prediction that is not a class
        (255, negative, ...) counts in the not-a-class column."""
        counting.check_shapes(pred, target, bins)
        if pred.is_floating_point() or target.is_floating_point() or bins.is_floating_point():
            raise ValueError("bins, target and predictions must be integer tensors")
        c, dev = self.num_classes, self.device
        pred, target, bins = (x if x.device == dev else x.to(dev, non_blocking=True)
                              for x in (pred, target, bins))
        t8, b8 = counting.gt_bins_u8(target, bins, c)
        table = counting.count_table(b8, t8, counting.ids_u8(pred, c), c, c + 1, c)
        if counting.on_cpu(table):
            counting.check_table(table, target, c, c + 1)
        else:  # checked when the counts are read
            self._invalid += torch.stack([table[NUM_BINS].sum(), table[:, -1].sum()])
        return table[:NUM_BINS, 1:c + 1, :c + 1]

    def add(self, counts: torch.Tensor, num_images: int) -> None:
        """Add [10, C, C+1] counts (from :meth:`count`) of ``num_images`` images."""
        self.table += counts.to(self.device)
        self.num_images += int(num_images)

    def update(self, pred: torch.Tensor, target: torch.Tensor, bins: torch.Tensor) -> torch.Tensor:
        """Count a batch (see :meth:`count`) and add it; returns the batch's [10, C, C+1] counts."""
        counts = self.count(pred, target, bins)
        self.table += counts
        self.num_images += 1 if pred.dim() == 2 else int(pred.shape[0])
        return counts

    def check(self) -> None:
        """Raise ValueError if an update on an accelerator met a bin or gt value out of range."""
        bad_bins, bad_gt = (int(v) for v in self._invalid.tolist())
        if bad_bins:
            raise ValueError(f"exposure bins must lie in 0..{NUM_BINS - 1} ({bad_bins} pixels outside)")
        if bad_gt:
            raise ValueError(f"target holds values that are neither classes 0..{self.num_classes - 1} nor "
                             f"{IGNORE_INDEX} ({bad_gt} pixels)")

    def merge(self, other: ExposureConfusion) -> ExposureConfusion:
        """Add another accumulator's counts (e.g. another worker's) into this one; returns self."""
        if other.num_classes != self.num_classes:
            raise ValueError(f"cannot merge {other.num_classes} classes into {self.num_classes}")
        self.table += other.table.to(self.device)
        self._invalid += other._invalid.to(self.device)
        self.num_images += other.num_images
        return self

    def all_reduce(self) -> None:
        """Sum the counts (and num_images) over torch.distributed ranks; no-op when not initialised.

        One collective on one flat int64 tensor: counts are exact under summation,
        finished metrics (ratios) would not be.
        """
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return
        n_table = self.table.numel()
        flat = torch.cat([self.table.reshape(-1), self._invalid,
                          torch.tensor([self.num_images], dtype=torch.int64, device=self.device)])
        torch.distributed.all_reduce(flat)
        self.table.copy_(flat[:n_table].view_as(self.table))
        self._invalid.copy_(flat[n_table:n_table + 2])
        self.num_images = int(flat[-1].item())

    def reset(self) -> None:
        self.table.zero_()
        self._invalid.zero_()
        self.num_images = 0

    @classmethod
    def from_counts(cls, counts: np.ndarray | torch.Tensor, num_images: int,
                    device: str | torch.device = "cpu") -> ExposureConfusion:
        """An accumulator holding [10, C, C+1] counts (classes, then not-a-class), e.g. folded by
        `egnet score` from raw prediction values."""
        counts = torch.as_tensor(np.asarray(counts), dtype=torch.int64)
        c = counts.shape[1]
        if counts.shape != (NUM_BINS, c, c + 1):
            raise ValueError(f"expected counts of shape [{NUM_BINS}, C, C+1], got {tuple(counts.shape)}")
        acc = cls(num_classes=c, device=device)
        acc.add(counts, num_images)
        return acc

    def counts(self) -> np.ndarray:
        """[10, C, C+1] int64 numpy copy: predicted classes, then the not-a-class column."""
        self.check()
        return self.table.cpu().numpy().copy()

    def compute(self, average: str = "weighted") -> dict[str, Any]:
        """The metrics.json dict (docs/metrics.md): plain floats in [0, 1], None where undefined."""
        return metrics_from_counts(self.counts(), self.num_images, average, self.class_names)


def image_scores(counts: np.ndarray) -> dict[str, Any]:
    """mIoU, pixel accuracy and labelled pixels of one image from its [10, C, C+1] counts (the
    exposure bins summed): the same definitions as :func:`metrics_from_counts`, without EF1."""
    total = np.asarray(counts, dtype=np.int64).sum(axis=0)
    c = total.shape[0]
    tp = np.diag(total[:, :c]).astype(np.float64)
    gt = total.sum(axis=1).astype(np.float64)
    union = gt + total[:, :c].sum(axis=0) - tp
    valid = union > 0
    labelled = float(gt.sum())
    return {"mIoU": float((tp[valid] / union[valid]).mean()) if valid.any() else None,
            "pixel_acc": float(tp.sum() / labelled) if labelled > 0 else None,
            "labelled_pixels": int(labelled)}


def _f1_per_class(tp: np.ndarray, true: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """sklearn's F1 = 2 TP / (2 TP + FP + FN) = 2 TP / (support + predicted); 0 where both are 0."""
    denom = true + pred
    return np.divide(2.0 * tp, denom, out=np.zeros(tp.shape, dtype=np.float64), where=denom > 0)


def bin_f1(conf: np.ndarray, average: str) -> float | None:
    """EF1 of one bin from its [C, C(+1)] counts (gt rows, predicted columns; an optional last
    column of not-a-class predictions); None when the bin has no labelled pixel."""
    c = conf.shape[0]
    true = conf.sum(axis=1).astype(np.float64)       # gt pixels per class (support)
    if true.sum() == 0:
        return None
    tp = np.diag(conf[:, :c]).astype(np.float64)
    pred = conf[:, :c].sum(axis=0).astype(np.float64)  # pixels predicted as each class
    if average == "micro":
        return float(2.0 * tp.sum() / (true.sum() + pred.sum()))
    f1 = _f1_per_class(tp, true, pred)
    if average == "weighted":
        return float((f1 * true).sum() / true.sum())
    if average == "macro":
        present = (true + pred) > 0
        return float(f1[present].mean())
    raise ValueError(f"average must be one of {AVERAGES}, got {average!r}")


def metrics_from_counts(counts: np.ndarray, num_images: int, average: str = "weighted",
                        class_names: Sequence[str] = CLASS_NAMES) -> dict[str, Any]:
    """All metrics from [10, C, C+1] (or [10, C, C]) pixel counts; see the module docstring."""
    if average not in AVERAGES:
        raise ValueError(f"average must be one of {AVERAGES}, got {average!r}")
    counts = np.asarray(counts, dtype=np.int64)
    c = counts.shape[1]
    total = counts.sum(axis=0)                        # [C, C(+1)]
    tp = np.diag(total[:, :c]).astype(np.float64)
    gt = total.sum(axis=1).astype(np.float64)         # includes not-a-class predictions (FN)
    pr = total[:, :c].sum(axis=0).astype(np.float64)
    union = gt + pr - tp
    iou = [float(tp[i] / union[i]) if union[i] > 0 else None for i in range(c)]
    valid = [v for v in iou if v is not None]
    ef1 = [bin_f1(counts[g], average) for g in range(counts.shape[0])]
    ef1_valid = [v for v in ef1 if v is not None]
    labelled = float(gt.sum())
    return {
        "mIoU": float(np.mean(valid)) if valid else None,
        "mEF1": float(np.mean(ef1_valid)) if ef1_valid else None,
        "pixel_acc": float(tp.sum() / labelled) if labelled > 0 else None,
        "EF1": ef1,
        "IoU": dict(zip(class_names, iou, strict=True)),
        "num_images": int(num_images),
        "num_pixels_per_bin": [int(v) for v in counts.sum(axis=(1, 2))],
        "ef1_average": average,
    }


def to_mlflow(metrics: dict[str, Any], prefix: str = "test_") -> dict[str, float]:
    """Flat MLflow metric names (docs/architecture.md, "MLflow conventions"): mIoU, mEF1, pixel_acc,
    EF1_bin0..9, IoU_<class>.

    Undefined values (None) are left out; spaces in class names become underscores.
    """
    out: dict[str, float] = {}
    for key in ("mIoU", "mEF1", "pixel_acc"):
        if metrics.get(key) is not None:
            out[f"{prefix}{key}"] = float(metrics[key])
    for g, v in enumerate(metrics.get("EF1", [])):
        if v is not None:
            out[f"{prefix}EF1_bin{g}"] = float(v)
    for name, v in metrics.get("IoU", {}).items():
        if v is not None:
            out[f"{prefix}IoU_{name.replace(' ', '_')}"] = float(v)
    return out


def format_table(metrics: dict[str, Any]) -> str:
    """A plain-text report: headline numbers, IoU per class, EF1 per exposure bin."""
    head = (f"mIoU {fmt(metrics.get('mIoU'), pct=True)}%   mEF1 {fmt(metrics.get('mEF1'))}   "
            f"pixel acc {fmt(metrics.get('pixel_acc'), pct=True)}%   images {metrics.get('num_images', 0)}   "
            f"(EF1 average: {metrics.get('ef1_average', 'weighted')})")
    classes = [("class", "IoU %"), *((name, fmt(v, pct=True)) for name, v in metrics.get("IoU", {}).items())]
    pixels = metrics.get("num_pixels_per_bin") or [None] * NUM_BINS
    bins = [("exposure", "EF1", "pixels"), *(
        (name, fmt(v), "-" if n is None else str(n))
        for name, v, n in zip(BIN_NAMES, metrics.get("EF1", [None] * NUM_BINS), pixels, strict=False))]
    return "\n\n".join([head, render_table(classes, "<>"), render_table(bins, "<>>")])
