"""Training throughput: EGNet vs the FCN baseline, and the data loader vs what a step consumes.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_train.py          # CPU, small settings
    .venv/bin/python benchmarks/bench_train.py report OUT/train_summary.json  # used by gpu_train.sh

``cpu`` (default): synthetic NightCity-format data (512x256) in a temporary folder; the
real train loader (``egnet.training.loop.make_loaders``) and the real optimizer step
(``egnet.training.loop.sgd_step``: forward, loss, backward, SGD). EGNet and torchvision
FCN-ResNet101 (both ResNet-101 at output stride 8, the paper's comparison) take
steps on the same batches in interleaved rounds, so machine load drifts hit both;
the result is their images/s ratio. The loader's images/s (0 and 2 workers) is set
against the images/s the quick profile's step consumes: above 1 the loader keeps up.

``report``: ms/iter, images/s, peak memory and model FLOP utilisation (MFU) of an
``egnet train`` run from its train_summary.json; the FLOPs of one training step
(forward + backward) are counted by torch's FlopCounterMode on the meta device.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from egnet.core.config import Config, load_config
from egnet.training.distributed import DistInfo

REPO = Path(__file__).resolve().parents[1]
#: dense bf16 tensor-core peak, FLOP/s (vendor data sheets, SXM parts)
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "L40S": 362e12, "B200": 2250e12}


def _cfg(profile: str, *overrides: str) -> Config:
    return load_config(REPO / "params.yaml", profile, list(overrides))


def _data(root: Path, size: tuple[int, int], num: int) -> tuple[Path, Path]:
    from egnet.data import layout
    from egnet.data.synth import synthesize

    data, split = root / "data", root / "split"
    synthesize(data, num=num, seed=0, size=size)
    split.mkdir()
    pairs = layout.scan(data).pairs
    (split / "train.txt").write_text("".join(f"{p.stem}\n" for p in pairs if p.split == "train"))
    (split / "test.txt").write_text("".join(f"{p.stem}\n" for p in pairs if p.split == "val"))
    return data, split


def loader_images_per_s(cfg: Config, data: Path, split: Path, batches: int) -> float:
    from egnet.training.loop import make_loaders

    info = DistInfo(0, 1, 0, torch.device("cpu"))
    loader, sampler, _ = make_loaders(cfg, data, split, None, info)
    n, start = 0, time.perf_counter()
    epoch = 0
    while n < batches:
        sampler.set_epoch(epoch)
        for _ in zip(range(batches - n), loader, strict=False):
            n += 1
        epoch += 1
    return n * cfg.train.batch_size / (time.perf_counter() - start)


def step_rounds(cfgs: dict[str, Config], data: Path, split: Path, rounds: int) -> dict[str, list[float]]:
    """Seconds per optimizer step for each config, interleaved over ``rounds`` on the same batches."""
    from egnet.models import build_model
    from egnet.training.loop import make_loaders, sgd_step
    from egnet.training.losses import SegExposureLoss

    flags = {"amp": False, "channels_last": False, "compile": False}
    any_cfg = next(iter(cfgs.values()))
    loader, sampler, _ = make_loaders(any_cfg, data, split, None, DistInfo(0, 1, 0, torch.device("cpu")))
    sampler.set_epoch(0)
    batches = [b for _, b in zip(range(rounds + 1), loader, strict=False)]
    models = {}
    for name, cfg in cfgs.items():
        torch.manual_seed(0)
        model = build_model(cfg.model).train()
        opt = torch.optim.SGD(model.parameters(), lr=cfg.train.lr, momentum=cfg.train.momentum)
        models[name] = (model, opt, SegExposureLoss(cfg.train.alpha, cfg.train.beta))
    times: dict[str, list[float]] = {name: [] for name in cfgs}
    for r, batch in enumerate(batches):
        order = list(models.items())
        for name, (model, opt, loss_fn) in order[r % 2:] + order[: r % 2]:
            start = time.perf_counter()
            sgd_step(model, loss_fn, opt, None, batch, torch.device("cpu"), flags)
            if r > 0:  # round 0 warms up allocators and caches
                times[name].append(time.perf_counter() - start)
    return times


def cpu(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        data, split = _data(Path(tmp), (512, 256), num=24)
        common = ("data.image_size=[512,256]", "model.backbone_weights=none", f"train.crop_size={args.crop}",
                  f"train.batch_size={args.batch}", "train.workers=0")
        cfgs = {
            "egnet": _cfg("paper", *common),
            "fcn_resnet101": _cfg("paper", *common, "model.variant=fcn_resnet101"),
        }
        times = step_rounds(cfgs, data, split, args.rounds)
        print(f"train step, ResNet-101 stride 8, batch {args.batch}x{args.crop}x{args.crop}, "
              f"{args.threads} thread(s), {args.rounds} interleaved rounds")
        for name, ts in times.items():
            print(f"  {name:15s} median {statistics.median(ts):7.3f} s/step  "
                  f"{args.batch / statistics.median(ts):6.2f} images/s  (min {min(ts):.3f} s)")
        ratio = statistics.median(times["egnet"]) / statistics.median(times["fcn_resnet101"])
        best = min(times["egnet"]) / min(times["fcn_resnet101"])
        flops = {name: train_step_flops(cfg) for name, cfg in cfgs.items()}
        print(f"  EGNet / FCN step time: {ratio:.2f}x median, {best:.2f}x best; "
              f"FLOP ratio {flops['egnet'] / flops['fcn_resnet101']:.2f}x "
              "(two streams of layer2-4 + EGLs vs one)")

        quick = _cfg("quick", "data.image_size=[512,256]")
        q = step_rounds({"quick": quick}, data, split, args.rounds)["quick"]
        step_ips = quick.train.batch_size / statistics.median(q)
        print(f"\nquick profile step ({quick.model.backbone}, stride {quick.model.output_stride}, "
              f"batch {quick.train.batch_size}x{quick.train.crop_size}^2): {step_ips:.2f} images/s consumed")
        for workers in (0, 2):
            wcfg = _cfg("quick", "data.image_size=[512,256]", f"train.workers={workers}")
            ips = loader_images_per_s(wcfg, data, split, batches=args.loader_batches)
            print(f"  loader, {workers} worker(s): {ips:8.1f} images/s = "
                  f"{ips / step_ips:6.1f}x the step's need")
    return 0


def train_step_flops(cfg: Config) -> int:
    """FLOPs of one training step (forward + loss + backward) at the config's crop and batch."""
    from torch.utils.flop_counter import FlopCounterMode

    from egnet.models import build_model
    from egnet.training.losses import SegExposureLoss

    t = cfg.train
    with torch.device("meta"):
        model = build_model(cfg.model.model_copy(update={"backbone_weights": "none"})).train()
        x = torch.rand(t.batch_size, 3, t.crop_size, t.crop_size)
        target = torch.zeros(t.batch_size, t.crop_size, t.crop_size, dtype=torch.long)
    with FlopCounterMode(display=False) as counter:
        total, _ = SegExposureLoss(t.alpha, t.beta)(model(x), target, x)
        total.backward()
    return int(counter.get_total_flops())


def report(args: argparse.Namespace) -> int:
    from egnet.core.config import config_from_dict

    summary = json.loads(Path(args.summary).read_text())
    from egnet.training.checkpoint import read_checkpoint

    model_file = Path(args.summary).with_name("model.pt")
    cfg = (config_from_dict(read_checkpoint(model_file)["config"]) if model_file.exists()
           else _cfg(args.profile))
    windows = [h["images_per_s"] for h in summary["history"]][args.skip_windows:]
    if not windows:
        print("no steady-state windows in the summary (too few iterations?)", file=sys.stderr)
        return 1
    ips = statistics.median(windows)
    ms = 1000 * cfg.train.batch_size / ips
    flops = train_step_flops(cfg)
    name = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    peak = args.peak_tflops * 1e12 if args.peak_tflops else next(
        (v for k, v in PEAK_BF16.items() if k in name), None)
    mfu = flops / (ms / 1000) / peak if peak else None
    print(f"device            {name}")
    print(f"model             {cfg.model.variant} {cfg.model.backbone} stride {cfg.model.output_stride}, "
          f"batch {cfg.train.batch_size} x {cfg.train.crop_size}^2, amp={cfg.train.amp}")
    print(f"iterations        {summary['iteration']} (median of {len(windows)} windows after the first "
          f"{args.skip_windows})")
    print(f"ms/iter           {ms:.1f}")
    print(f"images/s          {ips:.1f}")
    print(f"peak memory       {summary.get('peak_memory_gib')} GiB (torch.cuda.max_memory_allocated)")
    print(f"FLOPs/iter        {flops / 1e12:.3g} TFLOP (forward + backward, FlopCounterMode)")
    print(f"MFU               {f'{100 * mfu:.1f} %' if mfu else 'n/a (unknown peak: --peak-tflops)'}"
          + (f" of {peak / 1e12:.0f} TFLOP/s dense bf16" if mfu else ""))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd")
    p = sub.add_parser("cpu", help="EGNet vs FCN train images/s; loader vs step (default)")
    for q in (parser, p):
        q.add_argument("--crop", type=int, default=128)
        q.add_argument("--batch", type=int, default=2)
        q.add_argument("--rounds", type=int, default=4)
        q.add_argument("--threads", type=int, default=2)
        q.add_argument("--loader-batches", type=int, default=30)
    r = sub.add_parser("report", help="ms/iter, images/s, memory, MFU from a train_summary.json")
    r.add_argument("summary")
    r.add_argument("--profile", default="paper", help="config if model.pt is missing beside the summary")
    r.add_argument("--skip-windows", type=int, default=2, help="log windows to drop (warm-up, autotuning)")
    r.add_argument("--peak-tflops", type=float, default=None, help="the GPU's dense bf16 peak, TFLOP/s")
    args = parser.parse_args(argv)
    return report(args) if args.cmd == "report" else cpu(args)


if __name__ == "__main__":
    sys.exit(main())
