"""Throughput of `egnet data stats` against plain ``cv2.imread`` of the same files.

    .venv/bin/python benchmarks/bench_stats.py [--data /tmp/egnet-bench-1000] [--num 1000]
                                               [--size 1024x512] [--workers 0] [--rounds 4]

Generates ``--num`` synthetic scenes under ``--data`` once (``egnet.data.synth``;
reused on later runs), then times, side by side and alternating, with the same
number of processes, the same fork pool and the same chunk size (rounds in
alternating order a-b, b-a, ...):

  (a) decode only: ``cv2.imread`` of the image and the label of every pair;
  (b) ``compute_stats`` on the release's train/val folders as the two splits.

Prints, per round and for the best rounds, wall-clock pairs/s and pairs per CPU-second
(user+sys of the pool workers and this process, from getrusage). On a quiet machine
the two ratios agree; on a shared one, wall clock swings with other people's load and
the CPU-time ratio is the steadier measure of the work each side does.
Target (issue): wall-clock ratio (b)/(a) >= 0.90.
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import sys
import tempfile
import time
from pathlib import Path

import cv2
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from egnet.core.files import cpu_workers  # noqa: E402
from egnet.data import layout, stats  # noqa: E402


def _cpu_seconds() -> float:
    """user+sys CPU of this process and its reaped children (the pool workers), seconds."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def read_only(pair: layout.Pair) -> tuple[int, int]:
    """Plain decode of both files; returns their sizes so the work cannot be skipped."""
    image = cv2.imread(str(pair.image))
    label = cv2.imread(str(pair.label), cv2.IMREAD_UNCHANGED)
    return image.size, label.size


def time_decode_only(pairs: list[layout.Pair], nproc: int) -> tuple[float, float]:
    """(wall s, CPU s) of decoding every pair in a fork pool shaped like ``stats.map_images``'s."""
    cpu, start = _cpu_seconds(), time.perf_counter()
    with multiprocessing.get_context("fork").Pool(nproc) as pool:
        it = pool.imap(read_only, pairs, chunksize=stats.chunksize_for(len(pairs), nproc))
        for _ in tqdm(it, total=len(pairs), desc="imread", unit="img", disable=None):
            pass
    return time.perf_counter() - start, _cpu_seconds() - cpu


def time_stats(root: Path, split_dir: Path, size: tuple[int, int], nproc: int) -> tuple[float, float, dict]:
    """(wall s, CPU s, stats document) of ``compute_stats``."""
    cpu, start = _cpu_seconds(), time.perf_counter()
    doc = stats.compute_stats(root, split_dir, size, workers=nproc)
    return time.perf_counter() - start, _cpu_seconds() - cpu, doc


def ensure_data(root: Path, num: int, size: tuple[int, int]) -> None:
    try:
        have = len(layout.scan(root).pairs)
    except Exception:
        have = 0
    if have == num:
        print(f"reusing {num} pairs under {root}")
        return
    from egnet.data.synth import synthesize

    print(f"generating {num} synthetic {size[0]}x{size[1]} scenes under {root} (once) ...")
    s = synthesize(root, num=num, seed=0, size=size)
    print(f"  done in {s['seconds']:.0f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("/tmp/egnet-bench-1000"))
    ap.add_argument("--num", type=int, default=1000)
    ap.add_argument("--size", default="1024x512")
    ap.add_argument("--workers", type=int, default=0, help="processes for both sides (0 = all cores)")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--limit", type=int, default=0,
                    help="time only every k-th pair, about this many (quick check)")
    args = ap.parse_args()
    size = tuple(int(v) for v in args.size.split("x"))
    ensure_data(args.data, args.num, size)
    pairs = list(layout.scan(args.data).pairs)
    if args.limit:
        pairs = pairs[:: max(1, len(pairs) // args.limit)]
    n, nproc = len(pairs), cpu_workers(args.workers)
    with tempfile.TemporaryDirectory() as tmp:
        split_dir = Path(tmp)
        for name, folder in (("train", "train"), ("test", "val")):
            (split_dir / f"{name}.txt").write_text("".join(f"{p.stem}\n" for p in pairs if p.split == folder))
        for p in pairs:  # page cache warm for both sides alike
            p.image.read_bytes(), p.label.read_bytes()
        decode, full = [], []
        for r in range(args.rounds):
            # a-b, b-a, a-b, ...: a load that drifts during the run hits both sides alike
            if r % 2:
                wall, cpu, doc = time_stats(args.data, split_dir, size, nproc)
                decode.append(time_decode_only(pairs, nproc))
            else:
                decode.append(time_decode_only(pairs, nproc))
                wall, cpu, doc = time_stats(args.data, split_dir, size, nproc)
            full.append((wall, cpu))
            (wa, ca), (wb, cb) = decode[-1], full[-1]
            print(f"round {r + 1}: imread {n / wa:6.1f} pairs/s ({n / ca:6.1f} per CPU-s), "
                  f"stats {n / wb:6.1f} pairs/s ({n / cb:6.1f} per CPU-s), "
                  f"ratio wall {wa / wb:.3f}, CPU {ca / cb:.3f}", flush=True)
    assert sum(doc["num_images"].values()) == n
    best_a, best_b = n / min(w for w, _ in decode), n / min(w for w, _ in full)
    cpu_a, cpu_b = n / min(c for _, c in decode), n / min(c for _, c in full)
    total_a, total_b = sum(w for w, _ in decode), sum(w for w, _ in full)
    print(f"\n{n} pairs {size[0]}x{size[1]}, {nproc} processes, chunksize {stats.chunksize_for(n, nproc)}, "
          f"best of {args.rounds} rounds (all rounds summed: wall ratio {total_a / total_b:.3f})")
    print(f"(a) cv2.imread image+label : {best_a:7.1f} pairs/s   {cpu_a:7.1f} pairs per CPU-s")
    print(f"(b) compute_stats          : {best_b:7.1f} pairs/s   {cpu_b:7.1f} pairs per CPU-s")
    print(f"ratio (b)/(a)              : {best_b / best_a:7.3f} wall     {cpu_b / cpu_a:7.3f} CPU   "
          "(target >= 0.90)")


if __name__ == "__main__":
    main()
