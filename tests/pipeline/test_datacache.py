"""Data versions on the PVC (egnet/pipeline/datacache.py) against a real local git+DVC repo.

- ``resolve``: a branch, an annotated tag, "" (HEAD) -> the commit (``git rev-parse`` as the
  independent answer); the ``data_key`` is stable across runs and changes after a reclaim.
- ``fetch_once``: two processes materialising the same commit at the same time leave one
  folder, complete, with nothing else behind; a folder in place is never replaced.
- ``reclaim``: only versions unused for ``max_age_days``, never the one in use.
- The train run's ``data_version`` is ``git:<commit>`` of what was fetched.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from egnet.core.errors import DataError
from egnet.data import versioning
from egnet.pipeline import datacache
from egnet.pipeline import steps as kfp_steps
from tests.support import REPO
from tests.support.dvc import commit, dir_md5, git, init_repo, isolate_inprocess, tool_env, tree_bytes

pytestmark = pytest.mark.dvc        # real git + dvc repositories
PATH = "data/nightcity"


@pytest.fixture(scope="module")
def data_repo(tmp_path_factory) -> dict:
    """A git+DVC repo with two data versions: v1 (annotated tag), main (v2), and the files of each."""
    from egnet.data.synth import synthesize

    tmp = tmp_path_factory.mktemp("datarepo")
    env = tool_env(tmp)
    repo = init_repo(tmp / "repo", env)
    data = repo / PATH
    synthesize(data, num=4, seed=2, size=(128, 64), workers=1)
    subprocess.run([sys.executable, "-m", "dvc", "add", "-q", PATH], cwd=repo, env=env, check=True)
    rev1 = commit(repo, env, "data v1")
    files1, md5_1 = tree_bytes(data), dir_md5(data)
    git(repo, env, "tag", "-a", "v1", "-m", "release 1")
    img = sorted((data / "NightCity-images/images/train").glob("*.png"))[0]
    img.write_bytes(img.read_bytes() + b"v2")
    subprocess.run([sys.executable, "-m", "dvc", "add", "-q", PATH], cwd=repo, env=env, check=True)
    rev2 = commit(repo, env, "data v2")
    return {"repo": str(repo), "env": env, "tmp": tmp, "rev1": rev1, "rev2": rev2, "files1": files1,
            "md5_1": md5_1, "files2": tree_bytes(data)}


@pytest.fixture
def dvc_env(data_repo, monkeypatch):
    isolate_inprocess(monkeypatch, data_repo["tmp"])
    return data_repo


def test_resolve_names_the_commit_of_a_tag_a_branch_and_head(dvc_env):
    r = dvc_env
    # the independent answer: git itself (an annotated tag peeled to its commit)
    assert git(Path(r["repo"]), r["env"], "rev-parse", "v1^{commit}") == r["rev1"]
    assert versioning.resolve_commit(r["repo"], "v1") == r["rev1"]
    assert versioning.resolve_commit(f"file://{r['repo']}", "main") == r["rev2"]
    assert versioning.resolve_commit(r["repo"], "") == r["rev2"]
    assert versioning.resolve_commit(r["repo"], r["rev1"]) == r["rev1"]          # a commit: as it is
    with pytest.raises(DataError, match="no such branch or tag"):
        versioning.resolve_commit(r["repo"], r["rev1"][:10])                     # abbreviated: refused
    with pytest.raises(DataError, match="cannot list the refs"):
        versioning.resolve_commit(str(r["tmp"] / "nowhere"), "main")


def test_data_key_is_stable_and_new_after_a_reclaim(dvc_env, tmp_path):
    r, cache = dvc_env, tmp_path / "versions"
    a = datacache.resolve(r["repo"], "v1", PATH, str(cache), 30, log=lambda s: None)
    b = datacache.resolve(r["repo"], r["rev1"], PATH, str(cache), 30, log=lambda s: None)
    assert a == b and a.commit == r["rev1"] and a.data_key.startswith(f"git:{r['rev1']}#")
    folder = datacache.fetch_once(r["repo"], a.commit, PATH, str(cache), log=lambda s: None)
    assert str(folder) == a.folder
    # another run resolves main; rev1 unused for 31 days: reclaimed, and its key changes
    gen = Path(a.folder + datacache.GEN)
    os.utime(gen, (gen.stat().st_atime, gen.stat().st_mtime - 31 * 86400))
    logs: list[str] = []
    m = datacache.resolve(r["repo"], "main", PATH, str(cache), 30, log=logs.append)
    assert m.commit == r["rev2"] and not Path(a.folder).exists() and not gen.exists()
    assert any(line.startswith(f"reclaimed {a.folder}") for line in logs)
    c = datacache.resolve(r["repo"], "v1", PATH, str(cache), 30, log=lambda s: None)
    assert c.commit == a.commit and c.data_key != a.data_key     # no cached step can point at the gone folder
    # the version in use is never reclaimed, whatever its age
    gen = Path(m.folder + datacache.GEN)
    os.utime(gen, (0, 0))
    assert datacache.reclaim(cache, 30, keep={Path(m.folder)}) == []


FETCH_SCRIPT = """
import sys, time
from pathlib import Path
from egnet.data import versioning
from egnet.pipeline import datacache
repo, commit, path, cache, me, other = sys.argv[1:7]
Path(me + ".ready").touch()
while not Path(other + ".ready").exists():
    time.sleep(0.01)

def fetch(*a, **k):
    out = versioning.materialise(*a, **k)
    Path(me + ".fetched").touch()          # both fetch before either renames: a real race
    while not Path(other + ".fetched").exists():
        time.sleep(0.01)
    return out

print(datacache.fetch_once(repo, commit, path, cache, fetch=fetch))
"""


def test_two_concurrent_materialisations_of_one_commit_leave_one_complete_folder(dvc_env, tmp_path):
    """Two runs (two processes) fetch the same commit into the same cache at the same time: both
    succeed with the same folder, its content is the commit's data, no temporary folder is left,
    and the winner's folder is not replaced by the loser (same inode)."""
    r, cache = dvc_env, tmp_path / "versions"
    env = {**r["env"], "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, "-c", FETCH_SCRIPT, r["repo"], r["rev1"], PATH, str(cache),
                               str(tmp_path / me), str(tmp_path / other)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
             for me, other in (("a", "b"), ("b", "a"))]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    folder = datacache.version_dir(cache, r["repo"], PATH, r["rev1"])
    assert [o.strip().splitlines()[-1] for o in outs] == [str(folder)] * 2
    assert sum("fetched by another run meanwhile" in o for o in outs) == 1   # one rename won
    got = tree_bytes(folder)
    marker = json.loads(got.pop(versioning.MARKER))
    assert got == r["files1"] and marker["commit"] == r["rev1"] and marker["md5"] == r["md5_1"]
    assert sorted(p.name for p in folder.parent.iterdir()) == [r["rev1"]]   # no .tmp-* left
    inode = folder.stat().st_ino
    assert datacache.fetch_once(r["repo"], r["rev1"], PATH, str(cache), log=lambda s: None) == folder
    assert folder.stat().st_ino == inode


class _Artifact:
    def __init__(self, path: Path):
        self.path, self.metadata = str(path), {}


def test_the_pipeline_steps_resolve_then_materialise_with_the_commit_as_data_version(dvc_env, tmp_path):
    r, cache = dvc_env, tmp_path / "pvc" / "versions"
    got = kfp_steps.resolve_data(r["repo"], "v1", PATH, "", str(cache), 30)
    assert got["commit"] == r["rev1"]
    art = _Artifact(tmp_path / "data")
    doc = kfp_steps.materialise_data(r["repo"], got["commit"], PATH, "", str(cache), art, got["data_key"])
    # the MLflow data_version tag of the training run: the resolved commit (data_md5: DVC's hash)
    assert doc["data_version"] == f"git:{r['rev1']}" == versioning.data_version(doc["root"])
    assert art.metadata["data_key"] == got["data_key"] and art.metadata["commit"] == r["rev1"]
    assert versioning.read_marker(doc["root"])["md5"] == r["md5_1"]
    # data on the PVC without a repo: keyed by its content, which changes when the files do
    here = tmp_path / "pvc" / "nightcity"
    shutil.copytree(doc["root"], here)
    (here / versioning.MARKER).unlink()
    k1 = kfp_steps.resolve_data("", "", PATH, str(here), str(cache), 30)["data_key"]
    img = sorted((here / "NightCity-images/images/train").glob("*.png"))[0]
    img.write_bytes(img.read_bytes() + b"x")
    k2 = kfp_steps.resolve_data("", "", PATH, str(here), str(cache), 30)["data_key"]
    assert k1.startswith(f"path:{here}#content:") and k1 != k2
