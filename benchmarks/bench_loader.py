"""Train loader images/s per worker at the paper setting, and the workers one H100/H200 needs.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_loader.py
    .venv/bin/python benchmarks/bench_loader.py --samples 60 --loader-batches 4    # quicker

What is timed: the real train dataset (``egnet.data.dataset.SegmentationDataset`` with
the transform ``train.input`` names) on synthetic NightCity-format pairs at the
release's 1024x512: per sample, decode image and label (OpenCV, once each), the
transform (``resize``: whole image to 300x300, the paper profile; ``crop``: scale
0.5-2 and a 300x300 window), the CHW RGB uint8 tensor and the uint8 label.

- per worker: one process, OpenCV and torch on one thread each, as a DataLoader
  worker runs; images/s = samples per CPU-second of that process (``time.process_time``),
  i.e. what one worker delivers on a core of its own, whatever else this shared machine
  runs meanwhile (the wall-clock rate is printed beside it);
- ``--dataloader``: also the real train loader (``make_loaders``: batch 14, uint8
  tensors) with 1 and 2 worker processes, wall clock, on this machine's cores as they are.

The workers one GPU needs: the FLOPs of one training step at the paper's settings
(EGNet ResNet-101 stride 8, batch 14, 300x300; counted by ``bench_train.train_step_flops``)
give the step rate at 40 % of the GPU's dense bf16 peak (H100/H200 SXM: 989 TFLOP/s);
workers = that images/s / one worker's images/s, rounded up, set against the cores a
GPU node gives per GPU (assumed: a DGX H100/H200, 2 x 56 cores for 8 GPUs = 14 per
GPU, so ``train.workers: auto`` = 13). This machine's cores may be faster or slower
than the node's; the per-worker figure is the one to re-measure there.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from bench_train import PEAK_BF16, _cfg, _data, train_step_flops

from egnet.training.distributed import DistInfo

MFU_TARGET = 0.40
NODE_CORES, NODE_GPUS = 112, 8  # DGX H100 / DGX H200: 2 x Xeon Platinum 8480C (56 cores each), 8 GPUs


def per_worker_images_per_s(cfg, data: Path, split: Path, samples: int,
                            repeats: int) -> tuple[list[float], list[float]]:
    """(samples per CPU-second, samples per wall-second) of the train dataset in this process, one
    thread: ``repeats`` timings of ``samples`` each."""
    import cv2

    from egnet.data.dataset import SegmentationDataset, train_transform
    from egnet.data.layout import split_pairs

    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    pairs, _ = split_pairs(data, split, "train")
    ds = SegmentationDataset(pairs, cfg.data.image_size, train=True, transform=train_transform(cfg.train))
    ds[(0, 0)]  # warm caches and imports
    cpu, wall = [], []
    for r in range(repeats):
        c0, w0 = time.process_time(), time.perf_counter()
        for i in range(samples):
            ds[(i % len(ds), r * samples + i)]
        cpu.append(samples / (time.process_time() - c0))
        wall.append(samples / (time.perf_counter() - w0))
    return cpu, wall


def loader_images_per_s(cfg, data: Path, split: Path, batches: int) -> float:
    """Images/s through the real train DataLoader over ``batches`` batches (epochs repeat as
    needed; the first batch, which waits for the workers to start, is not timed)."""
    from egnet.training.loop import make_loaders

    loader, sampler, _ = make_loaders(cfg, data, split, None, DistInfo(0, 1, 0, torch.device("cpu")))
    n, epoch, start = -1, 0, 0.0
    while n < batches:
        sampler.set_epoch(epoch)
        for _ in loader:
            n += 1
            if n == 0:
                start = time.perf_counter()
            if n == batches:
                break
        epoch += 1
    return batches * cfg.train.batch_size / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64, help="synthetic 1024x512 training scenes")
    parser.add_argument("--samples", type=int, default=120, help="samples per per-worker timing")
    parser.add_argument("--repeats", type=int, default=3, help="per-worker timings per input mode")
    parser.add_argument("--loader-batches", type=int, default=6, help="batches of 14 per DataLoader timing")
    parser.add_argument("--dataloader", action="store_true", help="also time the real DataLoader, wall clock")
    parser.add_argument("--gpu", default="H100", choices=sorted(PEAK_BF16),
                        help="GPU for the workers estimate")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="bench-loader-") as tmp:
        # num = images / (1 - val share) so the train side holds about --images scenes
        data, split = _data(Path(tmp), (1024, 512), num=math.ceil(args.images / 0.7))
        common = ("model.backbone_weights=none",)
        rates: dict[str, float] = {}
        print(f"train dataset, paper setting (1024x512 PNG pairs, 300x300 out), {args.repeats} x "
              f"{args.samples} samples, one thread (a DataLoader worker)")
        for mode in ("resize", "crop"):
            cfg = _cfg("paper", *common, f"train.input={mode}")
            cpu, wall = per_worker_images_per_s(cfg, data, split, args.samples, args.repeats)
            rates[mode] = statistics.median(cpu)
            print(f"  input {mode:6s}  {rates[mode]:6.1f} images/s per worker = {1000 / rates[mode]:.1f} "
                  f"CPU-ms/image (runs {', '.join(f'{x:.1f}' for x in cpu)}; wall clock here "
                  f"{statistics.median(wall):.1f} images/s)")
        if args.dataloader:
            print("\nthe real train DataLoader (batch 14, uint8 tensors), wall clock, this machine now")
            for mode in ("resize", "crop"):
                for workers in (1, 2):
                    cfg = _cfg("paper", *common, f"train.input={mode}", f"train.workers={workers}")
                    ips = loader_images_per_s(cfg, data, split, args.loader_batches)
                    print(f"  input {mode:6s}  {workers} worker(s): {ips:6.1f} images/s")

    paper = _cfg("paper", *common)
    flops = train_step_flops(paper)
    per_image = flops / paper.train.batch_size
    need = MFU_TARGET * PEAK_BF16[args.gpu] / per_image
    per_gpu = NODE_CORES // NODE_GPUS
    gpu = "H100/H200" if args.gpu in ("H100", "H200") else args.gpu  # the same bf16 peak
    print(f"\nworkers one {gpu} needs (dense bf16 peak {PEAK_BF16[args.gpu] / 1e12:.0f} TFLOP/s):")
    print(f"  one training step, EGNet ResNet-101 stride 8, batch {paper.train.batch_size} x "
          f"{paper.train.crop_size}^2: {flops / 1e12:.2f} TFLOP counted = "
          f"{per_image / 1e9:.0f} GFLOP per image")
    print(f"  at {MFU_TARGET:.0%} MFU: {MFU_TARGET * PEAK_BF16[args.gpu] / 1e12:.0f} TFLOP/s / "
          f"{per_image / 1e9:.0f} GFLOP = {need:.0f} images/s = {need / paper.train.batch_size:.1f} steps/s")
    print(f"  node assumed: {NODE_CORES} cores / {NODE_GPUS} GPUs = {per_gpu} cores per GPU, "
          f"train.workers auto = {per_gpu - 1}")
    for mode, rate in rates.items():
        workers = math.ceil(need / rate)
        verdict = "the loader keeps up" if workers <= per_gpu - 1 else "the LOADER IS THE BOTTLENECK"
        print(f"  input {mode:6s}: {need:.0f} / {rate:.1f} = {workers} workers needed of {per_gpu - 1}: "
              f"{verdict} ({(per_gpu - 1) * rate:.0f} images/s with {per_gpu - 1})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
