"""The counting pass: pixel counts per (exposure bin, gt, column) in one ``bincount`` (CPU) or
``index_add_`` (accelerator, no host sync), from inputs narrowed to uint8 (docs/metrics.md,
"Speed"). :class:`egnet.metrics.ExposureConfusion` and `egnet score` count through it."""

from __future__ import annotations

import threading

import torch

from egnet.data.exposure import NUM_BINS
from egnet.data.labels import IGNORE_INDEX

#: CPU counting uses this many sub-histograms, interleaved pixel by pixel. A segmentation map
#: repeats one (bin, gt, prediction) over long runs, so with one table every increment waits
#: for the previous one to the same counter (a store-to-load chain, ~2.5x slower than random
#: data); with the pixel's position mod LANES as the lowest index digit, neighbours hit different
#: counters. The lanes are summed afterwards (a table of a few thousand entries).
LANES = 4
_LANE_PATTERNS: dict[int, torch.Tensor] = {}  # image size -> lane of each pixel
_SCRATCH = threading.local()  # per thread: the counting pass's work buffers, reused across images


def _lane_pattern(n: int) -> torch.Tensor:
    """uint8 0, 1, ..., LANES-1, 0, 1, ... (``n`` values), made once per image size."""
    pattern = _LANE_PATTERNS.get(n)
    if pattern is None:
        if len(_LANE_PATTERNS) >= 8:
            _LANE_PATTERNS.clear()
        pattern = (torch.arange(n, dtype=torch.int32) % LANES).to(torch.uint8)
        _LANE_PATTERNS[n] = pattern
    return pattern


def _scratch(n: int, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """CPU work buffers of ``n`` values for this thread: three uint8, two ``dtype``. Fresh
    megabyte-sized tensors per image would cost page faults that are a good part of the pass."""
    key = (n, dtype)
    bufs = getattr(_SCRATCH, "bufs", None)
    if bufs is None or bufs[0] != key:
        bufs = (key, *(torch.empty(n, dtype=torch.uint8) for _ in range(3)),
                *(torch.empty(n, dtype=dtype) for _ in range(2)))
        _SCRATCH.bufs = bufs
    return bufs[1:]


def on_cpu(x: torch.Tensor) -> bool:
    """Whether ``x`` is counted the CPU way (lanes, bincount, errors at once) or the accelerator way
    (index_add_, checks deferred, no host sync). One place, so the tests can run the accelerator
    path on CPU tensors."""
    return x.device.type == "cpu"


def _min_max(x: torch.Tensor) -> tuple[int, int]:
    """A CPU tensor's (min, max) in one pass (``torch.aminmax``: ~1.4x NumPy's min then max)."""
    lo, hi = torch.aminmax(x)
    return int(lo), int(hi)


def ids_u8(x: torch.Tensor, limit: int) -> torch.Tensor:
    """Integer ids -> uint8 that :func:`count_table` may clamp to ``limit``: uint8 as it is; a wider
    type narrowed without letting a large or negative value wrap onto a valid id (clamped to
    [-1, limit] first unless the CPU sees all values in 0..255; -1 becomes 255). No host sync
    on an accelerator."""
    if x.dtype == torch.uint8:
        return x
    if on_cpu(x) and x.numel():
        lo, hi = _min_max(x)
        if lo >= 0 and hi <= 255:
            return x.to(torch.uint8)
    return x.clamp(-1, limit).to(torch.uint8)


def range_u8(x: torch.Tensor, hi: int, what: str, stray: int) -> torch.Tensor:
    """``x`` as uint8, for inputs whose values must lie in 0..``hi``: on the CPU an error now when they
    do not; on another device (no host sync) values outside 0..255 become ``stray``, which the
    counts flag later (:meth:`ExposureConfusion.check`)."""
    if x.dtype == torch.uint8:
        return x
    if on_cpu(x):
        if x.numel():
            lo, top = _min_max(x)
            if lo < 0 or top > hi:
                raise ValueError(f"{what} (min {lo}, max {top})")
        return x.to(torch.uint8)
    return torch.where((x >= 0) & (x <= 255), x, stray).to(torch.uint8)


def gt_bins_u8(target: torch.Tensor, bins: torch.Tensor,
               num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``target`` (classes, 255) and ``bins`` (0..9) as uint8 for :func:`count_table`: a ValueError on
    the CPU for a value that cannot be one; on an accelerator such values are counted aside."""
    return (range_u8(target, 255, "target holds values outside 0..255", num_classes),
            range_u8(bins, 255, "exposure bins must lie in 0..9: got a value outside 0..255", NUM_BINS))


def _index_cpu(bins: torch.Tensor, target: torch.Tensor, cols: torch.Tensor, r: int, k: int,
               col_max: int, dtype: torch.dtype) -> torch.Tensor:
    """The CPU counting index of flat uint8 ``bins``, ``target`` and ``cols``:
    ((bin * r + gt row) * k + col) * LANES + lane, in ``dtype``. Every operation has one dtype
    (a mixed one would make PyTorch allocate a converted copy of its uint8 operand per call):
    the (bin, gt) pair and the (col, lane) pair are packed in uint8 each, then two casts into
    ``dtype`` buffers and one fused multiply-add."""
    n = target.numel()
    clamp_b, low, g, idx, tmp = _scratch(n, dtype)
    torch.add(target, 1, out=g)                           # uint8 wraps: 255 (ignore) -> row 0
    g.clamp_(max=r - 1)                                   # classes -> 1..C, any other value -> C+1
    # a max costs a quarter of a clamp: spare the clamp when nothing is out of range
    bb = bins if int(bins.max()) < NUM_BINS else torch.clamp(bins, max=NUM_BINS, out=clamp_b)
    g.add_(bb, alpha=r)                                   # (bin, gt) <= 11 * 21 - 1 = 230
    c = cols if int(cols.max()) <= col_max else torch.clamp(cols, max=col_max, out=low)
    torch.add(_lane_pattern(n), c, alpha=LANES, out=low)  # (col, lane) <= 37 * 4 - 1 = 147
    idx.copy_(low)
    tmp.copy_(g)
    return idx.add_(tmp, alpha=LANES * k)


def count_table(bins: torch.Tensor, target: torch.Tensor, cols: torch.Tensor, num_classes: int,
           num_cols: int, col_max: int) -> torch.Tensor:
    """The counting pass. uint8 ``bins`` (0..9), ``target`` (classes, 255), ``cols`` (0..num_cols-1;
    larger values are clamped to ``col_max``) -> int64 [NUM_BINS + 1, num_classes + 2, num_cols + 1]
    pixel counts.

    Every uint8 value has a cell, so nothing is dropped and the checks read the table:
    bin row NUM_BINS = bins above 9; target row 0 = ignore (255), rows 1..C = classes,
    row C+1 = any other value; column num_cols = a column value out of range.
    (bin, gt) are packed into one uint8 code (at most 11 x 21 values), then the index is
    int16 when it fits (int32 otherwise, and on an accelerator): no image is ever widened
    to int64, and one bincount (``index_add_`` on an accelerator) counts it.
    """
    nb, r, k = NUM_BINS + 1, num_classes + 2, num_cols + 1
    n = target.numel()
    cpu = on_cpu(bins)
    if n == 0:
        return torch.zeros(nb, r, k, dtype=torch.int64, device=bins.device)
    bins, target, cols = (x.reshape(-1) for x in (bins, target, cols))
    if cpu and nb * r <= 256 and k * LANES <= 256:    # up to 21 classes and 63 columns
        size = nb * r * k * LANES
        dtype = torch.int16 if size <= torch.iinfo(torch.int16).max else torch.int32
        idx = _index_cpu(bins, target, cols, r, k, col_max, dtype)
        return torch.bincount(idx, minlength=size).view(nb, r, k, LANES).sum(-1)
    # the accelerator (or many classes): no lanes, an int32 index from uint8 codes, index_add_
    # (CUDA's bincount reads its input's max on the host: a sync; index_add_ does not)
    g = torch.add(target, 1).clamp_(max=r - 1)
    bb = torch.clamp(bins, max=NUM_BINS)
    idx = torch.clamp(cols, max=col_max).to(torch.int32)
    if nb * r <= 256:
        idx.add_(g.add_(bb, alpha=r), alpha=k)       # (bin, gt) in one uint8 code
    else:
        idx.add_(g, alpha=k).add_(bb, alpha=k * r)
    if cpu:
        return torch.bincount(idx, minlength=nb * r * k).view(nb, r, k)
    hist = torch.zeros(nb * r * k, dtype=torch.int64, device=idx.device)
    hist.index_add_(0, idx, torch.ones(1, dtype=torch.int64, device=idx.device).expand(n))
    return hist.view(nb, r, k)


def check_table(table: torch.Tensor, target: torch.Tensor | None, num_classes: int, num_cols: int) -> None:
    """Raise ValueError for the values :func:`count_table` set aside (naming them when ``target``
    is given)."""
    inside = int(table[:NUM_BINS, :num_classes + 1, :num_cols].sum())
    if inside == int(table.sum()):
        return
    if bool(table[NUM_BINS].any()):
        raise ValueError(f"exposure bins must lie in 0..{NUM_BINS - 1}")
    if bool(table[:, -1].any()):
        vals: list[int] = []
        if target is not None:
            t = target.reshape(-1)
            vals = torch.unique(t[(t >= num_classes) & (t != IGNORE_INDEX)])[:5].tolist()
        raise ValueError(f"target holds values that are neither classes 0..{num_classes - 1} nor "
                         f"{IGNORE_INDEX}: {vals}")
    raise ValueError(f"column values must lie in 0..{num_cols - 1}")


def count_pixels(bins: torch.Tensor, target: torch.Tensor, cols: torch.Tensor,
                 num_classes: int, num_cols: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One counting pass over (bin, gt, column): ([NUM_BINS, C, num_cols], [num_cols]) int64.

    ``target``: gt classes 0..C-1 or 255 (ignore); ``cols``: integer column per pixel
    in [0, num_cols) (the predicted class, or a code for it); ``bins``: 0..9. The first
    result holds the labelled pixels, the second the ignored ones per column (``update``
    drops them; `egnet score` reads them to see every predicted value). Any input value
    out of its range is a ValueError (read from the counts themselves: no extra pass).
    uint8 inputs are counted as they are; wider ones are narrowed to uint8 first.
    """
    if bins.is_floating_point() or target.is_floating_point() or cols.is_floating_point():
        raise ValueError("bins, target and predictions must be integer tensors")
    if not 0 < num_cols < 256:
        raise ValueError(f"num_cols must lie in 1..255, got {num_cols}")
    t8, b8 = gt_bins_u8(target, bins, num_classes)
    table = count_table(b8, t8, ids_u8(cols, num_cols), num_classes, num_cols, num_cols)
    check_table(table, target, num_classes, num_cols)
    return table[:NUM_BINS, 1:num_classes + 1, :num_cols], table[:NUM_BINS, 0, :num_cols].sum(dim=0)


def check_shapes(pred: torch.Tensor, target: torch.Tensor, bins: torch.Tensor) -> int:
    """Shapes must agree; returns the number of images (N for NxHxW, 1 for HxW)."""
    if pred.shape != target.shape or pred.shape != bins.shape:
        raise ValueError(f"pred {tuple(pred.shape)}, target {tuple(target.shape)} and bins "
                         f"{tuple(bins.shape)} must have the same shape")
    if pred.dim() not in (2, 3):
        raise ValueError(f"expected NxHxW or HxW tensors, got shape {tuple(pred.shape)}")
    return 1 if pred.dim() == 2 else int(pred.shape[0])
