"""Bring a downloaded NightCity release into the dataset layout, verifying it on the way.

    egnet data import SRC [--out data/nightcity] [--dvc-add]

SRC is a folder that holds either the release folders (``NightCity-images/``,
``NightCity-label/``, at any depth) or the release zip files (e.g.
``NightCity-images.zip``, ``NightCity-label.zip``, whatever top folder they
nest the release in). Only ``images/{train,val}/*`` and ``label/{train,val}/*``
are taken; ``color/`` viewing folders and OS junk (``__MACOSX``, ``.DS_Store``)
are skipped. Zip members with ``..`` or absolute paths refuse the whole import.
The result is validated inside a temporary folder and renamed to ``--out`` only
if it has no problems, so a failed import leaves nothing behind.
"""

from __future__ import annotations

import argparse
import shutil
import stat
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from egnet.core.config import Config
from egnet.core.errors import ConfigError, DataError
from egnet.core.files import atomic_dir
from egnet.data import layout
from egnet.data.validate import format_problems, validate

JUNK_NAMES = {".DS_Store", "Thumbs.db", "desktop.ini"}
#: the release folder under which each kind of file lives (NightCity-images/images, NightCity-label/label)
KINDS = {layout.IMAGES_DIR.name: layout.IMAGES_DIR, layout.LABELS_DIR.name: layout.LABELS_DIR}


class ImportRefused(DataError):
    """The imported files have problems; ``problems`` are validate's, paths relative to the release."""

    def __init__(self, message: str, problems: list[dict[str, Any]]) -> None:
        super().__init__(message)
        self.problems = problems


@dataclass(frozen=True)
class Member:
    """One file to bring in: where it comes from and where it goes (relative to the dataset root)."""

    source: str              # human-readable origin: a path, or 'archive.zip:member'
    dest: PurePosixPath
    zip_path: Path | None = None
    zip_name: str | None = None


def release_dest(parts: tuple[str, ...]) -> PurePosixPath | None:
    """Destination of a file whose path ends ``.../images|label/<split>/<file>`` (None: not release data).

    ``color/`` folders, hidden files and ``__MACOSX`` are never release data.
    """
    if len(parts) < 3 or "__MACOSX" in parts or "color" in parts:
        return None
    kind, split, name = parts[-3:]
    if kind not in KINDS or split not in layout.SPLITS or name.startswith(".") or name in JUNK_NAMES:
        return None
    release_folder = KINDS[kind].parent.name   # NightCity-images or NightCity-label
    if len(parts) >= 4 and parts[-4].startswith("NightCity-") and parts[-4] != release_folder:
        return None   # e.g. NightCity-label/images/...: not where the release keeps that kind
    return PurePosixPath(KINDS[kind].as_posix(), split, name)


def _unsafe(name: str) -> bool:
    p = PurePosixPath(name.replace("\\", "/"))
    return p.is_absolute() or ".." in p.parts or (len(name) > 1 and name[1] == ":")


def _from_folders(src: Path) -> list[Member]:
    members = []
    for path in sorted(src.rglob("*")):
        if path.is_file() and not path.is_symlink():
            dest = release_dest(path.relative_to(src).parts)
            if dest is not None:
                members.append(Member(str(path), dest))
    return members


def _from_zips(src: Path) -> tuple[list[Member], list[Path]]:
    members, zips = [], sorted(p for p in src.iterdir() if p.suffix.lower() == ".zip" and p.is_file())
    for zpath in zips:
        try:
            with zipfile.ZipFile(zpath) as zf:
                infos = zf.infolist()
        except zipfile.BadZipFile:
            raise DataError(f"{zpath}: not a valid zip file") from None
        for info in infos:
            if _unsafe(info.filename):
                raise DataError(f"{zpath}: refusing unsafe member {info.filename!r} (absolute path or '..')")
            if stat.S_ISLNK(info.external_attr >> 16):
                raise DataError(f"{zpath}: refusing symbolic link member {info.filename!r}")
            if info.is_dir():
                continue
            dest = release_dest(PurePosixPath(info.filename).parts)
            if dest is not None:
                members.append(Member(f"{zpath.name}:{info.filename}", dest, zpath, info.filename))
    return members, zips


def find_release(src: Path) -> tuple[str, list[Member]]:
    """('folders' | 'zips', members): release folders under ``src`` win over zip files beside them."""
    if not src.is_dir():
        raise DataError(f"{src}: not a folder (give the folder holding the release folders or zip files)")
    members, kind = _from_folders(src), "folders"
    if not members:
        members, zips = _from_zips(src)
        kind = "zips"
        if not members:
            found = f" (zip files: {', '.join(z.name for z in zips)})" if zips else ""
            raise DataError(f"{src}: no NightCity release found{found}; expected "
                            f"{layout.IMAGES_DIR}/<split>/*.png and {layout.LABELS_DIR}/<split>/*"
                            f"{layout.LABEL_SUFFIX}, as folders or inside .zip files")
    seen: dict[PurePosixPath, str] = {}
    for m in members:
        if m.dest in seen:
            raise DataError(f"{src}: two sources for {m.dest}: {seen[m.dest]} and {m.source}")
        seen[m.dest] = m.source
    return kind, members


def _copy(members: list[Member], root: Path) -> None:
    open_zips: dict[Path, zipfile.ZipFile] = {}
    try:
        for m in members:
            target = root / m.dest
            target.parent.mkdir(parents=True, exist_ok=True)
            if m.zip_path is None:
                shutil.copyfile(m.source, target)
            else:
                zf = open_zips.setdefault(m.zip_path, zipfile.ZipFile(m.zip_path))
                with zf.open(m.zip_name) as fin, open(target, "wb") as fout:
                    shutil.copyfileobj(fin, fout, 1 << 20)
    finally:
        for zf in open_zips.values():
            zf.close()


def import_release(src: str | Path, out: str | Path, size: tuple[int, int],
                   workers: int = 0) -> dict[str, Any]:
    """Copy/extract the release under ``src`` to ``out`` (atomically), validated at image ``size`` (w, h)."""
    start = time.perf_counter()
    src, out = Path(src), Path(out)
    if out.resolve() == src.resolve() or src.resolve() in out.resolve().parents:
        raise ConfigError(f"--out {out} must not be inside the source folder {src}")
    kind, members = find_release(src)
    origin = {m.dest.as_posix(): m.source for m in members}
    with atomic_dir(out) as tmp:
        for d in (layout.IMAGES_DIR, layout.LABELS_DIR):
            for split in layout.SPLITS:
                (tmp / d / split).mkdir(parents=True, exist_ok=True)
        _copy(members, tmp)
        report = validate(tmp, size, workers)
        if not report["ok"]:
            problems = []
            for p in report["problems"]:   # name the files as they are in the source, not the temp dir
                rel = Path(p["file"]).relative_to(tmp).as_posix()
                message = p["message"].replace(f"{tmp}/", "")
                problems.append({**p, "file": origin.get(rel, rel), "message": message})
            first = problems[0]
            raise ImportRefused(f"{src}: import refused, {len(problems)} problem(s) in the release; "
                                f"first: {first['file']}: {first['message']}", problems)
    return {
        "src": str(src),
        "out": str(out),
        "source": kind,
        "files": len(members),
        "num_pairs": report["num_pairs"],
        "splits": report["splits"],
        "nightcity_plus_labels": report["nightcity_plus_labels"],
        "seconds": round(time.perf_counter() - start, 2),
    }


def main(args: argparse.Namespace, cfg: Config) -> int:
    try:
        s = import_release(args.src, args.out, tuple(cfg.data.image_size), cfg.data.workers)
    except ImportRefused as exc:
        print(f"import: {len(exc.problems)} problem(s) in {args.src}; nothing was written to {args.out}:",
              file=sys.stderr)
        print("\n".join(format_problems(exc.problems)), file=sys.stderr)
        raise
    plus = f", {s['nightcity_plus_labels']} NightCity+ labels (2x)" if s["nightcity_plus_labels"] else ""
    print(f"import: {s['num_pairs']} pairs (train {s['splits']['train']}, val {s['splits']['val']}{plus}) "
          f"from {s['source']} in {args.src} -> {args.out} in {s['seconds']:.1f} s")
    if args.dvc_add:
        from egnet.data.versioning import dvc_add

        print(f"import: dvc add {args.out} -> data_version {dvc_add(args.out)} (commit {args.out}.dvc)")
    return 0
