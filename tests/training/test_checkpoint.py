"""Checkpoint files: safe loading, RNG round trip, fallback past a damaged file, S3 storage."""

from __future__ import annotations

import logging
import random

import numpy as np
import pytest
import torch

from egnet.core.config import load_config
from egnet.core.errors import DataError
from egnet.core.storage import Location
from egnet.training import checkpoint as ckpt
from tests.support import PARAMS


@pytest.fixture(scope="module")
def cfg():
    return load_config(PARAMS, "tiny")


def _state(location: Location, it: int, cfg, keep: int = 3) -> str:
    model = torch.nn.Linear(3, 2)
    torch.nn.init.constant_(model.weight, float(it))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.PolynomialLR(opt, total_iters=10, power=0.9)
    return ckpt.save_train_state(location, iteration=it, cfg=cfg, model=model, optimizer=opt,
                                 scheduler=sched, keep=keep)


def test_rng_states_survive_a_weights_only_file(tmp_path, cfg):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    loc = Location.from_str(tmp_path)
    _state(loc, 5, cfg)
    expected = (random.random(), np.random.rand(3).tolist(), np.random.randn(), torch.rand(4))
    state = ckpt.read_checkpoint(tmp_path / "checkpoints" / "ckpt_5.pt")  # weights_only=True inside
    assert state["format"] == ckpt.FORMAT and state["iteration"] == 5
    assert state["config"] == cfg.to_dict()
    ckpt.set_rng_state(state["rng"])
    got = (random.random(), np.random.rand(3).tolist(), np.random.randn(), torch.rand(4))
    assert got[:3] == expected[:3]
    assert torch.equal(got[3], expected[3])


def test_only_the_newest_checkpoints_are_kept(tmp_path, cfg):
    loc = Location.from_str(tmp_path)
    for it in (2, 4, 6, 8, 10):
        _state(loc, it, cfg, keep=3)
    assert [it for it, _ in ckpt.list_checkpoints(loc)] == [10, 8, 6]
    assert not list((tmp_path / "checkpoints").glob(".*"))  # no temporary files left behind


def test_truncated_latest_falls_back_to_the_previous_one(tmp_path, cfg, caplog):
    loc = Location.from_str(tmp_path)
    for it in (4, 8):
        _state(loc, it, cfg)
    latest = tmp_path / "checkpoints" / "ckpt_8.pt"
    latest.write_bytes(latest.read_bytes()[: latest.stat().st_size // 2])
    with caplog.at_level(logging.WARNING):
        state, name = ckpt.latest_train_state(loc)
    assert name == "checkpoints/ckpt_4.pt" and state["iteration"] == 4
    assert float(state["model"]["weight"][0, 0]) == 4.0
    text = caplog.text
    assert "ckpt_8.pt" in text and "truncated" in text and "instead of" in text


def test_no_checkpoint_means_a_fresh_start(tmp_path):
    assert ckpt.latest_train_state(Location.from_str(tmp_path / "empty")) is None


def test_damaged_and_foreign_files_are_clear_errors(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(DataError, match=r"junk\.pt: not a complete torch\.save archive"):
        ckpt.read_checkpoint(junk)
    pickled = tmp_path / "module.pt"
    torch.save(torch.nn.Linear(2, 2), pickled)  # a whole pickled module: weights_only refuses it
    with pytest.raises(DataError, match=r"module\.pt: refused by torch\.load\(weights_only=True\)"):
        ckpt.read_checkpoint(pickled)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}}, foreign)
    with pytest.raises(DataError, match=r"foreign\.pt: not an egnet checkpoint \(format None"):
        ckpt.read_checkpoint(foreign)
    with pytest.raises(DataError, match="not found"):
        ckpt.read_checkpoint(tmp_path / "missing.pt")


def test_load_model_rebuilds_the_model_from_the_file(tmp_path):
    from egnet.models import build_model

    # the saved config asks for ImageNet weights: load_model must not fetch them
    cfg = load_config(PARAMS, "tiny", ["model.backbone_weights=imagenet"])
    torch.manual_seed(0)
    model = build_model(cfg.model.model_copy(update={"backbone_weights": "none"}))
    loc = Location.from_str(tmp_path / "run")
    ckpt.save_final(loc, model=model, cfg=cfg, iteration=7)
    for spec in (tmp_path / "run", tmp_path / "run" / "model.pt"):
        loaded, got_cfg = ckpt.load_model(spec)
        assert not loaded.training and got_cfg == cfg
        for k, v in model.state_dict().items():
            assert torch.equal(loaded.state_dict()[k], v), k
    with pytest.raises(DataError, match="no model.pt and no checkpoints"):
        ckpt.load_model(tmp_path)


@pytest.mark.s3
def test_s3_location_and_checkpoints_round_trip(s3_env, cfg, tmp_path):
    bucket = s3_env.bucket()
    loc = Location.from_str(f"s3://{bucket}/runs/a")
    assert loc.list() == [] and not loc.exists("model.pt")
    for it in (3, 6):
        _state(loc, it, cfg)
    keys = sorted(o["Key"] for o in s3_env.client().list_objects_v2(Bucket=bucket)["Contents"])
    assert keys == ["runs/a/checkpoints/ckpt_3.pt", "runs/a/checkpoints/ckpt_6.pt"]
    state, name = ckpt.latest_train_state(loc)
    assert name == "checkpoints/ckpt_6.pt" and state["iteration"] == 6
    loc.write_text("mlflow_run_id", "abc\n")
    assert loc.read_text("mlflow_run_id") == "abc\n" and loc.exists("mlflow_run_id")
    loc.delete("mlflow_run_id")
    assert not loc.exists("mlflow_run_id")
    # a prefix that merely starts like ours is not ours
    Location.from_str(f"s3://{bucket}/runs/ab").write_text("x.txt", "x")
    loc.write_text("checkpoints_old/ckpt_9.pt", "x")
    assert loc.list("checkpoints") == ["checkpoints/ckpt_3.pt", "checkpoints/ckpt_6.pt"]
    assert [it for it, _ in ckpt.list_checkpoints(loc)] == [6, 3]
    assert len(loc.list()) == 3
