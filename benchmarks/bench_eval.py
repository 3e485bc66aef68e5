"""`egnet evaluate` against the same network in a bare ``torch.inference_mode()`` loop.

    .venv/bin/python benchmarks/bench_eval.py                      # paper profile: for a CUDA GPU
    .venv/bin/python benchmarks/bench_eval.py --profile quick --num 8   # CPU stand-in (ResNet-18)

Synthetic NightCity-format scenes (``--size``, default 1024x512) in a temporary folder, all
of them the test list; an untrained model of ``--profile`` (``paper``: EGNet, ResNet-101,
output stride 8) saved as an egnet checkpoint and loaded the way evaluate loads it.
Both sides run the paper protocol (resize to ``evaluate.infer_size``, 900x900 by default;
forward; logits resized bilinearly to the label size; argmax), bf16 autocast on CUDA:

- **bare**: the images decoded beforehand and already on the device; per image: resize,
  forward, resize, argmax; one device synchronisation at the end. Nothing else.
- **evaluate**: ``egnet.evaluation.evaluate.evaluate_pairs``, what `egnet evaluate` runs: PNG
  decoding (image and label, ``evaluate.workers`` threads), labelIds -> trainIds, exposure
  bins, the counts (metrics, per-image evidence, worst images), the qualitative samples.
  Writing the output files (charts, npz; a fixed cost, not per image) is timed apart.

The overhead is evaluate's time over bare's (goal: under 1.2x). The rounds alternate
(bare, evaluate, bare, ...) and the fastest of ``--rounds`` counts for each, so drifting
machine load meets both. Prints the conditions (device, threads, cores).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from egnet.core.config import load_config
from egnet.core.files import cpu_workers

REPO = Path(__file__).resolve().parents[1]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bare_loop(model: torch.nn.Module, images: list, device: torch.device, infer_wh: tuple[int, int],
              amp: bool, channels_last: bool) -> float:
    """Seconds for the paper protocol over ``images`` (HxWx3 uint8 tensors already on ``device``)."""
    hw = (infer_wh[1], infer_wh[0])
    _sync(device)
    t = time.perf_counter()
    with torch.inference_mode():
        for image in images:
            x = image.permute(2, 0, 1)[None]
            x = x.contiguous(memory_format=torch.channels_last) if channels_last else x.contiguous()
            x = F.interpolate(x.float().div_(255.0), size=hw, mode="bilinear", align_corners=False)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                out = model(x)["out"]
            logits = F.interpolate(out.float(), size=image.shape[:2], mode="bilinear", align_corners=False)
            logits[0].argmax(0).to(torch.uint8)
    _sync(device)
    return time.perf_counter() - t


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="paper", help="params profile of the model and protocol")
    ap.add_argument("--num", type=int, default=64, help="test images")
    ap.add_argument("--size", default="1024x512", help="image size WIDTHxHEIGHT")
    ap.add_argument("--infer", default=None, help="override evaluate.infer_size, WIDTHxHEIGHT")
    ap.add_argument("--rounds", type=int, default=2, help="alternating rounds; the fastest counts")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="SEC.KEY=VALUE")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    size = tuple(int(v) for v in a.size.lower().split("x"))
    overrides = [f"data.image_size=[{size[0]},{size[1]}]", "model.backbone_weights=none",
                 "evaluate.extra_modes=[]", *a.overrides]
    if a.infer:
        w, h = (int(v) for v in a.infer.lower().split("x"))
        overrides.append(f"evaluate.infer_size=[{w},{h}]")
    cfg = load_config(REPO / "params.yaml", a.profile, overrides)

    from egnet.core.storage import Location
    from egnet.data import layout
    from egnet.data.synth import synthesize
    from egnet.evaluation import inference
    from egnet.evaluation.evaluate import evaluate_pairs, split_test_pairs, write_outputs
    from egnet.models import build_model
    from egnet.training.checkpoint import save_final

    with tempfile.TemporaryDirectory(prefix="bench_eval_") as tmp:
        root, split, train = Path(tmp) / "data", Path(tmp) / "split", Path(tmp) / "train"
        t = time.perf_counter()
        synthesize(root, num=a.num, seed=0, size=size)
        split.mkdir()
        (split / "test.txt").write_text("".join(f"{p.stem}\n" for p in layout.scan(root).pairs))
        torch.manual_seed(0)
        train.mkdir()
        save_final(Location.from_str(train), model=build_model(cfg.model), cfg=cfg, iteration=0)
        loaded = inference.load(str(train / "model.pt"), cfg)
        device = loaded.device
        pairs = split_test_pairs(root, split)
        images = [torch.from_numpy(layout.read_image(p.image)).to(device) for p in pairs]  # on the device
        amp = cfg.evaluate.amp and device.type == "cuda"
        channels_last = cfg.evaluate.channels_last and device.type == "cuda"
        if channels_last:
            loaded.model.to(memory_format=torch.channels_last)
        print(f"{a.num} scenes {size[0]}x{size[1]} written in {time.perf_counter() - t:.0f} s; model "
              f"{cfg.model.variant}/{cfg.model.backbone} stride {cfg.model.output_stride}, infer "
              f"{cfg.evaluate.infer_size[0]}x{cfg.evaluate.infer_size[1]}, device {device}"
              + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
              + f", bf16 autocast {amp}, torch threads {torch.get_num_threads()}, cores {os.cpu_count()}, "
                f"decode threads {cpu_workers(cfg.evaluate.workers)}", flush=True)
        # warm-up: cudnn autotuning, allocator, lazy inits (both paths)
        bare_loop(loaded.model, images[:2], device, cfg.evaluate.infer_size, amp, channels_last)
        evaluate_pairs(loaded, pairs[:2], cfg, progress=False)
        bare, ev = [], []
        result = None
        for r in range(a.rounds):
            bare.append(bare_loop(loaded.model, images, device, cfg.evaluate.infer_size, amp, channels_last))
            _sync(device)
            t = time.perf_counter()
            result = evaluate_pairs(loaded, pairs, cfg, progress=False)
            _sync(device)
            ev.append(time.perf_counter() - t)
            print(f"round {r + 1}: bare {a.num / bare[-1]:.2f} images/s, "
                  f"evaluate {a.num / ev[-1]:.2f} images/s", flush=True)
        out = Path(tmp) / "eval"
        out.mkdir()
        t = time.perf_counter()
        write_outputs(out, result, loaded.source, cfg)
        write_s = time.perf_counter() - t
        npz = (out / "per_image_counts.npz").stat().st_size
    b, e = min(bare), min(ev)
    print(f"\nbare inference_mode loop  {a.num / b:8.2f} images/s  ({1000 * b / a.num:.1f} ms/image)")
    print(f"egnet evaluate (the loop) {a.num / e:8.2f} images/s  ({1000 * e / a.num:.1f} ms/image)")
    print(f"overhead: evaluate / bare = {e / b:.3f}x (goal < 1.2x); writing the outputs once: "
          f"{write_s:.1f} s (per_image_counts.npz {npz / 1e3:.1f} kB for {a.num} images)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
