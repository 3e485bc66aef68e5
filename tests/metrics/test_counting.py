"""The counting pass of the metric engine (egnet/metrics/__init__.py) against a plain NumPy count.

uint8 and int64 inputs, values out of every range, the CPU path (sub-histograms, bincount,
errors at once) and the accelerator path (index_add_, checks deferred) run on CPU tensors,
which must not synchronise with the host.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from egnet.metrics import ExposureConfusion, count_pixels, counting

C = 19


def reference(pred: np.ndarray, gt: np.ndarray, bins: np.ndarray) -> np.ndarray:
    """[10, C, C+1] with np.add.at: any prediction that is not a class in the last column."""
    out = np.zeros((10, C, C + 1), np.int64)
    keep = gt != 255
    col = np.where((pred >= 0) & (pred < C), pred, C)
    np.add.at(out, (bins[keep], gt[keep], col[keep]), 1)
    return out


def batch(seed: int, n: int = 2, h: int = 37, w: int = 53) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    gt = rng.integers(0, C, (n, h, w))
    gt[:, :5] = 3                                        # runs of one value, as label maps have
    gt[rng.random(gt.shape) < 0.1] = 255
    pred = np.where(rng.random(gt.shape) < 0.6, gt, rng.integers(0, C, gt.shape))
    pred[rng.random(gt.shape) < 0.05] = 255
    bins = rng.integers(0, 10, gt.shape)
    return pred, gt, bins


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int16, torch.int64])
def test_counts_equal_numpy(dtype) -> None:
    pred, gt, bins = batch(0)
    got = ExposureConfusion().count(*(torch.from_numpy(x).to(dtype) for x in (pred, gt, bins)))
    assert got.dtype == torch.int64
    assert np.array_equal(got.numpy(), reference(pred, np.where(gt == 255, 255, gt), bins))


def test_wide_predictions_never_wrap_onto_a_class() -> None:
    pred, gt, bins = batch(1, n=1)
    wide = pred.astype(np.int64)
    wide[0, 0, :4] = [256 + 3, -1, 1000, 2**40 + 5]       # as uint8 these would read 3, 255, 232, 5
    acc = ExposureConfusion()
    got = acc.count(torch.from_numpy(wide), torch.from_numpy(gt), torch.from_numpy(bins))
    assert np.array_equal(got.numpy(), reference(wide, gt, bins))


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int64])
def test_bad_values_are_named_and_nothing_is_added(dtype) -> None:
    pred, gt, bins = batch(2, n=1)
    acc = ExposureConfusion()
    bad_gt = gt.copy()
    bad_gt[0, 1, 1], bad_gt[0, 2, 2] = 40, 19
    with pytest.raises(ValueError, match=r"neither classes 0..18 nor 255: \[19, 40\]"):
        acc.update(*(torch.from_numpy(x).to(dtype) for x in (pred, bad_gt, bins)))
    bad_bins = bins.copy()
    bad_bins[0, 3, 3] = 10
    with pytest.raises(ValueError, match="bins must lie in 0..9"):
        acc.update(*(torch.from_numpy(x).to(dtype) for x in (pred, gt, bad_bins)))
    assert acc.num_images == 0 and int(acc.table.sum()) == 0
    if dtype == torch.int64:
        with pytest.raises(ValueError, match="outside 0..255"):
            acc.update(torch.from_numpy(pred), torch.from_numpy(np.full_like(gt, 300)),
                       torch.from_numpy(bins))
        with pytest.raises(ValueError, match="bins"):
            acc.update(torch.from_numpy(pred), torch.from_numpy(gt), torch.from_numpy(bins - 1))


def test_count_pixels_columns_and_ignored() -> None:
    pred, gt, bins = batch(3)
    cols = np.where(pred == 255, 21, pred)                # codes 0..21 of 22 columns
    counts, ignored = count_pixels(*(torch.from_numpy(x.astype(np.uint8)) for x in (bins, gt, cols)), C, 22)
    ref = np.zeros((10, C, 22), np.int64)
    keep = gt != 255
    np.add.at(ref, (bins[keep], gt[keep], cols[keep]), 1)
    assert np.array_equal(counts.numpy(), ref)
    assert np.array_equal(ignored.numpy(), np.bincount(cols[~keep], minlength=22))
    with pytest.raises(ValueError, match="column values must lie in 0..21"):
        count_pixels(torch.from_numpy(bins), torch.from_numpy(gt), torch.from_numpy(cols + 1), C, 22)


@pytest.mark.parametrize(("classes", "num_cols"), [(19, 36), (19, 64), (30, 22), (40, 200)])
def test_count_pixels_with_many_classes_or_columns_equals_numpy(classes, num_cols) -> None:
    """Both CPU index layouts: (bin, gt) and (column, lane) packed in one byte each (up to 21
    classes and 63 columns), and the plain int32 index beyond (64 columns is the first)."""
    rng = np.random.default_rng(classes + num_cols)
    gt = rng.integers(0, classes, (2, 31, 47))
    gt[rng.random(gt.shape) < 0.1] = 255
    cols = rng.integers(0, num_cols, gt.shape)
    cols[:, :4] = num_cols - 1                            # runs, and the last column
    bins = rng.integers(0, 10, gt.shape)
    counts, ignored = count_pixels(*(torch.from_numpy(x.astype(np.uint8)) for x in (bins, gt, cols)),
                                   classes, num_cols)
    ref = np.zeros((10, classes, num_cols), np.int64)
    keep = gt != 255
    np.add.at(ref, (bins[keep], gt[keep], cols[keep]), 1)
    assert np.array_equal(counts.numpy(), ref)
    assert np.array_equal(ignored.numpy(), np.bincount(cols[~keep], minlength=num_cols))


class SyncCounter:
    """Counts the calls that make a host wait for a device: reading a value (item, tolist, bool,
    int, float), copying to the host (cpu, numpy) or a blocking ``to``."""

    NAMES = ("item", "tolist", "__bool__", "__int__", "__float__", "cpu", "numpy")

    def __init__(self, monkeypatch) -> None:
        self.calls: list[str] = []
        for name in self.NAMES:
            real = getattr(torch.Tensor, name)
            monkeypatch.setattr(torch.Tensor, name, self._wrap(name, real))

    def _wrap(self, name, real):
        def wrapped(t, *a, **k):
            self.calls.append(name)
            return real(t, *a, **k)
        return wrapped


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int64])
def test_accelerator_path_counts_the_same_without_a_host_sync(monkeypatch, dtype) -> None:
    """The path a GPU takes (index_add_, stray values counted aside), run on CPU tensors."""
    pred, gt, bins = batch(4)
    cpu = ExposureConfusion()
    with monkeypatch.context() as m:
        sync = SyncCounter(m)
        cpu.update(*(torch.from_numpy(x).to(dtype) for x in (pred, gt, bins)))
        assert sync.calls, "the CPU path reads its counts to check them: the counter must see that"
    monkeypatch.setattr(counting, "on_cpu", lambda x: False)
    dev = ExposureConfusion()
    inputs = [tuple(torch.from_numpy(x[i]).to(dtype) for x in (pred, gt, bins)) for i in range(2)]
    sync = SyncCounter(monkeypatch)
    for p, g, b in inputs:                                 # steady state: one image after another
        dev.update(p, g, b)
    assert sync.calls == []
    monkeypatch.undo()
    assert torch.equal(dev.table, cpu.table) and dev.num_images == 2
    # a bad value is counted aside on the device and raises when the counts are read
    monkeypatch.setattr(counting, "on_cpu", lambda x: False)
    bad = gt.copy()
    bad[0, 0, 0] = 77
    dev.update(*(torch.from_numpy(x).to(dtype) for x in (pred, bad, bins)))
    with pytest.raises(ValueError, match="neither classes"):
        dev.compute()
