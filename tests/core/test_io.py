"""Atomic outputs: a failed step leaves nothing behind, a finished one replaces the old output."""

from __future__ import annotations

import json

import pytest

from egnet.core.errors import DataError
from egnet.core.files import atomic_dir, atomic_file, read_json, write_json


def _leftovers(parent):
    return sorted(p.name for p in parent.iterdir())


def test_atomic_dir_success_and_replace(tmp_path):
    out = tmp_path / "out"
    with atomic_dir(out) as tmp:
        (tmp / "a.txt").write_text("one")
        assert not out.exists()
    assert (out / "a.txt").read_text() == "one"
    with atomic_dir(out) as tmp:
        (tmp / "b.txt").write_text("two")
    assert _leftovers(out) == ["b.txt"]
    assert _leftovers(tmp_path) == ["out"]


def test_atomic_dir_failure_leaves_nothing(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with atomic_dir(out) as tmp:
            (tmp / "half.txt").write_text("partial")
            raise RuntimeError("boom")
    assert not out.exists()
    assert _leftovers(tmp_path) == []


def test_atomic_dir_failure_keeps_previous_output(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "good.txt").write_text("old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_dir(out) as tmp:
            (tmp / "new.txt").write_text("x")
            raise KeyboardInterrupt
    assert _leftovers(out) == ["good.txt"]


def test_atomic_file_and_json(tmp_path):
    path = tmp_path / "sub" / "m.json"
    write_json(path, {"mIoU": 0.5, "EF1": [None, 0.1]})
    assert json.loads(path.read_text()) == {"mIoU": 0.5, "EF1": [None, 0.1]}
    with pytest.raises(ValueError):
        write_json(path, {"bad": float("nan")})
    assert read_json(path) == {"mIoU": 0.5, "EF1": [None, 0.1]}  # old content intact
    with pytest.raises(OSError):
        with atomic_file(tmp_path / "f.txt") as fh:
            fh.write("x")
            raise OSError("disk gone")
    assert _leftovers(tmp_path) == ["sub"]


def test_read_json_errors_name_the_file(tmp_path):
    with pytest.raises(DataError, match="nope.json: metrics not found"):
        read_json(tmp_path / "nope.json", "metrics")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(DataError, match="bad.json: not valid JSON"):
        read_json(tmp_path / "bad.json")


def test_outputs_honour_the_umask_not_0700(tmp_path):
    import os
    import stat

    old = os.umask(0o022)
    try:
        with atomic_dir(tmp_path / "d") as tmp:
            (tmp / "x").write_text("x")
        write_json(tmp_path / "f.json", {})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "f.json").stat().st_mode) == 0o644
