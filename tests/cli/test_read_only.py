"""Commands that only read MLflow create nothing: no store where the URI points is exit 2, one line.

Run in an empty folder with the default ``tracking.uri`` (``sqlite:///mlflow.db``, relative to
it): models, compare, report, promote (any mode: no store, no model), drift against a registry
or run reference, predict from ``models:/``. Before, each created ``mlflow.db`` (and the
Default experiment) there before finding nothing.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from egnet.cli import main
from tests.support import PARAMS

RUN = "0123456789abcdef0123456789abcdef"
MODEL = "models:/egnet-nightcity@champion"


def _commands(outside: Path, image: Path, data: Path) -> dict[str, list[str]]:
    return {
        "models": ["models"],
        "compare": ["compare", RUN, RUN],
        "report": ["report", RUN, "--out", str(outside / "report")],
        "promote": ["promote"],
        "promote --dry-run": ["promote", "--dry-run"],
        "promote --rollback": ["promote", "--rollback", "--dry-run"],
        "drift models:/": ["data", "drift", str(data), "--reference", MODEL],
        "drift runs:/": ["data", "drift", str(data), "--reference", f"runs:/{RUN}"],
        "predict models:/": ["predict", str(image), "--model", MODEL, "--out", str(outside / "pred")],
    }


@pytest.fixture()
def empty_here(tmp_path, monkeypatch) -> Path:
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return here


@pytest.mark.parametrize("name", list(_commands(Path(), Path(), Path())))
def test_read_only_command_in_an_empty_folder_creates_nothing(name, empty_here, synth_root, capsys):
    image = next((synth_root / "NightCity-images").rglob("*.png"))
    argv = _commands(empty_here.parent, image, synth_root)[name]
    code = main([*argv, "--params", str(PARAMS)])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert list(empty_here.iterdir()) == []                    # no mlflow.db, no mlruns/, no mlartifacts/
    assert not (empty_here.parent / "report").exists() and not (empty_here.parent / "pred").exists()
    assert len(err.splitlines()) == 1
    assert f"no MLflow tracking database at {empty_here.resolve() / 'mlflow.db'}" in err
    assert "MLFLOW_TRACKING_URI" in err and "--set tracking.uri=" in err


def test_a_missing_file_store_is_not_created_either(empty_here, capsys):
    store = empty_here.parent / "mlruns"
    assert main(["models", "--params", str(PARAMS), "--set", f"tracking.uri={store}"]) == 2
    assert f"no MLflow file store at {store}" in capsys.readouterr().err
    assert not store.exists() and list(empty_here.iterdir()) == []


def test_drift_may_skip_when_there_is_no_store_yet(empty_here, synth_root, capsys):
    """The pipeline's first run: no champion, not even a store; --allow-missing-reference skips."""
    import json

    out = empty_here.parent / "drift"
    assert main(["data", "drift", str(synth_root), "--reference", MODEL, "--out", str(out),
                 "--allow-missing-reference", "--params", str(PARAMS)]) == 0
    assert "drift: skipped, no reference" in capsys.readouterr().out
    assert json.loads((out / "drift.json").read_text())["status"] == "skipped"
    assert list(empty_here.iterdir()) == []
