"""`egnet train`: resume after SIGKILL is exact, SIGTERM saves and exits, s3 output, learning."""

from __future__ import annotations

import json
import signal

import pytest
import torch

from egnet.core.config import load_config
from egnet.training.checkpoint import read_checkpoint
from tests.support import PARAMS, train_argv, wait_for


def _weights(path) -> dict[str, torch.Tensor]:
    return read_checkpoint(path)["model"]


def _summary(out) -> dict:
    return json.loads((out / "train_summary.json").read_text())


@pytest.mark.slow
def test_sigkill_then_resume_ends_with_the_uninterrupted_weights(synth_root, split_dir, tmp_path, tracking_db,
                                                                  train_here, start_train):
    over = ("train.iterations=8", "train.checkpoint_every=3", "train.deterministic=true",
            "train.val_every=4")
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    code, err = train_here(train_argv(synth_root, split_dir, straight, *over), tracking_db)
    assert code == 0, err[-3000:]

    proc = start_train(train_argv(synth_root, split_dir, killed, *over), tracking_db, tmp_path / "k.log")
    try:
        wait_for(lambda: (killed / "checkpoints" / "ckpt_3.pt").exists(), proc, what="ckpt_3.pt")
        proc.send_signal(signal.SIGKILL)  # no handler, no last checkpoint: a node lost
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / "model.pt").exists()

    code, err = train_here(train_argv(synth_root, split_dir, killed, *over), tracking_db)
    assert code == 0, err[-3000:]
    s = _summary(killed)
    assert s["start_iteration"] in (3, 6) and s["resumed_from"].endswith(f"ckpt_{s['start_iteration']}.pt")
    a, b = _weights(straight / "model.pt"), _weights(killed / "model.pt")
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"
    # the same losses step by step, and the same run id carried over
    assert [h["loss_total"] for h in s["history"]] == [h["loss_total"] for h in _summary(straight)["history"]]
    assert s["mlflow_run_id"] == (killed / "mlflow_run_id").read_text().strip()


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_exits_with_143(synth_root, split_dir, tmp_path, tracking_db,
                                                       train_here, start_train):
    over = ("train.iterations=40", "train.checkpoint_every=2")
    out = tmp_path / "out"
    proc = start_train(train_argv(synth_root, split_dir, out, *over), tracking_db, tmp_path / "t.log")
    try:
        wait_for(lambda: (out / "checkpoints" / "ckpt_2.pt").exists(), proc, what="ckpt_2.pt")
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    log = (tmp_path / "t.log").read_text()
    assert proc.returncode == 143, log[-3000:]
    assert "stopped by SIGTERM at iteration" in log and "Traceback" not in log
    stopped_at = int(log.split("stopped by SIGTERM at iteration ")[1].split(";")[0])
    assert 2 <= stopped_at < 40
    assert read_checkpoint(out / "checkpoints" / f"ckpt_{stopped_at}.pt")["iteration"] == stopped_at
    assert not (out / "model.pt").exists() and not (out / "train_summary.json").exists()

    code, err = train_here(train_argv(synth_root, split_dir, out, *over), tracking_db)
    assert code == 0, err[-3000:]
    s = _summary(out)
    assert s["start_iteration"] == stopped_at and s["iteration"] == 40 and s["status"] == "finished"
    assert read_checkpoint(out / "model.pt")["iteration"] == 40

    # changing a setting that shapes the weights cannot silently resume
    code, err = train_here(train_argv(synth_root, split_dir, out, *over, "train.lr=0.5"), tracking_db)
    assert code == 2
    assert err.strip().splitlines()[-1].startswith("egnet: error: ")
    assert f"train.lr={load_config(PARAMS, 'tiny').train.lr!r}, now 0.5" in err and "--no-resume" in err


@pytest.mark.slow
@pytest.mark.s3
def test_s3_output_and_resume(synth_root, split_dir, tmp_path, tracking_db, s3_env, train_here):
    from egnet.training.checkpoint import load_model

    bucket = s3_env.bucket()
    out = f"s3://{bucket}/runs/r1"
    over = ("train.iterations=4", "train.checkpoint_every=2")
    # a first pod writes checkpoints 2 and 4 and the final model
    code, err = train_here(train_argv(synth_root, split_dir, out, *over), tracking_db)
    assert code == 0, err[-3000:]
    keys = {o["Key"] for o in s3_env.client().list_objects_v2(Bucket=bucket)["Contents"]}
    assert {"runs/r1/checkpoints/ckpt_2.pt", "runs/r1/checkpoints/ckpt_4.pt", "runs/r1/model.pt",
            "runs/r1/mlflow_run_id", "runs/r1/train_summary.json"} <= keys
    # "rescheduled pod": the newest checkpoint disappears with the node's last write; the
    # rerun lists the bucket, downloads ckpt_2 and continues to the same end
    s3_env.client().delete_object(Bucket=bucket, Key="runs/r1/checkpoints/ckpt_4.pt")
    code, err = train_here(train_argv(synth_root, split_dir, out, *over), tracking_db)
    assert code == 0, err[-3000:]
    s3 = s3_env.client()
    summary = json.loads(s3.get_object(Bucket=bucket, Key="runs/r1/train_summary.json")["Body"].read())
    assert summary["start_iteration"] == 2 and summary["resumed_from"] == f"{out}/checkpoints/ckpt_2.pt"
    model, cfg = load_model(out)
    assert not model.training and cfg.train.iterations == 4


@pytest.mark.slow
def test_quick_profile_learns_on_synthetic_data(synth_root, split_dir, tmp_path, tracking_db, train_here):
    """The quick profile, as shipped (only the image size of the test data set), lifts val mIoU
    well above the untrained model's (iteration 0, same run, same val images).

    Measured: 0.004 -> 0.124 with ``train.input: resize`` (whole scenes at 128x128, the default
    since issue 16); the 128x128 crops before reached ~0.15, when the margin here was 0.15."""
    out = tmp_path / "quick"
    argv = ["train", "--data", str(synth_root), "--split", str(split_dir), "--out", str(out),
            "--params", str(PARAMS), "--profile", "quick", "--set", "data.image_size=[256,128]"]
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # both cores, as `make run` has them (the suite's default is one): 155 -> 104 s
    try:
        code, err = train_here(argv, tracking_db)
    finally:
        torch.set_num_threads(threads)
    assert code == 0, err[-3000:]
    val = _summary(out)["val"]
    assert val[0]["iteration"] == 0 and val[-1]["iteration"] == _summary(out)["iterations"]
    before, after = val[0]["val_mIoU"], val[-1]["val_mIoU"]
    assert after > max(3 * before, before + 0.10), val
