"""Class-pixel and exposure statistics per split (paper Figs. 3 and 4).

``egnet data stats DATA --split DIR --out DIR`` writes ``DIR/stats.json`` and three
PNG bar charts:

- ``class_distribution.png``: labelled pixels per class (Fig. 3), per split;
- ``exposure_distribution.png``: average pixels per image in each exposure bin (Fig. 4);
- ``class_mean_exposure.png``: mean exposure (HSV V in [0, 1]) over each class's pixels.

Labels are mapped to the 19 trainIds with ``labels.LABEL_TO_TRAIN`` (255 = ignore);
exposure bins come from ``exposure.bin_index``. NightCity+ labels at twice the
image size are resized nearest-neighbour (``layout.read_label``) and counted in
``labels_resized``.

Speed: decoding the two PNGs is most of the cost, so the per-image work is one
channel max and one joint (V, labelId) histogram in OpenCV; every statistic
(class pixels, exposure histogram, per-class exposure sums and class x bin
counts) is read off that 256x256 histogram with two tiny matrix products.
``benchmarks/bench_stats.py`` compares the throughput with plain ``cv2.imread``.
"""

from __future__ import annotations

import argparse
import functools
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import cv2
import numpy as np
from tqdm import tqdm

from egnet.core.config import Config
from egnet.core.errors import DataError
from egnet.core.files import atomic_dir, cpu_workers, pool_context, write_csv, write_json
from egnet.data import exposure, labels, layout

SPLIT_NAMES = ("train", "test")

#: labelId of each trainId 0..18. Cityscapes maps exactly one labelId to each trainId, so a
#: class's counts are one row of the (labelId, V) histogram; everything else is ignore.
_TRAIN_ID = labels.to_train_ids(np.arange(256, dtype=np.uint8))
_CLASS_LABEL_IDS = np.array([int(np.flatnonzero(_TRAIN_ID == c)[0]) for c in range(labels.NUM_CLASSES)])
assert all(np.sum(_TRAIN_ID == c) == 1 for c in range(labels.NUM_CLASSES))
#: exposure bin of each 8-bit V, from the one exposure definition; bins are runs of V, so
#: per-bin counts are np.add.reduceat over V at these starts
_V_BIN = exposure.bin_index(np.arange(256, dtype=np.uint8)).astype(np.int64)
_BIN_STARTS = np.searchsorted(_V_BIN, np.arange(exposure.NUM_BINS))
assert np.all(np.diff(_V_BIN) >= 0) and np.all(np.diff(_BIN_STARTS) > 0)
_V_VALUES = np.arange(256, dtype=np.float64)
#: cv2.calcHist counts in float32: exact only below 2**24 pixels per image (1024x512 is 2**19)
_CALCHIST_MAX_PIXELS = 2**24
_SCRATCH = threading.local()


class ImageStats(NamedTuple):
    """Per-image statistics; counts are pixels, exposure is HSV V in [0, 1]."""

    class_pixels: np.ndarray         # [19] int64: labelled pixels per trainId
    exposure_hist: np.ndarray        # [10] int64: all pixels (ignore included) per exposure bin
    class_exposure_sum: np.ndarray   # [19] float64: sum of V over each class's pixels
    class_exposure_hist: np.ndarray  # [19, 10] int64: class x exposure-bin pixel counts
    resized: bool                    # label was NightCity+ 2x and was resized


def _scratch(shape: tuple[int, int]) -> tuple[list[np.ndarray], np.ndarray]:
    """Reusable per-thread buffers: 3 uint8 planes of ``shape`` and a 256x256 float32 histogram.

    Fresh 0.5 MB planes and a fresh histogram for every image cost about as much as the
    histogram itself (page faults on new memory), so each worker keeps one set.
    """
    cached = getattr(_SCRATCH, "buffers", None)
    if cached is None or cached[0] != shape:
        cached = (shape, [np.empty(shape, np.uint8) for _ in range(3)], np.empty((256, 256), np.float32))
        _SCRATCH.buffers = cached
    return cached[1], cached[2]


def _label_value_hist(image: np.ndarray, label: np.ndarray) -> np.ndarray:
    """[256 labelId, 256 V] pixel counts of one image (float32 or int64 holding exact integers).

    V = max(R, G, B) in 8 bits, i.e. 255 * ``exposure.value_map``. The result may be a
    reused buffer: read it before the next call in the same thread.
    """
    planes, hist = _scratch(label.shape)
    # contiguous planes: cv2.max on them is ~4x faster than ndarray.max(axis=2)
    r, g, b = cv2.split(image, planes)
    v = cv2.max(r, g, dst=r)
    cv2.max(v, b, dst=v)
    if v.size < _CALCHIST_MAX_PIXELS:
        return cv2.calcHist([label, v], [0, 1], None, [256, 256], [0, 256, 0, 256], hist=hist)
    joint = np.bincount(label.ravel().astype(np.int64) * 256 + v.ravel(), minlength=256 * 256)
    return joint.reshape(256, 256)


def image_stats(pair: layout.Pair, size: tuple[int, int]) -> ImageStats:
    """Statistics of one image/label pair at ``size`` = (width, height).

    Raises DataError naming the file if either does not decode or has the wrong size.
    """
    image = layout.read_image(pair.image)
    w, h = size
    if image.shape[:2] != (h, w):
        raise DataError(f"{pair.image}: image is {image.shape[1]}x{image.shape[0]}, expected {w}x{h}")
    label, resized = layout.read_label(pair.label, size)
    # Reductions are row picks and np.add.reduceat on the small histogram, not matrix products:
    # BLAS threads in pool workers on a busy machine made a tiny matmul cost more than the decode.
    hist = _label_value_hist(image, label)
    class_v = hist[_CLASS_LABEL_IDS].astype(np.float64)                  # [19, 256]
    all_v = hist.sum(axis=0).astype(np.float64)                           # [256], ignore included
    return ImageStats(
        class_pixels=class_v.sum(axis=1).astype(np.int64),
        exposure_hist=np.add.reduceat(all_v, _BIN_STARTS).astype(np.int64),
        class_exposure_sum=(class_v * _V_VALUES).sum(axis=1) / 255.0,
        class_exposure_hist=np.add.reduceat(class_v, _BIN_STARTS, axis=1).astype(np.int64),
        resized=bool(resized),
    )


def chunksize_for(num: int, workers: int) -> int:
    """Pool chunk size: a few images per round trip, but small chunks so no worker idles long at the end."""
    return max(1, min(4, num // (8 * max(1, workers))))


def map_images(
    pairs: Sequence[layout.Pair], size: tuple[int, int], workers: int = 0, desc: str = "stats"
) -> list[ImageStats]:
    """``image_stats`` of every pair, in order, over a process pool of ``cpu_workers(workers)``."""
    nproc = min(cpu_workers(workers), max(1, len(pairs)))
    work = functools.partial(image_stats, size=tuple(size))
    if nproc == 1:
        return [work(p) for p in tqdm(pairs, desc=desc, unit="img", disable=None)]
    # fork where safe: workers start in milliseconds with the modules imported (core.files.pool_context)
    with pool_context().Pool(nproc) as pool:
        results = pool.imap(work, pairs, chunksize=chunksize_for(len(pairs), nproc))
        return list(tqdm(results, total=len(pairs), desc=desc, unit="img", disable=None))


class SplitTotals(NamedTuple):
    """Sums of ImageStats over the images of one split."""

    num_images: int
    num_pixels: int
    class_pixels: np.ndarray         # [19] int64
    exposure_hist: np.ndarray        # [10] int64
    class_exposure_sum: np.ndarray   # [19] float64
    class_exposure_hist: np.ndarray  # [19, 10] int64
    labels_resized: int


def totals(stats: Iterable[ImageStats]) -> SplitTotals:
    """Add up per-image statistics."""
    stats = list(stats)
    if not stats:
        return SplitTotals(0, 0, np.zeros(labels.NUM_CLASSES, np.int64),
                           np.zeros(exposure.NUM_BINS, np.int64), np.zeros(labels.NUM_CLASSES),
                           np.zeros((labels.NUM_CLASSES, exposure.NUM_BINS), np.int64), 0)
    hist = np.sum([s.exposure_hist for s in stats], axis=0)
    return SplitTotals(
        num_images=len(stats),
        num_pixels=int(hist.sum()),
        class_pixels=np.sum([s.class_pixels for s in stats], axis=0),
        exposure_hist=hist,
        class_exposure_sum=np.sum([s.class_exposure_sum for s in stats], axis=0),
        class_exposure_hist=np.sum([s.class_exposure_hist for s in stats], axis=0),
        labels_resized=sum(s.resized for s in stats),
    )


def mean_exposure(t: SplitTotals) -> list[float | None]:
    """Mean V over each class's pixels (None for a class with no pixels)."""
    return [float(s / n) if n else None for s, n in zip(t.class_exposure_sum, t.class_pixels, strict=True)]


def _both_splits(
    root: str | Path, split_dir: str | Path, quarantine: str | Path | None = None
) -> tuple[dict[str, list[layout.Pair]], dict[str, int]]:
    """Pairs of train.txt and test.txt, and the stems quarantined since the split, per split."""
    chosen: dict[str, list[layout.Pair]] = {}
    skipped: dict[str, int] = {}
    for name in SPLIT_NAMES:
        chosen[name], skipped[name] = layout.split_pairs(root, split_dir, name, quarantine)
        if not chosen[name]:
            raise DataError(f"{Path(split_dir) / f'{name}.txt'}: no images to compute statistics on")
    return chosen, skipped


def compute_stats(
    root: str | Path,
    split_dir: str | Path,
    size: tuple[int, int],
    workers: int = 0,
    quarantine: str | Path | None = None,
) -> dict[str, Any]:
    """The stats.json document for the splits in ``split_dir`` (see the module docstring)."""
    chosen, skipped = _both_splits(root, split_dir, quarantine)
    names = list(labels.CLASS_NAMES)
    # one pool over both splits: no second pool start and one tail instead of two
    every = map_images([p for name in SPLIT_NAMES for p in chosen[name]], size, workers)
    n_train = len(chosen["train"])
    per_split = {"train": totals(every[:n_train]), "test": totals(every[n_train:])}

    def each(fn) -> dict[str, Any]:
        return {name: fn(t) for name, t in per_split.items()}

    w, h = size
    return {
        "image_size": [w, h],
        "class_names": names,
        "exposure_bins": [list(edge) for edge in exposure.BIN_EDGES],
        "exposure_bin_names": list(exposure.BIN_NAMES),
        "num_images": each(lambda t: t.num_images),
        "quarantined_skipped": skipped,
        "labels_resized": each(lambda t: t.labels_resized),
        "labels_resized_note": f"labels at {2 * w}x{2 * h} (NightCity+) resized nearest-neighbour to {w}x{h}",
        # Fig. 4: average pixels per image in each exposure bin
        "avg_pixels_per_image": each(lambda t: (t.exposure_hist / t.num_images).tolist()),
        "exposure_hist": each(lambda t: t.exposure_hist.tolist()),
        "exposure_fraction": each(lambda t: (t.exposure_hist / t.num_pixels).tolist()),
        # Fig. 3: labelled pixels per class
        "class_pixels": each(lambda t: dict(zip(names, t.class_pixels.tolist(), strict=True))),
        "class_fraction": each(lambda t: dict(zip(names,
                                                  (t.class_pixels / max(1, t.class_pixels.sum())).tolist(),
                                                  strict=True))),
        "ignored_pixels": each(lambda t: int(t.num_pixels - t.class_pixels.sum())),
        "class_mean_exposure": each(lambda t: dict(zip(names, mean_exposure(t), strict=True))),
        "class_exposure_hist": each(lambda t: dict(zip(names, t.class_exposure_hist.tolist(), strict=True))),
    }


def write_plot_data(out: Path, stats: dict[str, Any]) -> None:
    """CSV series for `dvc plots`: exposure_hist.csv (Fig. 4) and class_pixels.csv (Fig. 3)."""
    write_csv(out / "exposure_hist.csv", ["bin", "exposure", *SPLIT_NAMES],
              [[i, name, *(stats["avg_pixels_per_image"][s][i] for s in SPLIT_NAMES)]
               for i, name in enumerate(stats["exposure_bin_names"])])
    write_csv(out / "class_pixels.csv", ["class", *SPLIT_NAMES],
              [[c, *(stats["class_pixels"][s][c] for s in SPLIT_NAMES)] for c in stats["class_names"]])


def write_charts(out: Path, stats: dict[str, Any]) -> list[Path]:
    """The three PNG bar charts of a stats.json document, into ``out``."""
    from egnet.data import charts as plots

    names = stats["class_names"]
    return [
        plots.class_chart(
            out / "class_distribution.png",
            {s: [stats["class_pixels"][s][c] for c in names] for s in SPLIT_NAMES},
            "Labelled pixels per class (cf. paper Fig. 3)", "pixels (log scale)", log=True,
        ),
        plots.exposure_chart(
            out / "exposure_distribution.png",
            {s: stats["avg_pixels_per_image"][s] for s in SPLIT_NAMES},
            "Average pixels per image in each exposure bin (cf. paper Fig. 4)", "pixels per image",
        ),
        plots.class_chart(
            out / "class_mean_exposure.png",
            {s: [stats["class_mean_exposure"][s][c] for c in names] for s in SPLIT_NAMES},
            "Mean exposure (HSV V) of each class's pixels", "mean V",
        ),
    ]


def main(args: argparse.Namespace, cfg: Config) -> int:
    """`egnet data stats DATA --split DIR --out DIR [--quarantine F]`."""
    size = tuple(cfg.data.image_size)
    stats = compute_stats(args.data, args.split, size, cfg.stats.workers, args.quarantine)
    with atomic_dir(args.out) as tmp:
        write_json(tmp / "stats.json", stats)
        write_plot_data(tmp, stats)
        write_charts(tmp, stats)
    n, r = stats["num_images"], stats["labels_resized"]
    print(f"stats: train {n['train']} images, test {n['test']} images -> {args.out}/stats.json")
    if r["train"] or r["test"]:
        print(f"stats: {r['train'] + r['test']} label(s) resized: {stats['labels_resized_note']}")
    return 0
