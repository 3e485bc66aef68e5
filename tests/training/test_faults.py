"""Faults during training, each provoked for real: what `egnet train` does and what the
operator sees (docs/operations.md, "What happens when ...").

- the tracking server is killed (SIGKILL) and restarted while training runs
- S3 throttles (503 SlowDown) checkpoint writes, for a while and then for good (a fault proxy
  in front of moto)
- the newest checkpoint is truncated on disk before a resume
- the disk fills up while a checkpoint is written

The same for `egnet register`: tests/registry/test_hardening_registry.py; for any step's
outputs: tests/cli/test_faults.py.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import threading

import pytest
import torch

from egnet.core.storage import Location
from egnet.training import checkpoint as ckpt
from tests.support import PARAMS, train_argv, wait_for
from tests.support.services import start_mlflow_server

pytestmark = pytest.mark.slow


# --------------------------------------------------------------------------- tracking server


@pytest.mark.mlflow
def test_tracking_server_killed_and_restarted_during_training(synth_root, split_dir, tmp_path,
                                                              start_train) -> None:
    from mlflow import MlflowClient

    server = start_mlflow_server(tmp_path / "server")
    out, n = tmp_path / "out", 60
    proc = start_train(train_argv(synth_root, split_dir, out, f"train.iterations={n}"), server.uri,
                       tmp_path / "train.log")
    restart = threading.Thread(target=server.start)
    try:
        wait_for(lambda: (out / "mlflow_run_id").exists(), proc, what="the run id")
        run_id = (out / "mlflow_run_id").read_text().strip()
        client = MlflowClient(server.uri)
        wait_for(lambda: len(client.get_metric_history(run_id, "loss_total")) >= 2, proc,
                 what="first metrics")
        os.killpg(server.proc.pid, signal.SIGKILL)  # no clean shutdown: the process is gone
        server.proc.wait(timeout=30)
        restart.start()                             # same address and store, back in a few seconds
        assert proc.wait(timeout=600) == 0, (tmp_path / "train.log").read_text()[-3000:]
        restart.join()
    finally:
        if proc.poll() is None:
            proc.kill()
    try:
        log = (tmp_path / "train.log").read_text()
        assert "MLflow logging failed" in log and "MLflow logging is back after" in log
        assert "MLflow was unreachable 1 time(s) during training" in log
        assert "every metric value logged late" in log
        gaps = json.loads((out / "train_summary.json").read_text())["tracking_gaps"]
        assert len(gaps) == 1, gaps
        gap = gaps[0]
        assert gap["from"] <= gap["to"] and 2 <= gap["from_iteration"] <= gap["to_iteration"] <= n
        assert gap["values_delayed"] > 0 and gap["values_dropped"] == 0 and "values_lost" not in gap
        run = MlflowClient(server.uri).get_run(run_id)
        assert json.loads(run.data.tags["tracking_gaps"]) == gaps and run.info.status == "FINISHED"
        # every iteration's loss is on the server: those of the outage sent late, those after it too
        steps = sorted(m.step for m in MlflowClient(server.uri).get_metric_history(run_id, "loss_total"))
        assert steps == list(range(1, n + 1))
    finally:
        server.stop()


# --------------------------------------------------------------------------- S3 checkpoints


@pytest.mark.s3
def test_s3_throttling_of_checkpoint_writes_is_retried_then_fails_clearly(
        synth_root, split_dir, tracking_db, s3_env, s3_fault_proxy, train_here, monkeypatch) -> None:
    """ckpt_4's upload is throttled twice (retried with back-off: written); ckpt_8's always (after
    S3_MAX_ATTEMPTS, one clear error, exit 1). ckpt_4 stays whole, and resume would use it."""
    import egnet.core.storage as storage

    monkeypatch.setattr(storage, "S3_MAX_ATTEMPTS", 3)  # a short give-up for the test (default: 10)
    bucket = s3_env.bucket()
    out = f"s3://{bucket}/run"
    proxy = s3_fault_proxy                                           # AWS_ENDPOINT_URL for now
    proxy.fail("checkpoints/ckpt_4.pt", times=2)
    proxy.fail("checkpoints/ckpt_8.pt")
    code, err = train_here(train_argv(synth_root, split_dir, out, "train.iterations=8",
                                      "train.checkpoint_every=4"), tracking_db)
    seen4, seen8 = proxy.seen("ckpt_4.pt"), proxy.seen("ckpt_8.pt")
    assert code == 1, err[-3000:]
    lines = [ln for ln in err.splitlines() if ln.startswith("egnet: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
    assert lines[0].startswith(f"egnet: error: {out}: upload of checkpoints/ckpt_8.pt failed: ")
    assert "SlowDown" in lines[0] and "max retries" in lines[0]
    assert [s for _, _, s in seen4[:3]] == [503, 503, 200]          # throttled twice, then written
    assert [s for _, _, s in seen8] == [503] * 3                     # every attempt refused
    keys = sorted(o["Key"] for o in s3_env.client().list_objects_v2(Bucket=bucket)["Contents"])
    assert "run/checkpoints/ckpt_4.pt" in keys, keys
    assert not any("ckpt_8" in k or "model.pt" in k for k in keys), keys
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_env.endpoint)           # S3 is well again
    state, name = ckpt.latest_train_state(Location.from_str(out))   # what a re-run resumes from
    assert name == "checkpoints/ckpt_4.pt" and state["iteration"] == 4


# --------------------------------------------------------------------------- truncated checkpoint


def test_truncated_checkpoint_resume_falls_back_to_the_previous_one(
        synth_root, split_dir, tracking_db, tmp_path, train_here, caplog) -> None:
    out = tmp_path / "out"
    argv = train_argv(synth_root, split_dir, out, "train.iterations=12", "train.checkpoint_every=4")
    assert train_here(argv, tracking_db)[0] == 0
    reference = torch.load(out / "model.pt", weights_only=True)["model"]
    latest = out / "checkpoints" / "ckpt_12.pt"
    latest.write_bytes(latest.read_bytes()[: latest.stat().st_size // 3])   # a copy cut short
    (out / "model.pt").unlink()
    with caplog.at_level(logging.WARNING, logger="egnet"):
        code, err = train_here(argv, tracking_db)
    assert code == 0, err[-3000:]
    text = caplog.text
    assert "skipping damaged checkpoint" in text and "ckpt_12.pt" in text and "truncated" in text
    assert f"resuming from {out / 'checkpoints' / 'ckpt_8.pt'} instead of checkpoints/ckpt_12.pt" in text
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["start_iteration"] == 8 and summary["resumed_from"].endswith("checkpoints/ckpt_8.pt")
    resumed = torch.load(out / "model.pt", weights_only=True)["model"]
    assert all(torch.equal(resumed[k], v) for k, v in reference.items())  # as if nothing had happened


# --------------------------------------------------------------------------- disk full


def test_disk_full_while_writing_a_checkpoint(synth_root, split_dir, tracking_db, tmp_path,
                                              train_here) -> None:
    """Training into a disk with room for one checkpoint: ckpt_4 is written, ckpt_8 is not:
    exit 1 with one line, ckpt_4 intact, no temporary file left."""
    from egnet.core.config import load_config
    from egnet.models import build_model

    model = build_model(load_config(PARAMS, "tiny").model)
    size = 2 * sum(p.numel() * p.element_size() for p in model.parameters())  # weights + SGD momentum
    mnt = tmp_path / "disk"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size * 3 // 2}", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip()[:100]})")
    try:
        out = mnt / "out"
        code, err = train_here(train_argv(synth_root, split_dir, out, "train.iterations=8",
                                          "train.checkpoint_every=4"), tracking_db)
        assert code == 1, err[-3000:]
        errors = [ln for ln in err.splitlines() if ln.startswith("egnet: error:")]
        expected = f"egnet: error: no space left on device writing {out}; no partial output was kept"
        assert errors == [expected], err[-3000:]
        assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["ckpt_4.pt"]  # no temporary file
        state, name = ckpt.latest_train_state(Location.from_str(out))
        assert name == "checkpoints/ckpt_4.pt" and state["iteration"] == 4
    finally:
        subprocess.run(["umount", str(mnt)], check=False)
