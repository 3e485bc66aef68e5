"""params.yaml -> typed config: profiles, --set, and errors that name the key."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from egnet.cli import main
from egnet.core.config import config_from_dict, load_config, parse_set
from egnet.core.errors import ConfigError
from tests.support import PARAMS, REPO


@pytest.fixture()
def params_copy(tmp_path) -> Path:
    """A private copy of params.yaml + configs/ to edit."""
    shutil.copy(PARAMS, tmp_path / "params.yaml")
    shutil.copytree(REPO / "configs", tmp_path / "configs")
    return tmp_path / "params.yaml"


def _edit(path: Path, section: str, key: str, value) -> None:
    data = yaml.safe_load(path.read_text())
    data[section][key] = value
    path.write_text(yaml.safe_dump(data))


def test_defaults_are_the_papers_configuration():
    cfg = load_config(PARAMS)
    assert cfg.profile == "paper"
    assert (cfg.model.backbone, cfg.model.output_stride, cfg.model.variant) == ("resnet101", 8, "egnet")
    t = cfg.train
    assert (t.batch_size, t.iterations, t.lr, t.crop_size) == (14, 40000, 1e-5, 300)
    assert (cfg.train.alpha, cfg.train.beta, cfg.train.poly_power) == (1.0, 0.01, 0.9)
    assert cfg.data.image_size == (1024, 512)
    assert cfg.register.model_name == "egnet-nightcity"


def test_profile_overlay_then_set_precedence():
    quick = load_config(PARAMS, profile="quick")
    assert quick.profile == "quick" and quick.model.backbone == "resnet18"
    over = load_config(PARAMS, profile="quick", overrides=["model.backbone=resnet34", "train.lr=0.5"])
    assert over.model.backbone == "resnet34" and over.train.lr == 0.5
    # the profile may also be chosen with --set profile=..., as `dvc exp run -S profile=quick` does
    assert load_config(PARAMS, overrides=["profile=quick"]).model.backbone == "resnet18"


def test_profile_key_in_params_file_selects_overlay(params_copy):
    data = yaml.safe_load(params_copy.read_text())
    data["profile"] = "quick"
    params_copy.write_text(yaml.safe_dump(data))
    assert load_config(params_copy).train.iterations == yaml.safe_load(
        (REPO / "configs/quick.yaml").read_text())["train"]["iterations"]


def test_set_parses_yaml_values():
    assert parse_set(["model.egl_positions=[2, 3]", "train.hflip=false", "register.model_name=x"]) == {
        "model": {"egl_positions": [2, 3]}, "train": {"hflip": False}, "register": {"model_name": "x"}}
    cfg = load_config(PARAMS, overrides=["model.egl_positions=[3]"])
    assert cfg.model.egl_positions == (3,)


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (["train.lrr=1"], "unknown key 'train.lrr'"),
        (["nosection.key=1"], "unknown key 'nosection'"),
        (["train.lr=abc"], "'train.lr' = 'abc'"),
        (["train.batch_size=1.5"], "'train.batch_size' = 1.5"),
        (["train.hflip=1"], "'train.hflip' = 1"),
        (["train.lr=-0.1"], "'train.lr' = -0.1"),
        (["model.variant=resnet"], "'model.variant' = 'resnet'"),
        (["model.output_stride=4"], "'model.output_stride' = 4"),
        (["data.image_size=[1024]"], "'data.image_size"),
        (["train=3"], "'train' must be a mapping"),
        (["train.lr"], "expected section.key=value"),
    ],
)
def test_bad_values_name_the_key(overrides, needle):
    with pytest.raises(ConfigError) as err:
        load_config(PARAMS, overrides=overrides)
    assert needle in str(err.value)
    assert "\n" not in str(err.value)


def test_unknown_and_missing_keys_in_params_file(params_copy):
    _edit(params_copy, "train", "learning_rate", 0.1)
    with pytest.raises(ConfigError, match="unknown key 'train.learning_rate'"):
        load_config(params_copy)
    data = yaml.safe_load(params_copy.read_text())
    del data["train"]["learning_rate"], data["train"]["lr"]
    params_copy.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match="missing key 'train.lr'"):
        load_config(params_copy)


def test_unknown_profile_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="profile 'nope'"):
        load_config(PARAMS, profile="nope")
    with pytest.raises(ConfigError, match="params file not found"):
        load_config(tmp_path / "absent.yaml")


def test_roundtrip_through_dict_and_hash():
    cfg = load_config(PARAMS, profile="quick")
    again = config_from_dict(cfg.to_dict())
    assert again == cfg and again.params_hash() == cfg.params_hash()
    assert cfg.params_hash() != load_config(PARAMS).params_hash()
    flat = cfg.flat()
    assert flat["train.lr"] == cfg.train.lr and flat["profile"] == "quick"


def test_cli_config_error_exits_2_with_one_line(capsys, tmp_path):
    code = main(["data", "synth", "--out", str(tmp_path / "x"), "--set", "train.lr=fast"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("egnet: error:") and "train.lr" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "x").exists()
