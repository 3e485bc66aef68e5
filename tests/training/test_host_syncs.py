"""No host sync in the steady-state training step (issue 16, item 1).

Between log boundaries the host must never wait for the device, so that on a GPU it
queues step k+1 while step k runs. The counter (tests/support/host_syncs.py) wraps every
call that would block on a device (``item``, ``tolist``, ``cpu``, ``numpy``, ``bool``/
``float``/``int`` of a tensor, a blocking ``.to(device)``) around the real ``egnet train``
and records where each happened; on a GPU, ``torch.cuda.set_sync_debug_mode("warn")``
shows the same points (docs/training.md).
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from tests.support import REPO, subprocess_env, train_argv
from tests.support.host_syncs import HostSyncCounter, off_boundary

ITERATIONS, LOG_EVERY = 8, 4
STEPS = (f"train.iterations={ITERATIONS}", f"train.log_every={LOG_EVERY}")


def _describe(events) -> str:
    return "\n".join(f"{e.phase} after step {e.iteration}: {e.call} at {e.where}" for e in events[:12])


def _window_closes(events) -> set[int]:
    return {e.iteration for e in events
            if e.phase == "loop" and e.call == "tolist" and e.where.startswith("training/loop.py")}


def test_the_counter_sees_syncs_and_not_the_rest():
    """The harness can fail: an ``.item()`` or a blocking copy in the step is caught; asynchronous
    copies and casts on the device are not syncs; everything is put back afterwards."""
    item = torch.Tensor.item
    with HostSyncCounter() as counter:
        counter.counting, counter.phase = True, "step"
        torch.ones(2).sum().item()
        torch.ones(2).to("cpu", torch.float64)
        torch.ones(2).to("cpu", non_blocking=True)
        torch.ones(2).to(torch.float64)
        counter.phase, counter.iteration = "loop", 1
        bool(torch.ones(1) > 0)
        counter.iteration = LOG_EVERY
        torch.ones(2).tolist()  # at a log boundary: allowed
        counter.phase = "loader"
        torch.ones(2).tolist()  # host-side loader work: never counted against the step
    assert [(e.phase, e.call) for e in counter.events] == [
        ("step", "item"), ("step", "to(blocking)"), ("loop", "__bool__"), ("loop", "tolist"),
        ("loader", "tolist")]
    assert [e.call for e in off_boundary(counter.events, LOG_EVERY, ITERATIONS)] == [
        "item", "to(blocking)", "__bool__"]
    assert torch.Tensor.item is item


@pytest.mark.slow
def test_one_process_waits_for_the_device_only_at_log_boundaries(synth_root, split_dir, tmp_path, tracking_db,
                                                                  train_here):
    with HostSyncCounter() as counter:
        code, err = train_here(train_argv(synth_root, split_dir, tmp_path / "out", *STEPS), tracking_db)
    assert code == 0, err[-3000:]
    assert counter.iteration == ITERATIONS
    bad = off_boundary(counter.events, LOG_EVERY, ITERATIONS)
    assert not bad, f"{len(bad)} host sync(s) between log boundaries:\n{_describe(bad)}"
    # ... and it does see the ones that are there: the log window's sums, once per window
    assert _window_closes(counter.events) == {4, 8}


@pytest.mark.slow
@pytest.mark.torchrun
def test_two_processes_agree_on_stop_only_at_log_boundaries(synth_root, split_dir, tmp_path, tracking_db):
    """Under torchrun (gloo) the stop flag's all-reduce and ``.item()`` happen once per log
    window, not once per step; nothing else syncs between boundaries on either rank."""
    log = tmp_path / "syncs"
    script = str(REPO / "tests" / "support" / "count_host_syncs.py")
    r = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", script,
         *train_argv(synth_root, split_dir, tmp_path / "out", *STEPS)],
        env=subprocess_env(tracking_db, EGNET_SYNC_LOG=str(log)), capture_output=True, text=True, timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    for rank in (0, 1):
        events = HostSyncCounter.load(f"{log}.{rank}.json")
        bad = off_boundary(events, LOG_EVERY, ITERATIONS)
        assert not bad, f"rank {rank}: {len(bad)} host sync(s) between log boundaries:\n{_describe(bad)}"
        stop_checks = {e.iteration for e in events if e.call == "item" and "distributed.py" in e.where}
        assert stop_checks == {4, 8}, stop_checks
        assert _window_closes(events) == {4, 8}
