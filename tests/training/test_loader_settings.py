"""Loader settings from params (issue 16, item 2): ``train.workers: auto`` = cores per GPU minus
one, ``prefetch_factor`` and ``pin_memory`` passed on; configs saved before the new keys."""

from __future__ import annotations

import pytest
import torch

from egnet.core.config import config_from_dict, load_config
from egnet.core.errors import ConfigError
from egnet.training import loop
from egnet.training.distributed import DistInfo
from egnet.training.run import check_resumable
from tests.support import PARAMS

CPU = DistInfo(0, 1, 0, torch.device("cpu"))


def test_workers_auto_is_the_cores_per_process_minus_one(monkeypatch):
    monkeypatch.setattr(loop, "available_cores", lambda: 112)  # a DGX H100: 112 cores, 8 GPUs
    assert loop.resolve_workers("auto", 8) == 13
    assert loop.resolve_workers("auto", 1) == 111
    assert loop.resolve_workers(4, 8) == 4 and loop.resolve_workers(0, 1) == 0
    monkeypatch.setattr(loop, "available_cores", lambda: 2)
    assert loop.resolve_workers("auto", 1) == 1
    assert loop.resolve_workers("auto", 2) == 0  # never negative


@pytest.mark.parametrize("cpu_max,cap", [("max 100000\n", None), ("150000 100000\n", 2), ("50000 100000", 1)])
def test_available_cores_honours_a_cgroup_cpu_limit(cpu_max, cap, tmp_path, monkeypatch):
    import os

    affinity = len(os.sched_getaffinity(0))
    (tmp_path / "cpu.max").write_text(cpu_max)
    monkeypatch.setattr(loop, "CGROUP_CPU_MAX", tmp_path / "cpu.max")
    assert loop.available_cores() == (affinity if cap is None else min(affinity, cap))
    monkeypatch.setattr(loop, "CGROUP_CPU_MAX", tmp_path / "missing")
    assert loop.available_cores() == affinity


@pytest.mark.filterwarnings("ignore:This DataLoader will create")  # 3 workers on 2 cores: never started
def test_make_loaders_takes_workers_prefetch_and_pinning_from_params(synth_root, split_dir, monkeypatch):
    monkeypatch.setattr(loop, "available_cores", lambda: 8)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # two GPUs on this node: 4 cores each, 3 workers
    sets = ["train.workers=auto", "train.prefetch_factor=3", "train.pin_memory=true",
            "train.persistent_workers=true"]
    cfg = load_config(PARAMS, "tiny", sets)
    train, _, val = loop.make_loaders(cfg, synth_root, split_dir, None, CPU)
    assert (train.num_workers, train.prefetch_factor, train.persistent_workers) == (3, 3, True)
    assert val.num_workers == 2
    assert not train.pin_memory  # page-locking pays off for copies to a GPU only
    cfg0 = load_config(PARAMS, "tiny", ["train.workers=0", "train.prefetch_factor=3"])
    train0, _, _ = loop.make_loaders(cfg0, synth_root, split_dir, None, CPU)
    assert (train0.num_workers, train0.prefetch_factor, train0.persistent_workers) == (0, None, False)


def test_workers_is_a_count_or_auto():
    assert load_config(PARAMS).train.workers == "auto"
    assert load_config(PARAMS, None, ["train.workers=6"]).train.workers == 6
    for bad in ("all", "-1", "true", "2.5"):
        with pytest.raises(ConfigError, match=r"train\.workers"):
            load_config(PARAMS, None, [f"train.workers={bad}"])


def test_configs_saved_before_the_new_keys_load_as_what_they_ran():
    """A checkpoint written before ``train.input`` and ``train.prefetch_factor`` existed loads
    (registered models keep working) as the crops it trained with, and resuming it with today's
    default input is refused rather than silently switching input."""
    new = load_config(PARAMS)
    old = new.to_dict()
    del old["train"]["input"], old["train"]["prefetch_factor"]
    loaded = config_from_dict(old, "ckpt_100.pt")
    assert loaded.train.input == "crop" and loaded.train.prefetch_factor == 2
    assert "input" not in old["train"]  # the caller's dict is left alone
    with pytest.raises(ConfigError, match=r"ckpt_100\.pt was trained with train\.input='crop', now 'resize'"):
        check_resumable(old, new, "ckpt_100.pt")
    check_resumable(old, load_config(PARAMS, None, ["train.input=crop"]), "ckpt_100.pt")
