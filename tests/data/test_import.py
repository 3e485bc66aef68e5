"""`egnet data import`: release folders or zips in, the exact layout out, verified and atomic."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from egnet.cli import main
from egnet.core.errors import DataError
from egnet.data import layout
from egnet.data.importer import ImportRefused, import_release, release_dest
from egnet.data.synth import synthesize
from tests.support import PARAMS

SIZE = (128, 64)
ARGS = ["--params", str(PARAMS), "--set", f"data.image_size=[{SIZE[0]},{SIZE[1]}]"]


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    root = tmp_path_factory.mktemp("rel") / "nc"
    synthesize(root, num=6, seed=5, size=SIZE)
    return root


def _digest(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _zip_tree(zpath: Path, tree: Path, prefix: str, extra: dict[str, bytes] | None = None) -> None:
    """Zip every file under ``tree`` as ``prefix/<relative path>``, plus ``extra`` members."""
    with zipfile.ZipFile(zpath, "w") as zf:
        for p in sorted(tree.rglob("*")):
            if p.is_file():
                rel = p.relative_to(tree).as_posix()
                zf.write(p, f"{prefix}/{rel}" if prefix else rel)
        for name, data in (extra or {}).items():
            zf.writestr(name, data)


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir())


def test_release_dest_rules():
    assert str(release_dest(("x", "NightCity-images", "images", "train", "A_0001.png"))) == \
        "NightCity-images/images/train/A_0001.png"
    assert str(release_dest(("NightCity-label", "label", "val", "A_0001_labelIds.png"))) == \
        "NightCity-label/label/val/A_0001_labelIds.png"
    assert release_dest(("NightCity-label", "color", "val", "A_0001_color.png")) is None
    assert release_dest(("__MACOSX", "NightCity-images", "images", "train", "._A_0001.png")) is None
    assert release_dest(("NightCity-images", "images", "train", ".DS_Store")) is None
    assert release_dest(("NightCity-images", "images", "test", "A_0001.png")) is None
    assert release_dest(("NightCity-label", "images", "train", "A_0001.png")) is None


def test_import_from_folders(release, tmp_path):
    src = tmp_path / "download"
    shutil.copytree(release, src / "NightCity")            # the release nested one level down
    color = src / "NightCity" / "NightCity-label" / "color" / "train"
    color.mkdir(parents=True)
    (color / "Town_0001_color.png").write_bytes(b"not even a png: viewing only, ignored")
    (src / "NightCity" / layout.IMAGES_DIR / "train" / ".DS_Store").write_bytes(b"junk")
    out = tmp_path / "data" / "nightcity"
    s = import_release(src, out, SIZE, workers=1)
    assert s["source"] == "folders" and s["num_pairs"] == 6
    assert _digest(out) == _digest(release)                 # same files, same bytes, nothing else
    assert _leftovers(out.parent) == ["nightcity"]


def test_import_from_zips_nested_and_color_ignored(release, tmp_path):
    src = tmp_path / "download"
    src.mkdir()
    _zip_tree(src / "NightCity-images.zip", release / "NightCity-images", "release/2021/NightCity-images",
              {"__MACOSX/release/._junk": b"\x00\x05", "release/2021/readme.txt": b"thanks"})
    _zip_tree(src / "NightCity-label.zip", release / "NightCity-label", "NightCity-label",
              {"NightCity-label/color/train/Town_0001_color.png": b"viewing only"})
    out = tmp_path / "nightcity"
    assert main(["data", "import", str(src), "--out", str(out), *ARGS]) == 0
    assert _digest(out) == _digest(release)


def test_zip_with_path_traversal_is_refused(release, tmp_path, capsys):
    src = tmp_path / "download"
    src.mkdir()
    _zip_tree(src / "NightCity-images.zip", release, "", {"../evil": b"gotcha"})
    out = tmp_path / "nightcity"
    assert main(["data", "import", str(src), "--out", str(out), *ARGS]) == 1
    err = capsys.readouterr().err
    assert "../evil" in err and "unsafe" in err
    assert not out.exists() and not (tmp_path / "evil").exists()
    with zipfile.ZipFile(src / "abs.zip", "w") as zf:
        zf.writestr("/etc/NightCity-images/images/train/A_0001.png", b"x")
    (src / "NightCity-images.zip").unlink()
    with pytest.raises(DataError, match="unsafe member '/etc/"):
        import_release(src, out, SIZE)


def test_failing_import_leaves_no_output(release, tmp_path, capsys):
    src = tmp_path / "download"
    shutil.copytree(release, src)
    victim = next((src / layout.IMAGES_DIR / "train").glob("*.png"))
    victim.write_bytes(victim.read_bytes()[:200])             # truncated
    out = tmp_path / "nightcity"
    with pytest.raises(ImportRefused) as exc:
        import_release(src, out, SIZE, workers=1)
    assert exc.value.problems[0]["file"] == str(victim)       # named as it is in the source
    assert not out.exists() and _leftovers(tmp_path) == ["download"]
    assert main(["data", "import", str(src), "--out", str(out), *ARGS]) == 1
    err = capsys.readouterr().err
    assert str(victim) in err and "truncated" in err and "nothing was written" in err
    assert not out.exists() and _leftovers(tmp_path) == ["download"]


def test_no_release_found(tmp_path, capsys):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "notes.txt").write_text("no data here")
    assert main(["data", "import", str(tmp_path / "src"), "--out", str(tmp_path / "out"), *ARGS]) == 1
    assert "no NightCity release found" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.dvc
def test_dvc_add(release, tmp_path, capsys):
    repo = tmp_path / "repo"
    repo.mkdir()
    out = repo / "data" / "nightcity"
    # outside any DVC repository: a clear error after the (complete) import
    assert main(["data", "import", str(release), "--out", str(out), "--dvc-add", *ARGS]) == 1
    assert "not inside a DVC repository" in capsys.readouterr().err
    dvc = Path(sys.executable).parent / "dvc"
    subprocess.run([str(dvc), "init", "--no-scm", "-q"], cwd=repo, check=True)
    assert main(["data", "import", str(release), "--out", str(out), "--dvc-add", *ARGS]) == 0
    assert (repo / "data" / "nightcity.dvc").exists()
    assert "nightcity.dvc" in capsys.readouterr().out
