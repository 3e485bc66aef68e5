"""Time `synthesize(num=200, size=(1024, 512))`: the figure quoted in the README.

    .venv/bin/python benchmarks/bench_synth.py [--num 200] [--workers 0]

Prints seconds, scenes per second and the pool size used; also the time of one
scene in this process, so the pool's speed-up reads as a ratio measured side by side.
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path

from egnet.core.files import cpu_workers
from egnet.data.synth import render_scene, scene_name, synthesize


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--num", type=int, default=200)
    ap.add_argument("--workers", type=int, default=0, help="process-pool size (0 = all cores)")
    ap.add_argument("--size", default="1024x512")
    args = ap.parse_args()
    w, h = (int(v) for v in args.size.split("x"))

    load0 = os.getloadavg()[0]
    start = time.perf_counter()
    for i in range(5):
        render_scene(scene_name(0, i)[1], w, h)
    one = (time.perf_counter() - start) / 5

    def cpu() -> float:   # this process and its finished pool workers, user + system
        me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime

    cpu0 = cpu()
    with tempfile.TemporaryDirectory() as tmp:
        s = synthesize(Path(tmp) / "nc", num=args.num, seed=0, size=(w, h), workers=args.workers)
    used = cpu() - cpu0
    n_proc = cpu_workers(args.workers)
    print(f"synthesize num={args.num} size={w}x{h} workers={n_proc}: {s['seconds']:.1f} s wall "
          f"({args.num / s['seconds']:.1f} scenes/s, train {s['train']} / val {s['val']})")
    print(f"CPU time {used:.1f} s = {used / args.num * 1000:.0f} ms per scene; load average before/after "
          f"{load0:.1f}/{os.getloadavg()[0]:.1f} (other work on the machine inflates the wall time)")
    print(f"one scene rendered in-process (no PNG writing): {one * 1000:.0f} ms; "
          f"pool speed-up over {args.num} x that: {args.num * one / s['seconds']:.2f}x")
    print("exposure fraction per bin:", " ".join(f"{f:.3f}" for f in s["exposure_fraction"]))


if __name__ == "__main__":
    main()
