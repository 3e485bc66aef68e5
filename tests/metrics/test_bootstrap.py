"""The paired bootstrap of the promotion gate (egnet/metrics/bootstrap.py).

Checked against a plain per-resample loop over ``metrics_from_counts`` (the one metric
definition) and against hand-made per-image confusions whose interval follows from a
binomial distribution.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from egnet.metrics import metrics_from_counts
from egnet.metrics.bootstrap import batch_metrics, paired_bootstrap, resample_indices, resample_weights

C = 19
K = C + 1  # predicted columns: the classes, then "no class"


def random_counts(rng: np.random.Generator, n: int, empty_bins: tuple[int, ...] = ()) -> np.ndarray:
    """[n, 10, C, C+1] per-image counts: a few classes per image, mostly right, some "no class"."""
    out = np.zeros((n, 10, C, K), np.int64)
    for i in range(n):
        classes = rng.choice(C, size=int(rng.integers(2, 7)), replace=False)
        for g in range(10):
            if g in empty_bins or rng.random() < 0.2:
                continue
            for c in classes:
                px = int(rng.integers(0, 400))
                right = int(px * rng.uniform(0.4, 0.95))
                out[i, g, c, c] += right
                wrong = rng.choice([*classes, C], size=px - right)
                np.add.at(out[i, g, c], wrong, 1)
    return out


@pytest.mark.parametrize("average", ["weighted", "macro", "micro"])
def test_batch_metrics_equal_metrics_from_counts_per_resample(average) -> None:
    rng = np.random.default_rng(0)
    counts = random_counts(rng, 12, empty_bins=(9,))
    idx = resample_indices(12, 25, seed=3)
    sums = resample_weights(idx) @ counts.reshape(12, -1).astype(np.float64)
    got = batch_metrics(sums.reshape(25, 10, C, K), average)
    for r, row in enumerate(idx):
        ref = metrics_from_counts(counts[row].sum(axis=0), 12, average)
        assert got["mIoU"][r] == pytest.approx(ref["mIoU"], abs=1e-12)
        assert got["mEF1"][r] == pytest.approx(ref["mEF1"], abs=1e-12)
        for g in range(10):
            if ref["EF1"][g] is None:
                assert np.isnan(got["EF1"][r, g])
            else:
                assert got["EF1"][r, g] == pytest.approx(ref["EF1"][g], abs=1e-12)


def test_weights_count_the_draws() -> None:
    idx = np.array([[0, 0, 2], [1, 2, 1]])
    assert resample_weights(idx).tolist() == [[2, 0, 1], [0, 2, 1]]
    a, b = resample_indices(50, 7, seed=1), resample_indices(50, 7, seed=1)
    assert np.array_equal(a, b) and a.shape == (7, 50) and 0 <= a.min() and a.max() < 50


@pytest.mark.parametrize("average", ["weighted", "macro"])
def test_bootstrap_agrees_with_a_slow_reference_loop(average) -> None:
    """The same draws through a plain loop: sum the drawn images, metrics_from_counts, difference,
    percentile interval; every bound equal to 1e-12."""
    rng = np.random.default_rng(5)
    n = 15
    champ, chall = random_counts(rng, n), random_counts(rng, n)
    idx = resample_indices(n, 60, seed=11)
    got = paired_bootstrap(champ, chall, confidence=0.8, indices=idx, average=average)
    ref_miou, ref_mef1, ref_ef1 = [], [], []
    for row in idx:
        a = metrics_from_counts(champ[row].sum(axis=0), n, average)
        b = metrics_from_counts(chall[row].sum(axis=0), n, average)
        ref_miou.append(b["mIoU"] - a["mIoU"])
        ref_mef1.append(b["mEF1"] - a["mEF1"])
        ref_ef1.append([np.nan if x is None or y is None else y - x
                        for x, y in zip(a["EF1"], b["EF1"], strict=True)])
    for interval, samples in ((got.miou, ref_miou), (got.mef1, ref_mef1)):
        lo, hi = np.quantile(samples, [0.1, 0.9])
        assert abs(interval.lo - lo) < 1e-12 and abs(interval.hi - hi) < 1e-12
    ref_ef1 = np.array(ref_ef1)
    for g in range(10):
        col = ref_ef1[:, g][np.isfinite(ref_ef1[:, g])]
        lo, hi = np.quantile(col, [0.1, 0.9])
        assert abs(got.ef1[g].lo - lo) < 1e-12 and abs(got.ef1[g].hi - hi) < 1e-12
    # the point values are the two full-set metrics' difference
    full_a = metrics_from_counts(champ.sum(axis=0), n, average)
    full_b = metrics_from_counts(chall.sum(axis=0), n, average)
    assert got.miou.point == pytest.approx(full_b["mIoU"] - full_a["mIoU"], abs=1e-12)
    assert got.champion["mEF1"] == pytest.approx(full_a["mEF1"], abs=1e-12)


def _image(acc_dark: float, acc_bright: float, px: int = 1000) -> np.ndarray:
    """One image's counts: ``px`` road pixels in bin [0,0.1) and ``px`` in [0.5,0.6), the misses
    predicted as "no class" (so road is the only class in every metric: mIoU = pooled accuracy)."""
    c = np.zeros((10, C, K), np.int64)
    for g, a in ((0, acc_dark), (5, acc_bright)):
        tp = round(px * a)
        c[g, 0, 0], c[g, 0, C] = tp, px - tp
    return c


N = 100
CHAMPION = np.stack([_image(0.80, 0.80)] * N)


def test_same_mean_but_noisier_challenger_has_the_binomial_interval() -> None:
    """Challenger: 71% of half the images right, 91% of the other half (mean 81%, +0.01 over the
    champion's 80% on every image). A resample drawing K of the 91% images has a difference of
    exactly 0.002 K - 0.09, K ~ Binomial(100, 1/2); the 90% interval's bounds are its 5th and 95th
    percentiles (here within the 2nd..8th and 92nd..98th: 1,000 draws estimate them)."""
    chall = np.stack([_image(0.71, 0.71) if i % 2 else _image(0.91, 0.91) for i in range(N)])
    b = paired_bootstrap(CHAMPION, chall, resamples=1000, confidence=0.9, seed=0)
    assert b.miou.point == pytest.approx(0.01, abs=1e-12)
    k = stats.binom(N, 0.5)
    low = [0.002 * k.ppf(q) - 0.09 for q in (0.02, 0.08)]
    high = [0.002 * k.ppf(q) - 0.09 for q in (0.92, 0.98)]
    assert low[0] - 1e-12 <= b.miou.lo <= low[1] + 1e-12, (b.miou, low)
    assert high[0] - 1e-12 <= b.miou.hi <= high[1] + 1e-12, (b.miou, high)
    assert b.miou.lo < 0 < b.miou.point            # the gate's mIoU rule (lower bound > 0) refuses
    # EF1 = 2a / (1 + a) in both bins: the same interval in bin 0 and bin 5, none elsewhere
    assert b.ef1[0] == b.ef1[5] and b.ef1[1].point is None and b.ef1[1].lo is None
    assert b.challenger["EF1"][0] == pytest.approx(2 * 0.81 / 1.81, abs=1e-12)


def test_a_consistent_gain_has_a_point_interval() -> None:
    chall = np.stack([_image(0.81, 0.81)] * N)
    b = paired_bootstrap(CHAMPION, chall, resamples=200, confidence=0.9, seed=0)
    assert b.miou.lo == pytest.approx(0.01, abs=1e-12) and b.miou.hi == pytest.approx(0.01, abs=1e-12)


def test_seeded_and_checked() -> None:
    rng = np.random.default_rng(2)
    a, b = random_counts(rng, 10), random_counts(rng, 10)
    r1 = paired_bootstrap(a, b, resamples=100, seed=4)
    assert paired_bootstrap(a, b, resamples=100, seed=4) == r1
    assert paired_bootstrap(a, b, resamples=100, seed=5).miou != r1.miou
    d = r1.to_dict()
    assert d["resamples"] == 100 and d["seed"] == 4
    assert len(d["EF1"]) == 10 and d["EF1"][0]["name"] == "[0.0,0.1)"
    with pytest.raises(ValueError, match="must both be"):
        paired_bootstrap(a, b[:5])
    with pytest.raises(ValueError, match="confidence"):
        paired_bootstrap(a, b, confidence=1.0)
