"""Params precedence: base (configs/paper.yaml) < profile < explicit edits in params.yaml < --set.

The shipped params.yaml equals the base (every key, so `dvc exp run -S` can address any), a
value that differs from the base wins over the profile, and `egnet params show | resolve`
say where each value came from and write the resolved file the DVC stages read.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from egnet.cli import main
from egnet.core.config import leaves, load_config, resolve_params
from egnet.core.errors import ConfigError
from tests.support import PARAMS, REPO


@pytest.fixture()
def params_copy(tmp_path) -> Path:
    """A private copy of params.yaml + configs/ to edit."""
    shutil.copy(PARAMS, tmp_path / "params.yaml")
    shutil.copytree(REPO / "configs", tmp_path / "configs")
    return tmp_path / "params.yaml"


def _write(path: Path, profile: str, **edits: object) -> None:
    doc = yaml.safe_load(path.read_text())
    doc["profile"] = profile
    for dotted, value in edits.items():
        section, key = dotted.split("__")
        doc[section][key] = value
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


def test_shipped_params_yaml_is_the_base_with_every_key():
    """params.yaml ships equal to configs/paper.yaml: a key added to one must go into the other."""
    params = yaml.safe_load(PARAMS.read_text())
    base = yaml.safe_load((REPO / "configs" / "paper.yaml").read_text())
    assert params.pop("profile") == "paper" and "profile" not in base
    p, b = leaves(params), leaves(base)
    new, lacking = sorted(set(p) - set(b)), sorted(set(b) - set(p))
    assert not new, f"copy these keys (with their comments) into configs/paper.yaml: {new}"
    assert not lacking, f"params.yaml lacks keys of configs/paper.yaml: {lacking}"
    assert {k: v for k, v in p.items() if v != b[k]} == {}, "params.yaml and configs/paper.yaml differ"


def test_each_layer_wins_over_the_one_below(params_copy):
    quick = yaml.safe_load((REPO / "configs" / "quick.yaml").read_text())
    # train.lr: an explicit edit beats quick's; train.iterations: as shipped, so quick's applies;
    # train.batch_size: quick's, then --set; train.momentum: nobody sets it, the base's
    _write(params_copy, "quick", train__lr=0.05)
    resolved = resolve_params(params_copy, None, ["train.batch_size=3"])
    cfg = resolved.validate()
    assert cfg.train.lr == 0.05 and quick["train"]["lr"] != 0.05
    assert cfg.train.iterations == quick["train"]["iterations"]
    assert cfg.train.batch_size == 3 and quick["train"]["batch_size"] != 3
    assert cfg.train.momentum == 0.9 and cfg.model.backbone == quick["model"]["backbone"]
    assert {k: resolved.sources[k] for k in ("train.lr", "train.iterations", "train.batch_size",
                                             "train.momentum", "profile")} == {
        "train.lr": "params.yaml", "train.iterations": "profile", "train.batch_size": "--set",
        "train.momentum": "base", "profile": "params.yaml"}
    # --profile replaces params.yaml's profile; the explicit edit still wins
    paper = load_config(params_copy, "paper")
    assert (paper.profile, paper.train.lr, paper.model.backbone) == ("paper", 0.05, "resnet101")


def test_an_edit_back_to_the_base_value_leaves_the_profile_in_charge(params_copy):
    """Documented: only values that differ from the base count as edits (use --set to pin one)."""
    _write(params_copy, "quick", train__lr=1.0e-5)
    assert load_config(params_copy).train.lr == 0.02
    assert load_config(params_copy, overrides=["train.lr=1e-5"]).train.lr == 1e-5


def test_floats_as_dvc_writes_them(params_copy):
    """`dvc exp run -S train.lr=1e-4` writes ``lr: 0.0001``, but ``1e-05`` for 1e-5 (YAML 1.2):
    both are numbers here, in params.yaml and in --set (PyYAML alone reads ``1e-05`` as a string)."""
    params_copy.write_text(params_copy.read_text().replace("lr: 1.0e-5 ", "lr: 2e-05  "))
    assert load_config(params_copy).train.lr == 2e-5
    assert load_config(PARAMS, overrides=["train.lr=3e-5"]).train.lr == 3e-5


def test_errors_name_the_file_the_value_came_from(params_copy):
    overlay = params_copy.parent / "configs" / "quick.yaml"
    overlay.write_text(overlay.read_text().replace("lr: 0.02", "lr: -0.02"))
    with pytest.raises(ConfigError, match=r"configs/quick\.yaml: 'train\.lr' = -0\.02"):
        load_config(params_copy, "quick")
    overlay.write_text(overlay.read_text() + "train2: {a: 1}\n")
    with pytest.raises(ConfigError, match=r"quick\.yaml: unknown key 'train2\.a'"):
        load_config(params_copy, "quick")

    _write(params_copy, "paper", train__hflip=1)   # an int is not a bool, and is not "the base's true"
    with pytest.raises(ConfigError, match=r"params\.yaml: 'train\.hflip' = 1"):
        load_config(params_copy)
    doc = yaml.safe_load(params_copy.read_text())
    del doc["train"]["hflip"]
    params_copy.write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError, match=r"missing key 'train\.hflip'.*configs/paper\.yaml"):
        load_config(params_copy)
    (params_copy.parent / "configs" / "paper.yaml").unlink()
    with pytest.raises(ConfigError, match=r"base configuration .*paper\.yaml not found"):
        load_config(params_copy)


def test_params_resolve_writes_the_values_the_steps_use(params_copy, tmp_path, capsys):
    _write(params_copy, "quick", train__iterations=7)
    out = tmp_path / "outputs" / "params.yaml"
    assert main(["params", "resolve", "--out", str(out), "--params", str(params_copy)]) == 0
    assert f"-> {out}" in capsys.readouterr().out
    doc = yaml.safe_load(out.read_text())
    assert doc["resolved_from"] == "params.yaml, profile quick"
    assert doc["train"]["iterations"] == 7 and doc["train"]["lr"] == 0.02   # edit, then the profile
    # read back as it is: the same config, whatever configs/ says now (it is not consulted)
    expected = load_config(params_copy)
    shutil.rmtree(params_copy.parent / "configs")
    assert load_config(out) == expected
    assert load_config(out, overrides=["train.lr=0.5"]).train.lr == 0.5
    with pytest.raises(ConfigError, match="resolved for profile 'quick'; --profile paper does not apply"):
        load_config(out, "paper")


def test_params_show_says_where_each_value_comes_from(params_copy, capsys):
    _write(params_copy, "quick", train__lr=0.05)
    args = ["--params", str(params_copy), "--set", "train.seed=3"]
    assert main(["params", "show", "train", *args]) == 0
    rows = {line.split()[0]: line.split()[1:] for line in capsys.readouterr().out.splitlines()[3:]}
    assert rows["train.lr"] == ["0.05", "params.yaml"]
    assert rows["train.iterations"] == ["200", "profile", "quick"]
    assert rows["train.seed"] == ["3", "--set"]
    assert rows["train.momentum"] == ["0.9", "base"]
    assert set(rows) == {k for k in leaves(yaml.safe_load(params_copy.read_text())) if k.startswith("train.")}

    assert main(["params", "show", "--changed", *args]) == 0
    changed = [line.split()[0] for line in capsys.readouterr().out.splitlines()[3:]]
    assert "train.momentum" not in changed
    assert {"profile", "train.lr", "train.seed", "model.backbone"} <= set(changed)

    assert main(["params", "show", "trian", *args]) == 2
    assert "no key or section 'trian'" in capsys.readouterr().err


def test_outside_the_repository_the_params_beside_the_package_are_used(tmp_path, monkeypatch):
    """An editable install run from another folder (`egnet params show` in /tmp) finds the
    repository's params.yaml and configs/, not a missing ./params.yaml."""
    from egnet.core.config import default_params_path

    monkeypatch.chdir(tmp_path)
    assert default_params_path().resolve() == PARAMS.resolve()
    (tmp_path / "params.yaml").write_text("profile: paper\n")
    assert default_params_path() == Path("params.yaml")
