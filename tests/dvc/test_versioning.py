"""egnet.data.versioning: the data_version tag, dvc_add, materialise (real git + dvc CLIs)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from egnet.core.errors import DataError
from egnet.data import versioning
from egnet.data.versioning import CONTENT_PREFIX, DVC_PREFIX, data_version, dvc_add, materialise
from tests.support.dvc import commit, dir_md5, dvc, init_repo, isolate_inprocess, tool_env, tree_bytes

SIZE = (128, 64)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[Path, Path]:
    """(data root, split dir): 10 synthetic scenes at 128x64 and their official split. Read-only."""
    from egnet.data.synth import synthesize

    base = tmp_path_factory.mktemp("versioning")
    root = base / "nightcity"
    synthesize(root, num=10, seed=3, size=SIZE, workers=1)
    split = base / "split"
    split.mkdir()
    for release, name in (("train", "train.txt"), ("val", "test.txt")):
        stems = sorted(p.stem for p in (root / "NightCity-images/images" / release).glob("*.png"))
        (split / name).write_text("".join(f"{s}\n" for s in stems))
    return root, split


@pytest.fixture
def env(tmp_path, monkeypatch) -> dict[str, str]:
    isolate_inprocess(monkeypatch, tmp_path)
    return tool_env(tmp_path)


def _first_image(root: Path) -> Path:
    return sorted((root / "NightCity-images/images/train").glob("*.png"))[0]


# --- content hash (untracked data) ------------------------------------------


def test_untracked_data_gets_a_content_hash_that_depends_on_lists_and_files(dataset, tmp_path):
    root, split = dataset
    tag = data_version(root, split)
    assert tag.startswith(CONTENT_PREFIX) and len(tag) == len(CONTENT_PREFIX) + 32
    assert data_version(root, split) == tag

    # the same bytes elsewhere -> the same tag (nothing machine-specific goes in)
    copy, copy_split = tmp_path / "copy" / "nightcity", tmp_path / "copy" / "split"
    shutil.copytree(root, copy)
    shutil.copytree(split, copy_split)
    assert data_version(copy, copy_split) == tag
    whole = data_version(copy)  # no split lists: every pair of the layout
    assert whole.startswith(CONTENT_PREFIX) and whole != tag

    # one image replaced by a different-sized file -> a different tag
    img = _first_image(copy)
    img.write_bytes(img.read_bytes() + b"\0" * 16)
    changed = data_version(copy, copy_split)
    assert changed.startswith(CONTENT_PREFIX) and changed != tag
    assert data_version(copy) != whole

    # the same files but a shorter test list -> a different tag
    test_txt = copy_split / "test.txt"
    test_txt.write_text("".join(test_txt.read_text().splitlines(keepends=True)[1:]))
    assert data_version(copy, copy_split) not in (tag, changed)


def test_content_hash_without_split_lists_is_an_error_naming_the_file(dataset, tmp_path):
    root, _ = dataset
    with pytest.raises(DataError, match="train.txt"):
        data_version(root, tmp_path)
    with pytest.raises(DataError, match="not found"):
        data_version(tmp_path / "missing", tmp_path)


# --- DVC-tracked data -------------------------------------------------------


@pytest.mark.dvc
def test_dvc_add_and_data_version_give_the_dvc_hash(dataset, tmp_path, env):
    root, split = dataset
    repo = init_repo(tmp_path / "repo", env)
    data = repo / "data" / "nightcity"
    shutil.copytree(root, data)
    expected = dir_md5(data)  # computed independently of DVC

    assert dvc_add(data) == DVC_PREFIX + expected
    assert (repo / "data" / "nightcity.dvc").is_file()
    assert data_version(data, split) == DVC_PREFIX + expected

    # changed after `dvc add`: the recorded hash no longer describes the data -> content hash
    img = _first_image(data)
    img.write_bytes(img.read_bytes() + b"\0")
    assert data_version(data, split).startswith(CONTENT_PREFIX)

    # re-added: the new DVC hash, equal to the independent computation
    new = dvc_add(data)
    assert new == DVC_PREFIX + dir_md5(data) != DVC_PREFIX + expected
    assert data_version(data, split) == new


@pytest.mark.dvc
def test_data_produced_by_a_stage_is_tagged_with_its_dvc_lock_hash(dataset, tmp_path, env):
    root, split = dataset
    repo = init_repo(tmp_path / "repo", env)
    shutil.copytree(root, repo / "src")
    dvc(repo, env, "stage", "add", "-q", "-n", "copy", "-d", "src", "-o", "data/nightcity",
        "mkdir -p data && cp -r src data/nightcity")
    assert data_version(repo / "src", split).startswith(CONTENT_PREFIX)  # a dependency only: not fetchable
    dvc(repo, env, "repro", "-q")
    assert data_version(repo / "data" / "nightcity", split) == DVC_PREFIX + dir_md5(root)


def test_dvc_add_outside_a_dvc_repo_is_a_clear_error(tmp_path):
    (tmp_path / "d").mkdir()
    with pytest.raises(DataError, match="not inside a DVC repository"):
        dvc_add(tmp_path / "d")
    with pytest.raises(DataError, match="not found"):
        dvc_add(tmp_path / "nope")


# --- materialise ------------------------------------------------------------


@pytest.fixture
def two_versions(dataset, tmp_path, env) -> tuple[Path, str, str, dict[str, bytes], dict[str, bytes]]:
    """A repo with two commits of data/nightcity (one image differs); (repo, rev1, rev2, files1, files2)."""
    root, _ = dataset
    repo = init_repo(tmp_path / "repo", env)
    data = repo / "data" / "nightcity"
    shutil.copytree(root, data)
    dvc_add(data)
    rev1 = commit(repo, env, "data v1")
    files1 = tree_bytes(data)
    img = _first_image(data)
    img.write_bytes(img.read_bytes() + b"v2")
    dvc_add(data)
    rev2 = commit(repo, env, "data v2")
    return repo, rev1, rev2, files1, tree_bytes(data)


@pytest.mark.dvc
def test_materialise_fetches_each_revision_exactly(two_versions, tmp_path, dataset):
    repo, rev1, rev2, files1, files2 = two_versions
    assert files1 != files2

    out1 = materialise(str(repo), rev1, out=tmp_path / "mat" / "v1")
    got1 = tree_bytes(out1)
    assert got1.pop(versioning.MARKER)  # the marker is the only extra file
    assert got1 == files1

    out2 = materialise(str(repo), rev2, "data/nightcity", out=tmp_path / "mat" / "v2")
    got2 = tree_bytes(out2)
    got2.pop(versioning.MARKER)
    assert got2 == files2

    # the copy carries its version, the commit (data_version), and DVC's hash of rev1's data
    # (checked against an independent computation)
    scratch = tmp_path / "scratch"
    for rel, content in files1.items():
        (scratch / rel).parent.mkdir(parents=True, exist_ok=True)
        (scratch / rel).write_bytes(content)
    _, split = dataset
    assert data_version(out1, split) == versioning.GIT_PREFIX + rev1
    marker = json.loads((out1 / versioning.MARKER).read_text())
    assert marker["rev"] == marker["commit"] == rev1 and marker["path"] == "data/nightcity"
    assert DVC_PREFIX + marker["md5"] == DVC_PREFIX + dir_md5(scratch)

    # a materialised copy edited afterwards no longer claims the DVC version
    img = _first_image(out1)
    img.write_bytes(img.read_bytes() + b"edit")
    assert data_version(out1, split).startswith(CONTENT_PREFIX)


@pytest.mark.dvc
def test_materialise_replaces_out_atomically_and_fails_clearly(two_versions, tmp_path):
    repo, rev1, rev2, files1, files2 = two_versions
    out = tmp_path / "mat"
    materialise(str(repo), rev2, out=out)
    materialise(str(repo), rev1, out=out)  # replaces, no leftovers of v2
    got = tree_bytes(out)
    got.pop(versioning.MARKER)
    assert got == files1

    with pytest.raises(DataError, match="no directory 'data/other'"):
        materialise(str(repo), rev1, "data/other", out=tmp_path / "bad")
    assert not (tmp_path / "bad").exists()
    with pytest.raises(DataError, match="cannot open"):
        materialise(str(tmp_path / "not-a-repo"), None, out=tmp_path / "bad")
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".mat")) == []
