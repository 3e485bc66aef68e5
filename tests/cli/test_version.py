"""`egnet --version`: package version, git commit, torch/CUDA build; the same on every MLflow run."""

from __future__ import annotations

import subprocess
from importlib import metadata

import pytest
import torch

from egnet.cli import main
from tests.support import PARAMS, REPO


def _head() -> str:
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                          check=True).stdout.strip()


def test_version_names_package_commit_and_torch_build(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the commit is the source's, not the working directory's
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    first, second, third = capsys.readouterr().out.splitlines()
    assert first.startswith(f"egnet {metadata.version('egnet')} (git {_head()}")
    cuda = f"CUDA {torch.version.cuda}" if torch.version.cuda else "CPU build (no CUDA)"
    assert second.startswith(f"torch {torch.__version__}, {cuda}")
    assert third.startswith("python 3.")


def test_every_training_run_carries_the_version_tags(tmp_path, synth_root, split_dir):
    import mlflow

    from egnet.core.config import load_config
    from egnet.tracking import runs

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = load_config(PARAMS, "quick", [f"tracking.uri={uri}"])
    runs.connect_mlflow(cfg)
    run_id = runs.start_run(cfg, uri, None, runs.run_tags(cfg, synth_root, split_dir), system_metrics=False)
    runs.end_run()
    tags = mlflow.MlflowClient(uri).get_run(run_id).data.tags
    assert tags["egnet_version"] == metadata.version("egnet")
    assert tags["torch_version"] == torch.__version__
    assert tags["torch_cuda"] == (torch.version.cuda or "none")
    assert tags["git_commit"] == _head()
