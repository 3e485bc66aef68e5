"""Faults every step meets the same way, provoked for real: the disk fills up (a tiny tmpfs) or
the file size limit is hit (ulimit -f) while a step writes its outputs (docs/operations.md).
The faults of training and registering: tests/training/test_faults.py,
tests/registry/test_hardening_registry.py.
"""

from __future__ import annotations

import subprocess

import pytest

from tests.support import BIN, subprocess_env, tiny_args

pytestmark = pytest.mark.slow


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A 32 KiB tmpfs: a real "no space left on device" (needs CAP_SYS_ADMIN; skipped without)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32k", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip()[:100]}); the ulimit case still runs")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


@pytest.mark.parametrize("limit", ["tmpfs", "ulimit"])
def test_disk_full_while_writing_step_outputs(limit, synth_root, split_dir, tmp_path, request) -> None:
    """`egnet data stats` (a JSON file and PNG charts) into a full disk: exit 1, one line, no output."""
    if limit == "tmpfs":
        parent = request.getfixturevalue("tiny_tmpfs")
        prefix, expected = "", "no space left on device"
    else:
        parent = tmp_path
        prefix, expected = "ulimit -f 16 && ", "file too large (file size limit reached)"  # 16 KiB per file
    out = parent / "stats"
    cmd = (f"{prefix}exec {BIN / 'egnet'} data stats {synth_root} --split {split_dir} --out {out} "
           f"{' '.join(tiny_args())}")
    r = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                       env=subprocess_env())
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("egnet: error:")]
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert errors == [f"egnet: error: {expected} writing {out}; no partial output was kept"], r.stderr[-3000:]
    assert list(parent.iterdir()) == []  # neither the output nor its temporary folder
