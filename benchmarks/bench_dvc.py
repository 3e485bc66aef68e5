"""What DVC costs on NightCity-sized data: cold hashing, and a no-op `dvc repro`.

    .venv/bin/python benchmarks/bench_dvc.py [--num 200] [--size 1024x512]
                                             [--scale-num 4297] [--scale-size 64x32] [--rounds 3]

For each data set (``--num`` scenes at ``--size``; then ``--scale-num`` scenes at the
tiny ``--scale-size``, because a no-op repro's cost follows the number of files, not
their bytes) it builds a temporary git+DVC repo holding this project's dvc.yaml,
.dvcignore, .gitignore, configs/ and egnet/ sources, and measures:

  (a) plain md5 of every file in Python (hashlib): the floor for hashing, MB/s;
  (b) cold ``dvc add data/nightcity`` with an empty DVC state database: MB/s, and (b)/(a);
  (c) a no-op ``dvc repro`` of the whole pipeline: median of ``--rounds`` runs, seconds.

For (c) validate, split and stats really run once; train and evaluate are not run
(hours on CPU at this size): placeholder outputs are recorded with ``dvc commit``,
which is all a no-op repro looks at (it compares hashes of deps, params and outs).
Target (issue): (c) under 3 s for 200 scenes at 1024x512.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from egnet.core.config import load_config  # noqa: E402
from egnet.data.synth import synthesize  # noqa: E402

BIN = Path(sys.executable).parent


def _env(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DVC_", "MLFLOW_"))}
    env.update({
        "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}", "DVC_NO_ANALYTICS": "1",
        "DVC_SITE_CACHE_DIR": str(tmp / "dvc-site"), "DVC_GLOBAL_CONFIG_DIR": str(tmp / "dvc-global"),
        "GIT_CONFIG_GLOBAL": os.devnull, "GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "bench@example.com",
        "GIT_COMMITTER_NAME": "bench", "GIT_COMMITTER_EMAIL": "bench@example.com", "OMP_NUM_THREADS": "1",
    })
    return env


def _run(cmd: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, str]:
    wall, _, out = _run_cpu(cmd, cwd, env)
    return wall, out


def _run_cpu(cmd: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, float, str]:
    """(wall s, CPU s of the child: user + sys, output). CPU time hardly moves with machine load."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, proc.stdout + proc.stderr


def _md5_all(root: Path) -> tuple[float, int]:
    """Seconds and bytes to md5 every file under ``root`` (1 MiB reads)."""
    files = [p for p in root.rglob("*") if p.is_file()]
    total, start = 0, time.perf_counter()
    for p in files:
        h = hashlib.md5()
        with open(p, "rb") as fh:
            while chunk := fh.read(1 << 20):
                h.update(chunk)
                total += len(chunk)
    return time.perf_counter() - start, total


def _drop_page_cache_hint(root: Path) -> None:
    """Best effort: ask the kernel to forget the files (needs no root; may be a no-op)."""
    for p in root.rglob("*"):
        if p.is_file():
            with open(p, "rb") as fh:
                os.posix_fadvise(fh.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def _placeholders(repo: Path) -> None:
    """Stand-ins for the train and evaluate outputs (a no-op repro only hashes them)."""
    train, ev = repo / "outputs/train", repo / "outputs/eval"
    train.mkdir(parents=True, exist_ok=True)
    ev.mkdir(parents=True, exist_ok=True)
    (train / "model.pt").write_bytes(os.urandom(1 << 20))
    (train / "mlflow_run_id").write_text("0" * 32 + "\n")
    (train / "train_summary.json").write_text("{}\n")
    (ev / "metrics.json").write_text('{"mIoU": 0.5}\n')
    (ev / "model_source.json").write_text("{}\n")
    for name in ("ef1_per_bin.png", "iou_per_class.png", "confusion_matrix.png", "qualitative.png"):
        (ev / name).write_bytes(b"\x89PNG\r\n\x1a\n")


def bench(num: int, size: tuple[int, int], rounds: int, workdir: Path) -> dict[str, float]:
    repo = workdir / f"repo-{num}-{size[0]}x{size[1]}"
    env = _env(workdir / f"state-{num}")
    repo.mkdir(parents=True)
    _run(["git", "init", "-q", "-b", "main"], repo, env)
    _run([str(BIN / "dvc"), "init", "-q"], repo, env)
    for name in ("dvc.yaml", ".dvcignore", ".gitignore"):
        shutil.copy(REPO / name, repo / name)
    shutil.copytree(REPO / "configs", repo / "configs")
    shutil.copytree(REPO / "egnet", repo / "egnet", ignore=shutil.ignore_patterns("__pycache__"))
    doc = load_config(REPO / "params.yaml", None, [f"data.image_size=[{size[0]},{size[1]}]"]).to_dict()
    (repo / "params.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))

    data = repo / "data" / "nightcity"
    print(f"[{num} scenes at {size[0]}x{size[1]}] synthesising ...", flush=True)
    synthesize(data, num=num, seed=0, size=size)
    nfiles = sum(1 for p in data.rglob("*") if p.is_file())

    _drop_page_cache_hint(data)
    md5_s, nbytes = _md5_all(data)
    _drop_page_cache_hint(data)
    add_s, _ = _run([str(BIN / "dvc"), "add", "-q", "data/nightcity"], repo, env)
    mb = nbytes / 1e6

    print(f"[{num}] running validate, split, stats once ...", flush=True)
    _run([str(BIN / "dvc"), "repro", "stats"], repo, env)
    _placeholders(repo)
    _run([str(BIN / "dvc"), "commit", "-f", "-q", "train", "evaluate"], repo, env)
    _run(["git", "add", "-A"], repo, env)
    _run(["git", "commit", "-q", "-m", "bench"], repo, env)

    return {"scenes": num, "files": nfiles, "MB": mb, "md5_MBps": mb / md5_s, "dvc_add_s": add_s,
            "dvc_add_MBps": mb / add_s, **noop_timings(repo, env, rounds)}


def noop_timings(repo: Path, env: dict[str, str], rounds: int) -> dict[str, object]:
    """Median wall and CPU seconds of a no-op ``dvc repro``, and of ``dvc version`` (start-up floor)."""
    walls, cpus, floor_walls, floor_cpus = [], [], [], []
    for _ in range(rounds):
        wall, cpu, out = _run_cpu([str(BIN / "dvc"), "repro"], repo, env)
        if re.search(r"Running stage", out):
            sys.exit(f"expected a no-op repro, got:\n{out}")
        walls.append(wall)
        cpus.append(cpu)
        wall, cpu, _ = _run_cpu([str(BIN / "dvc"), "version"], repo, env)
        floor_walls.append(wall)
        floor_cpus.append(cpu)
    return {"noop_repro_s": statistics.median(walls), "noop_all": walls,
            "noop_cpu_s": statistics.median(cpus), "dvc_startup_s": statistics.median(floor_walls),
            "dvc_startup_cpu_s": statistics.median(floor_cpus), "load_avg": os.getloadavg()[0]}


def _size(text: str) -> tuple[int, int]:
    w, h = (int(v) for v in text.lower().split("x"))
    return w, h


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--num", type=int, default=200)
    ap.add_argument("--size", type=_size, default=(1024, 512))
    ap.add_argument("--scale-num", type=int, default=4297, help="0 to skip the file-count run")
    ap.add_argument("--scale-size", type=_size, default=(64, 32))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workdir", type=Path, default=None, help="kept if given; else a temp dir")
    ap.add_argument("--noop-only", action="store_true",
                    help="only re-time the no-op repro in the repos a previous run left in --workdir")
    args = ap.parse_args()

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="egnet-bench-dvc-"))
    header = (f"{'scenes':>7} {'files':>6} {'MB':>8} {'md5 MB/s':>9} {'dvc add s':>10} {'add MB/s':>9} "
              f"{'add/md5':>8} | {'no-op repro: wall s':>19} {'CPU s':>6} | {'dvc version: wall s':>19} "
              f"{'CPU s':>6} | {'load':>5}")
    results = []
    for num, size in [(args.num, args.size)] + (
            [(args.scale_num, args.scale_size)] if args.scale_num else []):
        existing = workdir / f"repo-{num}-{size[0]}x{size[1]}"
        if args.noop_only:
            r = {"scenes": num,
                 "files": sum(1 for p in (existing / "data/nightcity").rglob("*") if p.is_file()),
                 "MB": float("nan"), "md5_MBps": float("nan"), "dvc_add_s": float("nan"),
                 "dvc_add_MBps": float("nan"),
                 **noop_timings(existing, _env(workdir / f"state-{num}"), args.rounds)}
        else:
            r = bench(num, size, args.rounds, workdir)
        results.append(r)
        print(header)  # printed as soon as measured: the second set takes a while
        print(f"{r['scenes']:>7} {r['files']:>6} {r['MB']:>8.1f} {r['md5_MBps']:>9.0f} "
              f"{r['dvc_add_s']:>10.2f} {r['dvc_add_MBps']:>9.0f} "
              f"{r['dvc_add_MBps'] / r['md5_MBps']:>8.2f} | {r['noop_repro_s']:>19.2f} "
              f"{r['noop_cpu_s']:>6.2f} | {r['dvc_startup_s']:>19.2f} {r['dvc_startup_cpu_s']:>6.2f} | "
              f"{r['load_avg']:>5.1f}", flush=True)
    if args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)

    first = results[0]
    print(f"\nno-op dvc repro, {first['scenes']} scenes at {args.size[0]}x{args.size[1]}: "
          f"{first['noop_repro_s']:.2f} s wall (rounds: {', '.join(f'{t:.2f}' for t in first['noop_all'])}), "
          f"{first['noop_cpu_s']:.2f} s CPU; `dvc version` alone {first['dvc_startup_cpu_s']:.2f} s CPU; "
          f"target < 3 s")
    if len(results) == 2:
        a, b = results
        per_file = (b["noop_cpu_s"] - a["noop_cpu_s"]) / max(b["files"] - a["files"], 1)
        print(f"no-op repro CPU per extra data file: {1e3 * per_file:.3f} ms "
              f"({a['files']} -> {b['files']} files: {a['noop_cpu_s']:.2f} -> {b['noop_cpu_s']:.2f} s CPU)")
        if a["MB"] == a["MB"]:  # not NaN
            full_mb = a["MB"] / a["scenes"] * 4297
            print(f"cold dvc add of 4,297 scenes (~{full_mb / 1e3:.1f} GB at this synthetic PNG size): "
                  f"~{full_mb / a['dvc_add_MBps']:.0f} s at {a['dvc_add_MBps']:.0f} MB/s")

if __name__ == "__main__":
    main()
