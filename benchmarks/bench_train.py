"""Training throughput: EGNet vs FCN, before vs after issue 16, torch.compile on the CPU; GPU reports.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_train.py               # cpu: EGNet vs FCN, loader
    .venv/bin/python benchmarks/bench_train.py before-after [--before REF]     # issue 16 items 1, 2, 5
    .venv/bin/python benchmarks/bench_train.py compile                         # eager vs torch.compile
    .venv/bin/python benchmarks/bench_train.py report OUT/train_summary.json [--ddp OUT2/...] [--infer]
                                                                                # used by gpu_train.sh

``cpu`` (default): synthetic NightCity-format data (512x256) in a temporary folder; the
real train loader (``egnet.training.loop.make_loaders``) and the real optimizer step
(``egnet.training.loop.sgd_step``: forward, loss, backward, SGD). EGNet and torchvision
FCN-ResNet101 (both ResNet-101 at output stride 8, the paper's comparison) take
steps on the same batches in interleaved rounds, so machine load drifts hit both;
the result is their images/s ratio. The loader's images/s (0 and 2 workers) is set
against the images/s the quick profile's step consumes: above 1 the loader keeps up.

``before-after``: the same work on the code of ``--before`` (a git revision, unpacked
with ``git archive`` into a temporary folder) and on this checkout, alternately in fresh
processes, on one thread, timed in CPU seconds of the process (``time.process_time``: what
the work costs a core, whatever else this shared machine runs): (1) one loader worker, per
image, with the ``crop`` input (the only one before); (2) forward + loss + backward of the
model alone; (3) an iteration of ``egnet train``'s own loop (``train.train`` in the
process, loader in the training process, ``train.workers=0``): from one ``sgd_step`` to
the next. Settings: the paper's data geometry (1024x512 images, 300x300 crops at scale
0.5-2) with the quick profile's model (ResNet-18, stride 16), so that a step takes
seconds, not minutes. On a CPU a host sync costs nothing (the device is the host): item 1
shows on a GPU only.

``compile``: forward + loss + backward of EGNet eager vs ``torch.compile`` (inductor, C++
on the CPU) on the same batch, alternately, in CPU seconds (one thread by default);
compile time reported apart.

``report``: ms/iter, images/s, peak memory and model FLOP utilisation (MFU) of an
``egnet train`` run from its train_summary.json (the FLOPs of one training step, forward
+ backward, counted by torch's FlopCounterMode on the meta device); the fraction of step
time spent waiting for data (log windows' ``data_wait_fraction``); with ``--ddp`` a
second run's summary at the same per-process batch over 2 processes: the share of its
step time that DDP's communication adds (gradient all-reduce, SyncBatchNorm), exposed
beyond what overlaps backward, = 1 - ms/iter(1 process) / ms/iter(2 processes); with
``--infer`` inference images/s of the trained model at the paper protocol (1024x512
uint8 image on the device -> 900x900 -> network -> logits back to 1024x512 -> argmax;
batch 1, bf16 autocast on CUDA; decoding excluded).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
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
#: main before issue 16's training work (host syncs, loader, paper input, EGL)
BEFORE_ISSUE_16 = "61c1927"


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


# --- before-after --------------------------------------------------------------------------------

#: runs under either tree (PYTHONPATH=<tree>), on one thread; times are CPU seconds of this process
PROBE = r'''
import json, statistics, sys, time
from pathlib import Path
import cv2, torch
from torch.utils.data import default_collate
a = json.loads(sys.argv[1])
cv2.setNumThreads(1)
torch.set_num_threads(1)
from egnet.core.config import load_config
from egnet.data.dataset import SegmentationDataset, to_float
from egnet.data.layout import split_pairs
from egnet.models import build_model
from egnet.training.losses import SegExposureLoss
import egnet.training.train as T
cfg = load_config(Path(a["params"]), "quick", a["sets"])
try:
    from egnet.data.dataset import train_transform
    transform = train_transform(cfg.train)
except ImportError:  # before issue 16
    from egnet.data.dataset import TrainTransform
    transform = TrainTransform.from_config(cfg.train)
data, split = Path(a["data"]), Path(a["split"])
pairs, _ = split_pairs(data, split, "train")
ds = SegmentationDataset(pairs, cfg.data.image_size, train=True, transform=transform)
ds[(0, 0)]
start = time.process_time()  # 1. one loader worker
for i in range(a["samples"]):
    ds[(i % len(ds), 1000 + i)]
loader = (time.process_time() - start) / a["samples"]
torch.manual_seed(0)  # 2. the model: forward + loss + backward
model = build_model(cfg.model).train()
loss_fn = SegExposureLoss(cfg.train.alpha, cfg.train.beta)
batch = default_collate([ds[(i, i)] for i in range(cfg.train.batch_size)])
x, target = to_float(batch["image"]), batch["label"].long()
fwd_bwd = []
for r in range(a["fwd_rounds"] + 1):
    start = time.process_time()
    total, _ = loss_fn(model(x), target, x)
    model.zero_grad(set_to_none=True)
    total.backward()
    if r:
        fwd_bwd.append(time.process_time() - start)
stamps, step = [], T.sgd_step  # 3. egnet train's loop: CPU time from one step's start to the next's
T.sgd_step = lambda *args, **kw: stamps.append(time.process_time()) or step(*args, **kw)
n = a["iterations"]
loop_sets = [f"train.iterations={n}", f"train.log_every={n}", "train.val_every=1000000",
             "train.checkpoint_every=1000000"]
loop_cfg = load_config(Path(a["params"]), "quick", [*a["sets"], *loop_sets])
T.train(loop_cfg, data, split, a["out"], resume=False)
its = [t1 - t0 for t0, t1 in zip(stamps, stamps[1:])][a["skip"]:]
print(json.dumps({"loader_s": loader, "fwd_bwd_s": statistics.median(fwd_bwd),
                  "iteration_s": statistics.median(its)}))
'''


def _tree(ref: str, root: Path) -> Path:
    """``ref``'s committed files (``git archive``), unpacked in ``root``."""
    root.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", ref], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(root)], input=archive, check=True)
    return root


def _run_in(tree: Path, argv: list[str], env_extra: dict[str, str], timeout: float = 3600) -> str:
    env = {**os.environ, "PYTHONPATH": str(tree), **env_extra}
    r = subprocess.run([sys.executable, *argv], cwd=tree, env=env, capture_output=True, text=True,
                       timeout=timeout)
    if r.returncode:
        raise SystemExit(f"{tree}: {' '.join(argv[:3])} failed ({r.returncode}):\n{r.stderr[-3000:]}")
    return r.stdout


def before_after(args: argparse.Namespace) -> int:
    sets = ["data.image_size=[1024,512]", "model.backbone_weights=none", f"train.crop_size={args.crop}",
            "train.scale_min=0.5", "train.scale_max=2.0", f"train.batch_size={args.batch}", "train.workers=0"]
    one_thread = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    keys = ("loader_s", "fwd_bwd_s", "iteration_s")
    with tempfile.TemporaryDirectory(prefix="bench-before-after-") as tmp:
        tmp = Path(tmp)
        data, split = _data(tmp, (1024, 512), num=args.images)
        trees = {"before": _tree(args.before, tmp / "before"), "after": REPO}
        tree_sets = {"before": sets, "after": [*sets, "train.input=crop"]}
        got: dict[str, list[dict]] = {k: [] for k in trees}
        for r in range(args.rounds):
            for name in (["before", "after"] if r % 2 == 0 else ["after", "before"]):
                tree = trees[name]
                probe = {"params": str(tree / "params.yaml"), "sets": tree_sets[name], "data": str(data),
                         "split": str(split), "samples": args.samples, "fwd_rounds": args.fwd_rounds,
                         "iterations": args.iterations, "skip": 2, "out": str(tmp / f"{name}-{r}")}
                env = {**one_thread, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'mlflow.db'}"}
                out = _run_in(tree, ["-c", PROBE, json.dumps(probe)], env)
                got[name].append(json.loads(out.strip().splitlines()[-1]))
                print(f"  round {r} {name:6s}: " + ", ".join(f"{k} {got[name][-1][k]:.4f}" for k in keys),
                      flush=True)

    def med(name: str, key: str) -> float:
        return statistics.median(p[key] for p in got[name])

    print(f"\nbefore = {args.before}, after = this checkout; one thread, CPU seconds (time.process_time), "
          f"medians of {args.rounds} alternating rounds; data 1024x512, crop {args.crop} at scale 0.5-2, "
          f"quick model (ResNet-18 stride 16), batch {args.batch}")
    lb, la = med("before", "loader_s"), med("after", "loader_s")
    fb, fa = med("before", "fwd_bwd_s"), med("after", "fwd_bwd_s")
    tb, ta = med("before", "iteration_s"), med("after", "iteration_s")
    print(f"  loader, one worker, per image      {1000 * lb:8.1f} -> {1000 * la:8.1f} ms   "
          f"{lb / la:5.2f}x faster (item 2; {1 / lb:.1f} -> {1 / la:.1f} images/s per worker)")
    print(f"  model forward+loss+backward        {1000 * fb:8.1f} -> {1000 * fa:8.1f} ms   "
          f"{fb / fa:5.2f}x faster (item 5)")
    print(f"  egnet train iteration (loader in   {1000 * tb:8.1f} -> {1000 * ta:8.1f} ms   "
          f"{tb / ta:5.2f}x faster (items 1, 2, 5)")
    print("    the training process, workers 0)")
    return 0


# --- compile -------------------------------------------------------------------------------------

def compile_cpu(args: argparse.Namespace) -> int:
    from egnet.models import build_model
    from egnet.training.losses import SegExposureLoss

    torch.set_num_threads(args.threads)
    cfg = _cfg(args.profile, "model.backbone_weights=none", f"train.batch_size={args.batch}",
               f"train.crop_size={args.crop}")
    torch.manual_seed(0)
    x = torch.rand(args.batch, 3, args.crop, args.crop)
    target = torch.randint(0, cfg.model.num_classes, (args.batch, args.crop, args.crop))
    loss_fn = SegExposureLoss(cfg.train.alpha, cfg.train.beta)
    eager = build_model(cfg.model).train()
    compiled_model = build_model(cfg.model).train()
    compiled_model.load_state_dict(eager.state_dict())
    compiled = torch.compile(compiled_model)

    def step(model: torch.nn.Module) -> float:
        start = time.process_time()
        total, _ = loss_fn(model(x), target, x)
        model.zero_grad(set_to_none=True)
        total.backward()
        return time.process_time() - start

    wall = time.perf_counter()
    first = step(compiled)  # compiles forward and backward
    wall = time.perf_counter() - wall
    step(eager)
    times: dict[str, list[float]] = {"eager": [], "compiled": []}
    for r in range(args.rounds):
        for name in (["eager", "compiled"] if r % 2 == 0 else ["compiled", "eager"]):
            times[name].append(step(eager if name == "eager" else compiled))
    e, c = statistics.median(times["eager"]), statistics.median(times["compiled"])
    print(f"{cfg.model.variant} {cfg.model.backbone} stride {cfg.model.output_stride}, batch {args.batch} x "
          f"{args.crop}^2, forward + loss + backward, {args.threads} thread(s), CPU seconds, "
          f"torch {torch.__version__}")
    print(f"  first compiled step (compilation): {first:.1f} CPU-s, {wall:.1f} s wall")
    print(f"  eager    median {e:.3f} s  (runs {', '.join(f'{t:.3f}' for t in times['eager'])})")
    print(f"  compiled median {c:.3f} s  (runs {', '.join(f'{t:.3f}' for t in times['compiled'])})")
    print(f"  compiled / eager step time: {c / e:.2f}  ({'faster' if c < e else 'not faster'} on this CPU)")
    return 0


# --- report (gpu_train.sh) -----------------------------------------------------------------------

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


def _windows(summary: dict, key: str, skip: int) -> list[float]:
    return [h[key] for h in summary["history"] if key in h][skip:]


def _run_config(summary_path: Path, profile: str) -> Config:
    from egnet.core.config import config_from_dict
    from egnet.training.checkpoint import read_checkpoint

    model_file = summary_path.with_name("model.pt")
    return config_from_dict(read_checkpoint(model_file)["config"]) if model_file.exists() else _cfg(profile)


def infer_images_per_s(model_file: Path, iterations: int, warmup: int) -> tuple[float, str]:
    """The paper protocol on the device, batch 1: images/s and a description."""
    import torch.nn.functional as F

    from egnet.training.checkpoint import load_model

    model, cfg = load_model(model_file)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cuda = device.type == "cuda"
    amp = cuda and cfg.train.amp
    model = model.to(device)
    if cuda and cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    w, h = cfg.data.image_size
    iw, ih = cfg.evaluate.infer_size
    image = torch.randint(0, 256, (1, 3, h, w), dtype=torch.uint8, device=device)

    def once() -> torch.Tensor:
        x = F.interpolate(image.float().div_(255), size=(ih, iw), mode="bilinear", align_corners=False)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            logits = model(x)["out"]
        return F.interpolate(logits.float(), size=(h, w), mode="bilinear", align_corners=False).argmax(1)

    with torch.inference_mode():
        for _ in range(warmup):
            once()
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(iterations):
            once()
        if cuda:
            torch.cuda.synchronize()
    rate = iterations / (time.perf_counter() - start)
    return rate, (f"{w}x{h} -> {iw}x{ih} -> logits to {w}x{h}, batch 1, "
                  f"{'bf16 autocast' if amp else 'fp32'}, {iterations} images after {warmup} warm-up")


def report(args: argparse.Namespace) -> int:
    summary_path = Path(args.summary)
    summary = json.loads(summary_path.read_text())
    cfg = _run_config(summary_path, args.profile)
    windows = _windows(summary, "images_per_s", args.skip_windows)
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
    wait = _windows(summary, "data_wait_fraction", args.skip_windows)
    print(f"device            {name}")
    print(f"model             {cfg.model.variant} {cfg.model.backbone} stride {cfg.model.output_stride}, "
          f"batch {cfg.train.batch_size} x {cfg.train.crop_size}^2 (input {cfg.train.input}), "
          f"amp={cfg.train.amp}, {summary.get('world_size', 1)} process(es)")
    print(f"iterations        {summary['iteration']} (median of {len(windows)} windows after the first "
          f"{args.skip_windows})")
    print(f"ms/iter           {ms:.1f}")
    print(f"images/s          {ips:.1f}")
    print(f"peak memory       {summary.get('peak_memory_gib')} GiB (torch.cuda.max_memory_allocated)")
    print(f"FLOPs/iter        {flops / 1e12:.3g} TFLOP (forward + backward, FlopCounterMode)")
    print(f"MFU               {f'{100 * mfu:.1f} %' if mfu else 'n/a (unknown peak: --peak-tflops)'}"
          + (f" of {peak / 1e12:.0f} TFLOP/s dense bf16" if mfu else ""))
    print(f"data wait         {f'{100 * statistics.median(wait):.1f} % of step time' if wait else 'n/a'}"
          " (host time blocked on the loader's next batch)")
    if args.ddp:
        ddp_path = Path(args.ddp)
        ddp = json.loads(ddp_path.read_text())
        dcfg = _run_config(ddp_path, args.profile)
        dwin = _windows(ddp, "images_per_s", args.skip_windows)
        per_proc = dcfg.train.batch_size // ddp["world_size"]
        if not dwin or per_proc != cfg.train.batch_size:
            print(f"DDP               n/a (need windows at per-process batch {cfg.train.batch_size}, "
                  f"got {per_proc})")
        else:
            ms2 = 1000 * dcfg.train.batch_size / statistics.median(dwin)
            print(f"DDP, {ddp['world_size']} processes  {ms2:.1f} ms/iter at the same per-process batch: "
                  f"communication share {100 * max(0.0, 1 - ms / ms2):.1f} % of step time "
                  "(all-reduce + SyncBatchNorm, beyond what overlaps)")
    if args.infer:
        rate, how = infer_images_per_s(summary_path.with_name("model.pt"), args.infer_iterations,
                                       args.infer_warmup)
        print(f"inference         {rate:.1f} images/s at the paper protocol ({how})")
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
    b = sub.add_parser("before-after", help="issue 16 items 1, 2, 5: this checkout vs --before")
    b.add_argument("--before", default=BEFORE_ISSUE_16, help="git revision to compare with")
    b.add_argument("--crop", type=int, default=300)
    b.add_argument("--batch", type=int, default=2)
    b.add_argument("--images", type=int, default=30, help="synthetic 1024x512 scenes")
    b.add_argument("--samples", type=int, default=60, help="loader samples per probe")
    b.add_argument("--fwd-rounds", type=int, default=4, help="timed forward+backward per probe")
    b.add_argument("--iterations", type=int, default=10, help="loop iterations per probe (2 dropped)")
    b.add_argument("--rounds", type=int, default=2, help="alternating rounds of both trees")
    c = sub.add_parser("compile", help="eager vs torch.compile forward+backward on the CPU")
    c.add_argument("--profile", default="quick")
    c.add_argument("--crop", type=int, default=128)
    c.add_argument("--batch", type=int, default=4)
    c.add_argument("--threads", type=int, default=1)
    c.add_argument("--rounds", type=int, default=6)
    r = sub.add_parser("report", help="ms/iter, images/s, memory, MFU, data wait, DDP, inference")
    r.add_argument("summary")
    r.add_argument("--profile", default="paper", help="config if model.pt is missing beside the summary")
    r.add_argument("--skip-windows", type=int, default=2, help="log windows to drop (warm-up, autotuning)")
    r.add_argument("--peak-tflops", type=float, default=None, help="the GPU's dense bf16 peak, TFLOP/s")
    r.add_argument("--ddp", default=None, help="train_summary.json of the same run over 2 processes")
    r.add_argument("--infer", action="store_true", help="time inference of the model.pt beside the summary")
    r.add_argument("--infer-iterations", type=int, default=50)
    r.add_argument("--infer-warmup", type=int, default=5)
    args = parser.parse_args(argv)
    commands = {"report": report, "before-after": before_after, "compile": compile_cpu}
    return commands.get(args.cmd, cpu)(args)


if __name__ == "__main__":
    sys.exit(main())
