"""`egnet score`: mIoU and the exposure-aware EF1/mEF1 of prediction PNGs made by any tool.

For every stem of the test split (``SPLIT/test.txt``) a prediction ``<stem>_labelIds.png``
or ``<stem>.png`` (the former wins when both exist) is read from PRED_DIR; it must be a
one-channel 8-bit (or palette) PNG of the image's size. Ground truth is the dataset's
label (NightCity+ 2x labels resized nearest-neighbour), exposure the dataset's image
(``exposure.bin_index``). Metrics are egnet.metrics' definitions.

Predictions hold labelIds or trainIds; which one is decided once for the whole set
from all the values the predictions hold (docs/metrics.md, "egnet score"):

1. a value outside 0..33 and 255 -> error (neither encoding);
2. 255 together with any of 19..33 -> error (mixed encodings);
3. 255 present -> trainIds (255 is no labelId);
4. any of 19..33 present -> labelIds (no trainId is that large);
5. all values within 0..18 -> trainIds. A labelIds set within 0..18 would never
   predict traffic light, sky, vegetation, car, person, ... (labelIds 19-33) over a
   whole test split, while a trainIds set always lies there. ``--ids`` overrides.

Pixels are counted per prediction value (0..33, 255, anything else: [10, C, 36]) in
the same single pass, so the decision needs no second read; the counts are then
folded to classes.
"""

from __future__ import annotations

import argparse
import functools
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from egnet.core.errors import DataError
from egnet.core.files import cpu_workers, pool_context, write_json
from egnet.data import exposure, labels, layout
from egnet.metrics import ExposureConfusion, count_pixels, format_table

ID_MODES = ("auto", "labelIds", "trainIds")
_SHOW = 5  # file names an error message lists before "and N more"
_LABEL_ID_ONLY = frozenset(range(labels.NUM_CLASSES, 34))  # 19..33: labelIds, never trainIds
#: prediction value -> counting column: 0..33 as is, 255 -> 34, anything else -> 35 (refused)
_CODE_IGNORE, _CODE_OTHER = 34, 35
NUM_CODES = 36
VALUE_CODE = np.full(256, _CODE_OTHER, dtype=np.uint8)
VALUE_CODE[:34] = np.arange(34)
VALUE_CODE[labels.IGNORE_INDEX] = _CODE_IGNORE
CODE_VALUE = [*range(34), labels.IGNORE_INDEX]  # column -> value, for the codes that are kept


def _listing(names: Sequence[str]) -> str:
    more = f" and {len(names) - _SHOW} more" if len(names) > _SHOW else ""
    return ", ".join(names[:_SHOW]) + more


def find_predictions(pred_dir: Path, stems: Sequence[str]) -> tuple[dict[str, Path], list[str]]:
    """stem -> prediction file (``<stem>_labelIds.png`` preferred over ``<stem>.png``), and missing stems."""
    found: dict[str, Path] = {}
    missing: list[str] = []
    for stem in stems:
        for name in (f"{stem}{layout.LABEL_SUFFIX}", f"{stem}.png"):
            if (pred_dir / name).is_file():
                found[stem] = pred_dir / name
                break
        else:
            missing.append(stem)
    return found, missing


def check_sizes(preds: dict[str, Path], size: tuple[int, int]) -> None:
    """Every prediction is width x height = ``size`` (PNG header only); DataError naming the others."""
    wrong: list[str] = []
    for path in preds.values():
        try:
            with Image.open(path) as im:
                got = im.size
        except OSError:
            raise DataError(f"{path}: cannot be decoded as an image") from None
        if got != tuple(size):
            wrong.append(f"{path.name} ({got[0]}x{got[1]})")
    if wrong:
        raise DataError(f"{len(wrong)} prediction(s) are not {size[0]}x{size[1]}: {_listing(wrong)}")


def read_prediction(path: Path) -> np.ndarray:
    """One-channel 8-bit PNG (or a palette PNG: its indices) -> HxW uint8."""
    pred = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if pred is not None and pred.ndim == 3:
        with Image.open(path) as im:  # OpenCV expands palettes to colour; the indices are the ids
            if im.mode == "P":
                pred = np.array(im)
    if pred is None:
        raise DataError(f"{path}: cannot be decoded as an image")
    if pred.dtype != np.uint8:
        raise DataError(f"{path}: prediction must be 8-bit, got {pred.dtype}")
    if pred.ndim != 2:
        raise DataError(f"{path}: prediction must be one channel of class ids, got {pred.shape[2]} channels "
                        "(a colour visualisation?)")
    return pred


def _image_counts(pair: layout.Pair, pred_path: Path,
                  size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """One image: labelled-pixel counts [10, C, 36] over (exposure bin, gt trainId, prediction
    value code), ignored-pixel counts [36] per code, and whether the label was resized.

    Every array stays uint8 (table lookups with OpenCV, no widening); one counting pass."""
    pred = read_prediction(pred_path)
    label_ids, resized = layout.read_label(pair.label, size)
    image = layout.read_image(pair.image, bgr=True)  # exposure is max(R, G, B): channel order is moot
    if image.shape[:2] != label_ids.shape:
        raise DataError(f"{pair.image}: image is {image.shape[1]}x{image.shape[0]}, "
                        f"expected {size[0]}x{size[1]}")
    bins = exposure.bin_index(image)
    gt = cv2.LUT(label_ids, labels.LABEL_TO_TRAIN)
    codes = cv2.LUT(pred, VALUE_CODE)
    counts, ignored = count_pixels(torch.from_numpy(bins), torch.from_numpy(gt), torch.from_numpy(codes),
                                   labels.NUM_CLASSES, NUM_CODES)
    if counts[..., _CODE_OTHER].any() or ignored[_CODE_OTHER]:
        odd = sorted(int(v) for v in np.unique(pred[codes == _CODE_OTHER]))
        raise DataError(f"{pred_path}: values {odd[:10]} are neither labelIds (0-33) "
                        "nor trainIds (0-18, 255)")
    return counts, ignored, resized


def _worker_init() -> None:
    """One thread per worker process: the processes are the parallelism."""
    torch.set_num_threads(1)
    cv2.setNumThreads(1)


def _chunk_counts(jobs: list[tuple[layout.Pair, Path]],
                  size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """Summed (counts, pixels per code incl. ignored, resized labels, images) of a few images."""
    raw = torch.zeros(exposure.NUM_BINS, labels.NUM_CLASSES, NUM_CODES, dtype=torch.int64)
    seen = torch.zeros(NUM_CODES, dtype=torch.int64)
    resized = 0
    for pair, pred_path in jobs:
        counts, ignored, was_resized = _image_counts(pair, pred_path, size)
        raw += counts
        seen += ignored + counts.sum(dim=(0, 1))
        resized += int(was_resized)
    return raw, seen, resized, len(jobs)


def detect_ids(values: set[int], ids: str = "auto") -> str:
    """'labelIds' or 'trainIds' for the prediction values seen (rule in the module docstring)."""
    shown = sorted(values)
    outside = sorted(v for v in values if v > 33 and v != labels.IGNORE_INDEX)
    if outside:
        raise DataError(f"predictions hold values {outside[:10]} that are neither labelIds (0-33) "
                        f"nor trainIds (0-18, 255)")
    label_only = sorted(values & _LABEL_ID_ONLY)
    has_ignore = labels.IGNORE_INDEX in values
    if ids == "labelIds":
        if has_ignore:
            raise DataError("--ids labelIds: predictions hold 255, which is no labelId")
        return ids
    if ids == "trainIds":
        if label_only:
            raise DataError(f"--ids trainIds: predictions hold {label_only[:10]}, which are no trainIds")
        return ids
    if ids != "auto":
        raise ValueError(f"ids must be one of {ID_MODES}, got {ids!r}")
    if has_ignore and label_only:
        raise DataError(f"predictions mix 255 (trainIds) with {label_only[:10]} (labelIds); "
                        f"values seen: {shown}")
    return "labelIds" if label_only else "trainIds"


def fold(raw: torch.Tensor, ids: str) -> np.ndarray:
    """[10, C, 36] counts per value code -> [10, C, C+1] per class (last column: not a class)."""
    c = labels.NUM_CLASSES
    values = np.array(CODE_VALUE)
    train = labels.LABEL_TO_TRAIN[values] if ids == "labelIds" else values
    onehot = np.zeros((NUM_CODES, c + 1), dtype=np.int64)
    onehot[np.arange(len(values)), np.where(train < c, train, c)] = 1
    return raw.numpy() @ onehot


def score(pred_dir: str | Path, root: str | Path, stems: Sequence[str], size: tuple[int, int],
          average: str = "weighted", *, ids: str = "auto", source: str = "split list",
          workers: int = 0) -> dict[str, Any]:
    """Score the predictions in ``pred_dir`` for ``stems`` against the dataset at ``root``.

    ``size`` = (width, height) of images and predictions. Returns the metrics.json dict
    plus ``prediction_ids`` (labelIds|trainIds) and ``labels_resized`` (NightCity+ count).
    """
    pred_dir, size = Path(pred_dir), (int(size[0]), int(size[1]))
    workers = cpu_workers(workers)
    if not pred_dir.is_dir():
        raise DataError(f"{pred_dir}: prediction folder not found")
    if not stems:
        raise DataError(f"{source}: no stems to score")
    pairs = layout.select(layout.pairs_by_stem(root), stems, source)
    preds, missing = find_predictions(pred_dir, stems)
    if missing:
        raise DataError(f"{pred_dir}: {len(missing)} of {len(stems)} prediction(s) missing "
                        f"(<stem>.png or <stem>{layout.LABEL_SUFFIX}): {_listing(missing)}")
    check_sizes(preds, size)

    raw = torch.zeros(exposure.NUM_BINS, labels.NUM_CLASSES, NUM_CODES, dtype=torch.int64)
    seen = torch.zeros(NUM_CODES, dtype=torch.int64)  # pixels per value code, ignored gt included
    resized = 0
    jobs = [(p, preds[p.stem]) for p in pairs]
    nproc = max(1, min(workers, len(jobs)))
    per_task = max(1, min(8, len(jobs) // (16 * nproc)))  # small tasks: no worker idles long at the end
    chunks = [jobs[i:i + per_task] for i in range(0, len(jobs), per_task)]
    work = functools.partial(_chunk_counts, size=size)
    if nproc == 1:
        results: Iterator[tuple[torch.Tensor, torch.Tensor, int, int]] = map(work, chunks)
    else:
        # the pool before the bar (tqdm's monitor is a thread: core.files.pool_context); a bad file
        # raises in its worker, comes back here and terminates the pool
        pool = pool_context(preload=(__name__,)).Pool(nproc, initializer=_worker_init)
        results = pool.imap(work, chunks)
    bar = tqdm(total=len(jobs), desc="score", unit="img", disable=None)
    try:
        for counts, ids_seen, was_resized, n in results:
            raw += counts
            seen += ids_seen
            resized += was_resized
            bar.update(n)
    finally:
        bar.close()
        if nproc > 1:
            pool.terminate()
            pool.join()

    values = {CODE_VALUE[int(k)] for k in torch.nonzero(seen).flatten()}
    kind = detect_ids(values, ids)
    metrics = ExposureConfusion.from_counts(fold(raw, kind), len(pairs)).compute(average)
    metrics["prediction_ids"] = kind
    metrics["labels_resized"] = resized
    return metrics


def main(args: argparse.Namespace, cfg) -> int:
    """CLI handler: score PRED_DIR on SPLIT/test.txt, print the table, write OUT/metrics.json."""
    split_list = Path(args.split) / "test.txt"
    stems = layout.read_split_list(split_list)
    ids = getattr(args, "ids", "auto")
    metrics = score(args.pred_dir, args.data, stems, tuple(cfg.data.image_size), cfg.evaluate.ef1_average,
                    ids=ids, source=str(split_list), workers=cfg.data.workers)
    how = "given by --ids" if ids != "auto" else "detected"
    print(f"predictions: {metrics['prediction_ids']} ({how}); {metrics['num_images']} images")
    if metrics["labels_resized"]:
        print(f"note: {metrics['labels_resized']} label(s) were 2x the image size (NightCity+) "
              "and were resized nearest-neighbour")
    print(format_table(metrics))
    if args.out is not None:
        out = Path(args.out) / "metrics.json"
        write_json(out, metrics)
        print(f"wrote {out}")
    return 0
