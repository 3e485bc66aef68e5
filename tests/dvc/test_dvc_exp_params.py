"""`dvc exp run -S train.lr=...` under a profile: the run uses the value, DVC shows the value used.

A temporary git+DVC repo with this project's dvc.yaml, configs/ and egnet/ sources and
``profile: quick`` in params.yaml (every key; a tiny schedule as explicit edits). quick.yaml
sets ``train.lr: 0.02``; ``-S train.lr=0.03`` is an explicit edit of params.yaml and must win:
the MLflow run of the experiment's train stage logs ``train.lr`` 0.03, and ``dvc params diff``
shows 0.02 -> 0.03 for the resolved outputs/params.yaml the stages declare their params from.
(Before, the overlay won: the run trained at 0.02 while ``dvc params diff`` said 0.03.)
"""

from __future__ import annotations

import json
import re

import pytest
import yaml

from tests.support import REPO
from tests.support.dvc import commit, dvc, project_repo, tool_env

#: explicit edits (each differs from the base): tiny data and a schedule of seconds
TINY_EDITS = {
    "data": {"image_size": [256, 128], "workers": 1},
    "stats": {"workers": 1},
    "train": {"iterations": 2, "batch_size": 2, "crop_size": 96, "checkpoint_every": 2, "log_every": 1,
              "val_every": 1000, "val_max_images": 2, "eval_size": [128, 64]},
}
LR = 0.03


@pytest.mark.slow
@pytest.mark.dvc
def test_exp_run_set_changes_the_lr_under_the_quick_profile(tmp_path):
    import mlflow

    from egnet.data.synth import synthesize

    quick = yaml.safe_load((REPO / "configs" / "quick.yaml").read_text())
    assert quick["train"]["lr"] not in (LR, None)     # else the test could not tell the layers apart

    env = tool_env(tmp_path)
    repo = project_repo(tmp_path / "repo", env)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["profile"] = "quick"
    for section, values in TINY_EDITS.items():
        params[section].update(values)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    synthesize(repo / "data" / "nightcity", num=8, seed=3, size=(256, 128), workers=1)
    dvc(repo, env, "add", "-q", "data/nightcity")
    dvc(repo, env, "repro", "params")                  # the baseline's resolved params, committed
    commit(repo, env, "quick profile, tiny schedule")
    assert yaml.safe_load((repo / "outputs/params.yaml").read_text())["train"]["lr"] == quick["train"]["lr"]

    out = dvc(repo, env, "exp", "run", "-S", f"train.lr={LR}", "train").stdout
    assert re.findall(r"Running stage '([\w-]+)'", out) == ["params", "validate", "split", "stats", "train"]

    run_id = (repo / "outputs/train/mlflow_run_id").read_text().strip()
    run = mlflow.MlflowClient(tracking_uri=f"sqlite:///{repo / 'mlflow.db'}").get_run(run_id)
    assert float(run.data.params["train.lr"]) == LR
    assert run.data.params["model.backbone"] == quick["model"]["backbone"]   # the profile still applies
    assert run.data.params["train.iterations"] == "2"                        # and the explicit edits

    diff = json.loads(dvc(repo, env, "params", "diff", "--json").stdout)
    assert diff["outputs/params.yaml"]["train.lr"]["old"] == quick["train"]["lr"]
    assert diff["outputs/params.yaml"]["train.lr"]["new"] == LR
    assert list(diff["outputs/params.yaml"]) == ["train.lr"]                 # nothing else changed
    assert diff["params.yaml"]["train.lr"]["new"] == LR
