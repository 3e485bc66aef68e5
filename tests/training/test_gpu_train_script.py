"""benchmarks/gpu_train.sh runs end to end without a GPU (CPU_SMOKE=1): every step of the script
(data, one-process training, two-process DDP training, the report with data wait, DDP share and
inference at the paper protocol) runs on tiny settings, so the first GPU machine runs it as is."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.support import REPO


@pytest.mark.slow
@pytest.mark.torchrun
def test_gpu_train_script_runs_end_to_end_with_cpu_smoke(tmp_path):
    env = {**os.environ, "CPU_SMOKE": "1", "PYTHON": sys.executable, "PYTHONPATH": str(REPO),
           "WORK": str(tmp_path / "work"), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    r = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_train.sh")], env=env, cwd=REPO,
                       capture_output=True, text=True, timeout=900)
    out = r.stdout
    assert r.returncode == 0, out[-3000:] + r.stderr[-3000:]
    report = out.split("== result\n", 1)[1]
    for pattern in (
        r"model +egnet resnet18 stride 32, batch 2 x 64\^2 \(input resize\)",
        r"ms/iter +\d+\.\d",
        r"images/s +\d+\.\d",
        r"peak memory +None GiB",  # CUDA only
        r"MFU +n/a",               # no bf16 peak for a CPU
        r"data wait +\d+\.\d % of step time",
        r"DDP, 2 processes +\d+\.\d ms/iter at the same per-process batch: communication share \d+\.\d %",
        r"inference +\d+\.\d images/s at the paper protocol \(256x128 -> 128x64 -> logits to 256x128",
    ):
        assert re.search(pattern, report), f"{pattern!r} not in:\n{report}"
    assert (tmp_path / "work" / "train" / "model.pt").exists()
    assert (tmp_path / "work" / "train2" / "train_summary.json").exists()
