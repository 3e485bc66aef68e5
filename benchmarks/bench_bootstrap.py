"""The promotion gate's paired bootstrap: 1,000 resamples over 1,299 test images on the CPU.

    .venv/bin/python benchmarks/bench_bootstrap.py [--images 1299] [--resamples 1000] [--size 1024x512]

Per-image counts as `egnet evaluate` writes them ([images, 10, 19, 20], per_image_counts.npz)
for a champion and a challenger on the same images: street-like label maps and exposure
bins (benchmarks/bench_metrics.py's scenes; a pool of ``--pool`` scenes, reused), two
predictions per image with their own boundary shifts, wrong blobs and 2% noise pixels
(denser confusions than a trained model's: more non-zero cells, a harder case for the
product), counted by the metric engine. Then, on those arrays:

1. ``egnet.metrics.bootstrap.paired_bootstrap`` (vectorised: one matrix product per model);
2. the same draws in a plain loop (sum the drawn images' counts, ``metrics_from_counts``
   per resample), over ``--reference`` resamples and extrapolated to ``--resamples``;
   the intervals of both must agree to 1e-12 on those resamples;
3. ``per_image_counts.npz``'s size for this many images (and the raw int32 size).

Single process; NumPy's BLAS uses its default threads (printed).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_metrics import CLASS_IDS, scene  # noqa: E402

from egnet.data import exposure, labels  # noqa: E402
from egnet.evaluation.per_image import PerImageCounts, write_per_image  # noqa: E402
from egnet.metrics import ExposureConfusion, metrics_from_counts  # noqa: E402
from egnet.metrics.bootstrap import paired_bootstrap, resample_indices  # noqa: E402


def predict_like(rng: np.random.Generator, gt_ids: np.ndarray) -> np.ndarray:
    """A labelIds prediction of ``gt_ids``: shifted boundaries, wrong blobs, noise pixels."""
    h, w = gt_ids.shape
    pred = np.roll(gt_ids, int(rng.integers(1, 6)), axis=1)
    for _ in range(25):
        cv2.circle(pred, (int(rng.integers(0, w)), int(rng.integers(0, h))), int(rng.integers(5, 40)),
                   int(rng.choice(CLASS_IDS)), -1)
    noise = rng.random((h, w)) < 0.02
    pred[noise] = rng.choice(sorted(labels.VALID_LABEL_IDS), size=int(noise.sum()))
    return pred


def make_counts(images: int, pool: int, size: tuple[int, int],
                seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    scenes = []
    for _ in range(pool):
        img, gt, _ = scene(rng, *size)
        scenes.append((torch.from_numpy(labels.to_train_ids(gt)), torch.from_numpy(exposure.bin_index(img)),
                       gt))
    acc = ExposureConfusion()
    out = np.zeros((2, images, exposure.NUM_BINS, labels.NUM_CLASSES, labels.NUM_CLASSES + 1), np.int32)
    for i in range(images):
        gt, bins, gt_ids = scenes[i % pool]
        for m in range(2):
            pred = torch.from_numpy(labels.to_train_ids(predict_like(rng, gt_ids)))
            out[m, i] = acc.count(pred, gt, bins).numpy()
    return out[0], out[1]


def blas_threads() -> str:
    """NumPy's BLAS and its thread count, as threadpoolctl sees it (when installed)."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return "threads unknown"
    libs = [f"{i.get('internal_api')} {i.get('num_threads')} threads" for i in threadpool_info()
            if i.get("user_api") == "blas"]
    return ", ".join(libs) or "none found"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=1299)
    ap.add_argument("--resamples", type=int, default=1000)
    ap.add_argument("--reference", type=int, default=40, help="resamples of the reference loop")
    ap.add_argument("--pool", type=int, default=48, help="distinct scenes the images are drawn from")
    ap.add_argument("--size", default="1024x512")
    ap.add_argument("--confidence", type=float, default=0.9)
    a = ap.parse_args(argv)
    size = tuple(int(v) for v in a.size.lower().split("x"))
    torch.set_num_threads(1)  # the counting: one thread (NumPy's BLAS keeps its own threads)
    t = time.perf_counter()
    champ, chall = make_counts(a.images, a.pool, size)
    used = int((champ.reshape(a.images, -1).any(0) | chall.reshape(a.images, -1).any(0)).sum())
    print(f"per-image counts of {a.images} images ({size[0]}x{size[1]}) x 2 models made in "
          f"{time.perf_counter() - t:.0f} s; {used} of {champ[0].size} count cells used; "
          f"cores {os.cpu_count()}, BLAS {blas_threads()}", flush=True)

    times = []
    for _ in range(3):
        t = time.perf_counter()
        result = paired_bootstrap(champ, chall, resamples=a.resamples, confidence=a.confidence, seed=0)
        times.append(time.perf_counter() - t)
    vec = min(times)

    idx = resample_indices(a.images, a.resamples, 0)[: a.reference]
    t = time.perf_counter()
    ref = []
    for row in idx:
        ma = metrics_from_counts(champ[row].sum(axis=0, dtype=np.int64), a.images)
        mb = metrics_from_counts(chall[row].sum(axis=0, dtype=np.int64), a.images)
        ref.append((mb["mIoU"] - ma["mIoU"], mb["mEF1"] - ma["mEF1"]))
    loop = (time.perf_counter() - t) * a.resamples / a.reference
    ref = np.array(ref)
    small = paired_bootstrap(champ, chall, confidence=a.confidence, indices=idx)
    tail = (1 - a.confidence) / 2
    diff = max(abs(float(np.quantile(ref[:, k], q)) - bound)
               for k, iv in ((0, small.miou), (1, small.mef1))
               for q, bound in ((tail, iv.lo), (1 - tail, iv.hi)))

    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench_bootstrap_{os.getpid()}.npz"
    write_per_image(path, PerImageCounts([f"img_{i:04d}" for i in range(a.images)], champ))
    npz = path.stat().st_size
    path.unlink()

    print(f"\npaired bootstrap, {a.resamples} resamples x {a.images} images: {vec:.2f} s "
          f"(fastest of 3; vectorised); plain loop {loop:.1f} s (extrapolated from {a.reference}); "
          f"{loop / vec:.0f}x")
    print(f"reference loop vs vectorised on the same {a.reference} draws: largest interval difference "
          f"{diff:.1e} (< 1e-12: {diff < 1e-12})")
    print(f"mIoU challenger - champion {result.miou.point:+.4f}, {int(100 * a.confidence)}% CI "
          f"[{result.miou.lo:+.4f}, {result.miou.hi:+.4f}]; mEF1 {result.mef1.point:+.4f} "
          f"[{result.mef1.lo:+.4f}, {result.mef1.hi:+.4f}]")
    print(f"per_image_counts.npz for {a.images} images: {npz / 1e6:.2f} MB compressed "
          f"({champ.nbytes / 1e6:.1f} MB as raw int32 [{a.images}, 10, 19, 20])")
    return 0 if diff < 1e-12 else 1


if __name__ == "__main__":
    sys.exit(main())
