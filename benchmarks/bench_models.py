"""Training-step time of every variant beside torchvision FCN-ResNet101, as ratios next to FLOP ratios.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_models.py          # ResNet-101, stride 8, 2x3x128x128
    .venv/bin/python benchmarks/bench_models.py --backbone resnet18 --output-stride 16 --size 256

One step = forward + SegExposureLoss + backward on a random batch (train mode). All models
are built first, then timed in interleaved rounds (variant order rotated each round) so
that machine load drifts hit every variant alike; each variant's fastest round (the least
disturbed on a shared machine) and its median are divided by FCN-ResNet101's from the
same rounds. Absolute times depend on the machine and are printed for context only; the
ratios are the result. Batch 2 because DeepLabV3's image-pooling branch has a BatchNorm
that needs more than one value per channel in training.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from count_flops import REFERENCE, model_config  # sibling script in benchmarks/

from egnet.core.config import VARIANTS
from egnet.models import build_model, count_flops
from egnet.training.losses import SegExposureLoss


def step_time(model: torch.nn.Module, loss_fn: SegExposureLoss, x: torch.Tensor, t: torch.Tensor) -> float:
    """Seconds for one forward + loss + backward."""
    start = time.perf_counter()
    total, _ = loss_fn(model(x), t, x)
    total.backward()
    elapsed = time.perf_counter() - start
    model.zero_grad(set_to_none=True)  # frees the gradients: 9 ResNet-101 models must fit in RAM
    return elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="resnet101")
    parser.add_argument("--output-stride", type=int, default=8)
    parser.add_argument("--size", type=int, default=128, help="square input side, pixels")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds (after one warm-up round)")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    args = parser.parse_args(argv)

    variants = args.variants.split(",")
    if REFERENCE not in variants:
        variants.append(REFERENCE)
    torch.manual_seed(0)
    models, flops = {}, {}
    for v in variants:
        cfg = model_config(v, args.backbone, args.output_stride)
        models[v] = build_model(cfg).train()
        with torch.device("meta"):
            flops[v] = count_flops(build_model(cfg), args.size, args.size)
    loss_fn = SegExposureLoss(alpha=1.0, beta=0.01)
    x = torch.rand(args.batch, 3, args.size, args.size)
    t = torch.randint(0, 19, (args.batch, args.size, args.size))

    times: dict[str, list[float]] = {v: [] for v in variants}
    for round_ in range(args.repeats + 1):
        order = variants[round_ % len(variants):] + variants[:round_ % len(variants)]
        for v in order:
            seconds = step_time(models[v], loss_fn, x, t)
            if round_ > 0:  # round 0 warms up allocator and kernels
                times[v].append(seconds)
        print(f"round {round_}/{args.repeats} done", flush=True)

    ref_min, ref_med = min(times[REFERENCE]), statistics.median(times[REFERENCE])
    print(
        f"\nforward+backward, {args.batch}x3x{args.size}x{args.size}, EGNet family {args.backbone} "
        f"stride {args.output_stride}, {torch.get_num_threads()} threads, {args.repeats} rounds\n"
    )
    print(f"| variant | ms / image (min) | time / {REFERENCE} (min) | (median) | FLOPs / {REFERENCE} |")
    print("|---|---|---|---|---|")
    for v in variants:
        low, med = min(times[v]), statistics.median(times[v])
        print(
            f"| `{v}` | {1000 * low / args.batch:.0f} | {low / ref_min:.2f} | {med / ref_med:.2f} "
            f"| {flops[v] / flops[REFERENCE]:.2f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
