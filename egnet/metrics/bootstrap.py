"""Paired bootstrap of a metric difference between two models on the same test images.

Input: per-image pixel counts of both models on the same images (``[images, 10, C, C+1]``,
gt rows, predicted columns then not-a-class: what `egnet evaluate` writes as
``per_image_counts.npz``). A resample draws ``images`` image indices with replacement
(seeded); both models get the *same* draw (paired: the difference is taken image set by
image set, so what the test set happens to contain cancels out); each model's counts
over the drawn images are summed and the dataset-level mIoU, EF1 per exposure bin and
mEF1 are recomputed from the sums exactly as :func:`egnet.metrics.metrics_from_counts`
defines them. The interval of a difference (challenger - champion) is the percentile
interval of its resampled values at ``confidence`` (two-sided: the lower bound is the
``(1 - confidence) / 2`` quantile, NumPy's default linear interpolation).

Vectorised: the resample weights (how often each image is drawn) form an integer matrix
``W`` [resamples, images], and every resample's summed counts are one matrix product
``W @ counts`` over the count cells that are non-zero for either model. Float64 holds
every such sum exactly (integers far below 2**53: at most images x pixels per image), so
the products are exact counts whatever the summation order, and the metrics equal the
per-resample loop's (tests compare with one to 1e-12). 1,000 resamples of 1,299 images:
benchmarks/bench_bootstrap.py.

Pure NumPy over count arrays: below tracking, used by the registry's promotion gate and
by `egnet report --vs`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from egnet.data.exposure import BIN_NAMES, NUM_BINS

AVERAGES = ("weighted", "macro", "micro")


def resample_indices(num_images: int, resamples: int, seed: int) -> np.ndarray:
    """[resamples, num_images] image indices drawn with replacement (NumPy PCG64, ``seed``)."""
    if num_images < 1 or resamples < 1:
        raise ValueError(f"need at least one image and one resample, got {num_images} and {resamples}")
    return np.random.default_rng(seed).integers(0, num_images, size=(resamples, num_images))


def resample_weights(indices: np.ndarray) -> np.ndarray:
    """[R, N] indices -> [R, N] float64 draw counts (how often each image is in each resample)."""
    r, n = indices.shape
    flat = (indices + n * np.arange(r)[:, None]).ravel()
    return np.bincount(flat, minlength=r * n).reshape(r, n).astype(np.float64)


def batch_metrics(counts: np.ndarray, average: str = "weighted") -> dict[str, np.ndarray]:
    """mIoU [R], EF1 [R, 10] and mEF1 [R] of R count tables [R, 10, C, C+1] (or [R, 10, C, C]);
    NaN where a value is undefined (metrics_from_counts' None). Same definitions, vectorised."""
    if average not in AVERAGES:
        raise ValueError(f"average must be one of {AVERAGES}, got {average!r}")
    x = np.asarray(counts, dtype=np.float64)
    c = x.shape[2]
    diag = np.arange(c)
    total = x.sum(axis=1)                                   # [R, C, K]
    tp = total[:, diag, diag]                               # [R, C]
    gt = total.sum(axis=2)                                  # not-a-class predictions count as FN
    pr = total[:, :, :c].sum(axis=1)
    union = gt + pr - tp
    valid = union > 0
    iou = np.divide(tp, union, out=np.zeros_like(tp), where=valid)
    n_valid = valid.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        miou = np.where(n_valid > 0, iou.sum(axis=1) / n_valid, np.nan)

    btp = x[:, :, diag, diag]                               # [R, B, C]
    btrue = x.sum(axis=3)                                   # support per class
    bpred = x[:, :, :, :c].sum(axis=2)
    support = btrue.sum(axis=2)                             # [R, B]
    has = support > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        if average == "micro":
            ef1 = 2.0 * btp.sum(axis=2) / (support + bpred.sum(axis=2))
        else:
            denom = btrue + bpred
            f1 = np.divide(2.0 * btp, denom, out=np.zeros_like(btp), where=denom > 0)
            if average == "weighted":
                ef1 = (f1 * btrue).sum(axis=2) / support
            else:  # macro: classes present in gt or prediction of the bin
                present = denom > 0
                ef1 = f1.sum(axis=2) / present.sum(axis=2)
        ef1 = np.where(has, ef1, np.nan)
        n_bins = has.sum(axis=1)
        mef1 = np.where(n_bins > 0, np.where(has, ef1, 0.0).sum(axis=1) / n_bins, np.nan)
    return {"mIoU": miou, "EF1": ef1, "mEF1": mef1}


@dataclass(frozen=True)
class Interval:
    """A difference (challenger - champion): the point value on all images, and its interval."""

    point: float | None
    lo: float | None
    hi: float | None

    def to_dict(self) -> dict[str, float | None]:
        return asdict(self)


@dataclass(frozen=True)
class BootstrapResult:
    """Paired bootstrap of challenger (``b``) - champion (``a``) on the same images."""

    num_images: int
    resamples: int
    confidence: float
    seed: int
    average: str
    champion: dict[str, Any]          # point metrics on all images: mIoU, mEF1, EF1 [10]
    challenger: dict[str, Any]
    miou: Interval
    mef1: Interval
    ef1: list[Interval]               # per exposure bin

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (None for undefined values), rounded to 6 decimals."""
        def r(v: float | None) -> float | None:
            return None if v is None else round(float(v), 6)

        def iv(i: Interval) -> dict[str, float | None]:
            return {"point": r(i.point), "lo": r(i.lo), "hi": r(i.hi)}

        def side(m: dict[str, Any]) -> dict[str, Any]:
            return {"mIoU": r(m["mIoU"]), "mEF1": r(m["mEF1"]), "EF1": [r(v) for v in m["EF1"]]}

        return {"method": "paired percentile bootstrap over test images", "num_images": self.num_images,
                "resamples": self.resamples, "confidence": self.confidence, "seed": self.seed,
                "ef1_average": self.average, "champion": side(self.champion),
                "challenger": side(self.challenger), "mIoU": iv(self.miou), "mEF1": iv(self.mef1),
                "EF1": [{"bin": g, "name": BIN_NAMES[g], **iv(i)} for g, i in enumerate(self.ef1)]}


def _num(v: float) -> float | None:
    return None if not np.isfinite(v) else float(v)


def _interval(point: float, samples: np.ndarray, confidence: float) -> Interval:
    """Percentile interval of ``samples`` (NaN samples, where the metric is undefined in a
    resample, are left out); no interval when the point value is undefined."""
    if not np.isfinite(point):
        return Interval(None, None, None)
    ok = samples[np.isfinite(samples)]
    if ok.size == 0:
        return Interval(float(point), None, None)
    tail = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(ok, [tail, 1.0 - tail])
    return Interval(float(point), float(lo), float(hi))


def _point(counts: np.ndarray, average: str) -> dict[str, Any]:
    m = batch_metrics(counts.sum(axis=0, dtype=np.int64)[None], average)
    return {"mIoU": _num(m["mIoU"][0]), "mEF1": _num(m["mEF1"][0]), "EF1": [_num(v) for v in m["EF1"][0]]}


def paired_bootstrap(champion: np.ndarray, challenger: np.ndarray, *, resamples: int = 1000,
                     confidence: float = 0.9, seed: int = 0, average: str = "weighted",
                     indices: np.ndarray | None = None) -> BootstrapResult:
    """Paired bootstrap of challenger - champion (module docstring). ``champion``/``challenger``:
    [images, 10, C, C+1] integer counts of the same images in the same order. ``indices``
    ([R, images], from :func:`resample_indices`) overrides ``resamples``/``seed``'s draw."""
    a, b = np.asarray(champion), np.asarray(challenger)
    if a.shape != b.shape or a.ndim != 4 or a.shape[1] != NUM_BINS:
        raise ValueError(f"champion {a.shape} and challenger {b.shape} counts must both be [images, "
                         f"{NUM_BINS}, C, C+1]")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    n = a.shape[0]
    if indices is None:
        indices = resample_indices(n, resamples, seed)
    w = resample_weights(indices)                            # [R, N]
    cells = a.shape[1:]
    flat_a, flat_b = a.reshape(n, -1), b.reshape(n, -1)
    used = np.flatnonzero(flat_a.any(axis=0) | flat_b.any(axis=0))   # only cells either model filled

    def resampled(flat: np.ndarray) -> dict[str, np.ndarray]:
        sums = np.zeros((w.shape[0], flat.shape[1]))
        sums[:, used] = w @ flat[:, used].astype(np.float64)  # exact: integer sums far below 2**53
        return batch_metrics(sums.reshape(w.shape[0], *cells), average)

    ra, rb = resampled(flat_a), resampled(flat_b)
    pa, pb = _point(a, average), _point(b, average)

    def diff(key: str) -> float:
        x, y = pa[key], pb[key]
        return np.nan if x is None or y is None else y - x

    ef1 = []
    for g in range(NUM_BINS):
        x, y = pa["EF1"][g], pb["EF1"][g]
        ef1.append(_interval(np.nan if x is None or y is None else y - x,
                             rb["EF1"][:, g] - ra["EF1"][:, g], confidence))
    return BootstrapResult(
        num_images=n, resamples=int(indices.shape[0]), confidence=float(confidence), seed=int(seed),
        average=average, champion=pa, challenger=pb,
        miou=_interval(diff("mIoU"), rb["mIoU"] - ra["mIoU"], confidence),
        mef1=_interval(diff("mEF1"), rb["mEF1"] - ra["mEF1"], confidence),
        ef1=ef1,
    )
