"""MLflow tracking: URI choice, reachability, lineage tags, logging that survives a dead server."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time

import pytest

from egnet.core.config import load_config
from egnet.core.errors import ConfigError
from egnet.tracking import runs as tracking
from tests.support import PARAMS, REPO, subprocess_env, train_argv
from tests.support.services import free_port


@pytest.fixture(scope="module")
def cfg():
    return load_config(PARAMS, "tiny")


def test_env_tracking_uri_wins_over_params(cfg, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking.tracking_uri(cfg) == "sqlite:///mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://example.invalid:5000")
    assert tracking.tracking_uri(cfg) == "http://example.invalid:5000"


def test_unreachable_or_unusable_uris_are_config_errors(cfg, monkeypatch, tmp_path):
    port = free_port()  # nothing listens there
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    with pytest.raises(ConfigError, match=rf"MLflow tracking URI http://127.0.0.1:{port} is not reachable"):
        tracking.connect_mlflow(cfg, timeout_s=2)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/missing/dir/mlflow.db")
    with pytest.raises(ConfigError, match="does not exist"):
        tracking.connect_mlflow(cfg)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "ftp://host/x")
    with pytest.raises(ConfigError, match="unsupported scheme 'ftp'"):
        tracking.connect_mlflow(cfg)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    assert tracking.connect_mlflow(cfg) == f"sqlite:///{tmp_path}/mlflow.db"


@pytest.mark.slow
def test_train_with_a_wrong_tracking_uri_fails_at_once_with_one_line(synth_root, split_dir, tmp_path):
    port = free_port()
    r = subprocess.run([sys.executable, "-m", "egnet.cli",
                        *train_argv(synth_root, split_dir, tmp_path / "out", "train.iterations=2")],
                       env=subprocess_env(f"http://127.0.0.1:{port}"), capture_output=True, text=True,
                       timeout=120, cwd=REPO)
    assert r.returncode == 2
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert lines[-1].startswith(f"egnet: error: MLflow tracking URI http://127.0.0.1:{port} is not reachable")
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "out" / "checkpoints").exists()


def test_git_commit_falls_back_to_the_env(tmp_path, monkeypatch):
    monkeypatch.setenv("EGNET_GIT_COMMIT", "feedbeef")
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    assert tracking.git_commit(tmp_path) == "feedbeef"
    monkeypatch.delenv("EGNET_GIT_COMMIT")
    assert tracking.git_commit(tmp_path) == "unknown"


class _FlakyClient:
    """Stands in for MlflowClient: fails while ``down``, records what it receives."""

    def __init__(self):
        self.down = False
        self.received: list = []

    def log_batch(self, run_id, metrics):
        if self.down:
            raise ConnectionError("Connection refused")
        self.received += [(m.key, m.step, m.value) for m in metrics]


def test_run_logger_buffers_while_the_server_is_away(caplog):
    client = _FlakyClient()
    logger = tracking.RunLogger("run", "unused", backoff_s=0.05, max_backoff_s=0.1, client=client)
    logger.log({"loss_total": 1.0}, 1)
    client.down = True
    with caplog.at_level("WARNING"):
        logger.log({"loss_total": 0.9}, 2)   # fails: warned, buffered, no exception
        logger.log({"loss_total": 0.8}, 3)   # inside the back-off: not even tried
    assert client.received == [("loss_total", 1, 1.0)]
    assert caplog.text.count("MLflow logging failed") == 1  # warned once per outage
    client.down = False
    time.sleep(0.06)
    logger.log({"loss_total": 0.7}, 4)
    assert [s for _, s, _ in client.received] == [1, 2, 3, 4]
    assert logger.flush(final=True)
    client.down = True  # still away when training ends: a bounded wait, then a warning
    logger.log({"loss_total": 0.6}, 5)
    with caplog.at_level("WARNING"):
        assert not logger.flush(final=True, wait_s=0.2)
    assert "1 metric value(s) not logged" in caplog.text


@pytest.mark.slow
@pytest.mark.mlflow
@pytest.mark.s3
def test_run_against_a_real_mlflow_server(synth_root, split_dir, tmp_path, mlflow_server, train_here):
    from mlflow import MlflowClient

    out = tmp_path / "out"
    code, err = train_here(train_argv(synth_root, split_dir, out, "train.iterations=4", "train.val_every=2"),
                           mlflow_server.uri)
    assert code == 0, err[-3000:]
    run_id = (out / "mlflow_run_id").read_text().strip()
    run = MlflowClient(mlflow_server.uri).get_run(run_id)
    cfg = load_config(PARAMS, "tiny", ["train.iterations=4", "train.val_every=2"])
    assert run.data.params == {k: str(v) for k, v in cfg.flat().items()}
    tags = run.data.tags
    assert re.fullmatch(r"[0-9a-f]{40}|unknown", tags["git_commit"])
    assert tags["data_version"] == tracking.data_version(synth_root, split_dir)
    assert tags["params_hash"] == cfg.params_hash()
    client = MlflowClient(mlflow_server.uri)
    steps = {k: [m.step for m in client.get_metric_history(run_id, k)]
             for k in ("loss_total", "loss_ce", "loss_exposure", "lr", "images_per_s", "val_mIoU",
                       "val_mEF1")}
    assert steps["loss_total"] == steps["lr"] == steps["images_per_s"] == [1, 2, 3, 4]
    assert steps["val_mIoU"] == steps["val_mEF1"] == [0, 2, 4]
    lr = [m.value for m in client.get_metric_history(run_id, "lr")]
    t = cfg.train
    assert lr == pytest.approx([t.lr * (1 - i / t.iterations) ** t.poly_power for i in range(4)])
    summary = json.loads((out / "train_summary.json").read_text())
    last = client.get_metric_history(run_id, "val_mIoU")[-1].value
    assert summary["val"][-1]["val_mIoU"] == pytest.approx(last)
    assert run.info.status == "FINISHED"

