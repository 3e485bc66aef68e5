"""Bad parameters fail before any work starts, naming the key.

Walks every key of params.yaml (recursively): a value of the wrong type for each, a negative
number for each numeric key, a value outside the domain for each string key; plus the checks
that span keys (crop larger than the images, a global batch that does not divide over the
processes) and a few through the CLI, where nothing may be written.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from egnet.cli import main
from egnet.core.config import load_config
from egnet.core.errors import ConfigError
from egnet.training.train import check_training
from tests.support import PARAMS, REPO

#: numeric keys where a negative value is meaningful
NEGATIVE_OK = {
    "model.egl_w1": "a weight of Eq. 1; the paper's are positive but the sign is the model's to learn",
    "model.egl_w2": "as egl_w1",
    "register.min_delta_miou": "a negative margin lets a slightly worse challenger through "
                               "(a deliberate policy)",
}
#: string keys with no fixed domain: any non-empty string may be right; checked where used
FREE_STRINGS = {
    "drift.reference_split": "a split name inside the reference stats.json; checked when that file is read",
    "model.backbone_weights": "none | imagenet | a path; a missing or foreign file is a ConfigError "
                              "naming the key when the model is built, before training",
    "register.model_name": "any MLflow registered-model name",
    "register.lock_uri": "a plain path is a file lock (file:// and s3:// are checked)",
    "tracking.uri": "any path is a file store; unreachable or unknown schemes fail in "
                    "tracking.connect_mlflow before training (tests/tracking/test_tracking.py)",
    "tracking.experiment": "any MLflow experiment name",
    "pipeline.name": "any KFP pipeline display name",
    "pipeline.data_path": "a path in the pod's volume or, for `pipeline run --local`, on this machine",
    "pipeline.data_repo": "a git URL in any of git's forms",
    "pipeline.data_repo_path": "a path inside data_repo",
    "pipeline.data_rev": "any git commit, tag or branch",
    "pipeline.data_cache": "as data_path",
    "pipeline.train_out": "s3://..., a pod path, or a local folder for `pipeline run --local`",
}


def _leaves(node: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for key, value in node.items():
        if isinstance(value, dict):
            out += _leaves(value, f"{prefix}{key}.")
        else:
            out.append((f"{prefix}{key}", value))
    return out


LEAVES = _leaves(yaml.safe_load(PARAMS.read_text()))


#: keys that take more than one type: a value of none of them
WRONG_TYPE = {"train.workers": "true"}  # a count or "auto"


def _wrong_type(value: Any) -> str:
    """YAML text of a value of another type than ``value``'s."""
    if isinstance(value, bool):
        return "maybe"               # a string for a bool (strict: not even "true")
    if isinstance(value, (int, float)):
        return "twelve"              # a string for a number
    if isinstance(value, str):
        return "12"                  # a number for a string
    if isinstance(value, list):
        return "{a: 1}"              # a mapping for a list
    raise AssertionError(f"unexpected type in params.yaml: {value!r}")


def _rejects(key: str, yaml_value: str) -> str:
    with pytest.raises(ConfigError) as err:
        load_config(PARAMS, None, [f"{key}={yaml_value}"])
    message = str(err.value)
    assert re.search(rf"(^|[\s']){re.escape(key)}([\s'.=]|$)", message), message  # names the key
    assert "\n" not in message
    return message


def test_the_walk_covers_every_key() -> None:
    keys = [k for k, _ in LEAVES]
    assert len(keys) == len(set(keys)) > 100
    assert {"profile", "train.lr", "model.variant", "pipeline.active_deadline_s"} <= set(keys)
    assert set(NEGATIVE_OK) | set(FREE_STRINGS) <= set(keys)


@pytest.mark.parametrize("key,value", LEAVES, ids=[k for k, _ in LEAVES])
def test_every_key_refuses_a_wrong_type(key: str, value: Any) -> None:
    _rejects(key, WRONG_TYPE.get(key) or _wrong_type(value))


NUMERIC = [(k, v) for k, v in LEAVES if isinstance(v, (int, float)) and not isinstance(v, bool)]
STRINGS = [(k, v) for k, v in LEAVES if isinstance(v, str)]


@pytest.mark.parametrize("key", [k for k, _ in NUMERIC if k not in NEGATIVE_OK])
def test_every_numeric_key_refuses_a_negative_value(key: str) -> None:
    _rejects(key, "-1")


@pytest.mark.parametrize("key", [k for k, _ in STRINGS if k not in FREE_STRINGS])
def test_every_constrained_string_key_refuses_an_unknown_value(key: str) -> None:
    _rejects(key, "'no such value!'")


@pytest.mark.parametrize("key", sorted(FREE_STRINGS))
def test_free_string_keys_are_exempt_for_a_reason(key: str) -> None:
    """The exemptions are real: each key takes an arbitrary string today (if one starts to
    refuse it, move it out of FREE_STRINGS so the test above covers it)."""
    load_config(PARAMS, None, [f"{key}=some/thing-else.1"])


@pytest.mark.parametrize("sets,key", [
    (["train.lr=-0.01"], "train.lr"),
    (["train.lr=0"], "train.lr"),
    (["model.variant=egnet2"], "model.variant"),
    (["model.backbone=resnet152"], "model.backbone"),
    (["model.output_stride=4"], "model.output_stride"),
    (["split.test_fraction=1.5"], "split.test_fraction"),
    (["train.momentum=1"], "train.momentum"),
    (["data.image_size=[1024]"], "data.image_size"),
    (["evaluate.extra_modes=[native, tta]"], "evaluate.extra_modes.1"),
    (["profile=no-such-profile"], "profile"),
    (["register.lock_uri=http://host/lock"], "register.lock_uri"),
    (["pipeline.image=Registry/EGNet:latest!"], "pipeline.image"),
])
def test_out_of_range_values_name_the_key(sets: list[str], key: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(PARAMS, None, sets)
    assert key in str(err.value), str(err.value)


@pytest.mark.parametrize("sets", [["train.crop_size=513"],              # paper images are 1024x512
                                  ["data.image_size=[256,128]", "train.crop_size=200"]])
def test_crop_larger_than_the_images_is_refused_for_training(sets: list[str]) -> None:
    cfg = load_config(PARAMS, None, sets)  # the data steps may use small images under any profile ...
    with pytest.raises(ConfigError, match=r"'train\.crop_size' = \d+: larger than the images' shorter side"):
        check_training(cfg)                # ... training may not crop beyond them


def test_the_shipped_profiles_pass_the_cross_key_checks() -> None:
    for profile in sorted(p.stem for p in (REPO / "configs").glob("*.yaml")):
        check_training(load_config(PARAMS, profile))
    # a crop equal to the images' shorter side is fine
    check_training(load_config(PARAMS, "quick", ["data.image_size=[256,128]", "train.crop_size=128"]))


def _no_outputs(out: Path) -> None:
    assert not out.exists() and not list(out.parent.glob(f".{out.name}*")), list(out.parent.iterdir())


@pytest.mark.parametrize("sets,key", [
    (["train.lr=-0.01"], "train.lr"),
    (["model.variant=segformer"], "model.variant"),
    (["train.crop_size=4096"], "train.crop_size"),
])
def test_train_refuses_bad_params_before_any_work(sets, key, synth_root, split_dir, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    argv = ["train", "--data", str(synth_root), "--split", str(split_dir), "--out", str(out),
            "--params", str(PARAMS), "--profile", "quick",
            "--set", f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}"]
    for s in sets:
        argv += ["--set", s]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("egnet: error: ") and key in err[0], err
    _no_outputs(out)
    assert not (tmp_path / "mlflow.db").exists()  # not even the tracking store was touched


def test_batch_not_divisible_by_world_size_fails_before_joining_the_job(
        synth_root, split_dir, tmp_path, capsys, monkeypatch) -> None:
    """A rank of a 3-process job with a global batch of 4: refused before the rendezvous (which
    would wait for the other ranks) and before anything is written."""
    for name, value in {"WORLD_SIZE": "3", "RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                        "MASTER_PORT": "1"}.items():
        monkeypatch.setenv(name, value)
    out = tmp_path / "out"
    code = main(["train", "--data", str(synth_root), "--split", str(split_dir), "--out", str(out),
                 "--params", str(PARAMS), "--profile", "quick", "--set", "train.batch_size=4",
                 "--set", f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert re.search(r"train\.batch_size=4 .* 3 processes", err[0]), err[0]
    _no_outputs(out)
    assert not (tmp_path / "mlflow.db").exists()
