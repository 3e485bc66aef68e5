"""The NightCity release layout: pairs, names, reading images and labels.

    DATA/NightCity-images/images/{train,val}/<City>_<NNNN>.png
    DATA/NightCity-label/label/{train,val}/<City>_<NNNN>_labelIds.png

Images are 1024x512 RGB PNG; labels Cityscapes labelIds (8-bit, one channel).
NightCity+ re-annotated val labels are 2048x1024 and are resized to the image
size with nearest-neighbour interpolation (callers report that they did).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from egnet.core.errors import DataError

IMAGES_DIR = Path("NightCity-images") / "images"
LABELS_DIR = Path("NightCity-label") / "label"
SPLITS = ("train", "val")
LABEL_SUFFIX = "_labelIds.png"
STEM_RE = re.compile(r"^[A-Za-z][A-Za-z0-9-]*_\d{4}$")

cv2.setNumThreads(1)  # we parallelise over images with processes; nested threads only contend


@dataclass(frozen=True)
class Pair:
    """One image/label pair of the release. ``split`` is the release folder (train|val)."""

    stem: str
    split: str
    image: Path
    label: Path


@dataclass(frozen=True)
class Listing:
    """What is on disk: complete pairs and files without a partner."""

    pairs: tuple[Pair, ...]
    orphan_images: tuple[Path, ...]
    orphan_labels: tuple[Path, ...]
    stray_files: tuple[Path, ...]  # files in the release folders that match neither pattern


def image_path(root: Path, split: str, stem: str) -> Path:
    return Path(root) / IMAGES_DIR / split / f"{stem}.png"


def label_path(root: Path, split: str, stem: str) -> Path:
    return Path(root) / LABELS_DIR / split / f"{stem}{LABEL_SUFFIX}"


def scan(root: str | Path) -> Listing:
    """List the release under ``root`` (sorted by split, then stem)."""
    root = Path(root)
    if not (root / IMAGES_DIR).is_dir():
        raise DataError(f"{root}: not a NightCity layout (missing {IMAGES_DIR}/)")
    if not (root / LABELS_DIR).is_dir():
        raise DataError(f"{root}: not a NightCity layout (missing {LABELS_DIR}/)")
    pairs: list[Pair] = []
    orphan_images: list[Path] = []
    orphan_labels: list[Path] = []
    stray: list[Path] = []
    for split in SPLITS:
        img_dir, lab_dir = root / IMAGES_DIR / split, root / LABELS_DIR / split
        images = {p.stem: p for p in sorted(img_dir.glob("*")) if p.is_file() and p.suffix == ".png"}
        labels = {
            p.name[: -len(LABEL_SUFFIX)]: p
            for p in sorted(lab_dir.glob("*"))
            if p.is_file() and p.name.endswith(LABEL_SUFFIX)
        }
        for folder, known in ((img_dir, images.values()), (lab_dir, labels.values())):
            if folder.is_dir():
                known_set = set(known)
                stray += [
                    p for p in sorted(folder.iterdir())
                    if p.is_file() and p not in known_set and not p.name.startswith(".")
                ]
        for stem in sorted(images.keys() | labels.keys()):
            if stem in images and stem in labels:
                pairs.append(Pair(stem, split, images[stem], labels[stem]))
            elif stem in images:
                orphan_images.append(images[stem])
            else:
                orphan_labels.append(labels[stem])
    return Listing(tuple(pairs), tuple(orphan_images), tuple(orphan_labels), tuple(stray))


def read_quarantine(path: str | Path | None) -> set[str]:
    """Stems listed in a quarantine file (one per line, '#' comments); empty if no file."""
    if not path:
        return set()
    p = Path(path)
    if not p.exists():
        return set()
    return {ln.split("#", 1)[0].strip() for ln in p.read_text().splitlines()} - {""}


def default_quarantine(root: str | Path) -> Path:
    """Where `validate --quarantine` writes by default and later steps look: DATA/quarantine.txt."""
    return Path(root) / "quarantine.txt"


def quarantined(root: str | Path, quarantine: str | Path | None = None) -> set[str]:
    """Stems set aside by `egnet data validate --quarantine`: those of the file given, else of
    DATA/quarantine.txt (the one place that default is read)."""
    return read_quarantine(quarantine if quarantine else default_quarantine(root))


def pairs_by_stem(root: str | Path, quarantine: str | Path | None = None) -> dict[str, Pair]:
    """Complete pairs keyed by stem, quarantined stems (explicit file, else DATA/quarantine.txt) left out."""
    skip = quarantined(root, quarantine)
    return {p.stem: p for p in scan(root).pairs if p.stem not in skip}


def split_pairs(root: str | Path, split_dir: str | Path, which: str,
                quarantine: str | Path | None = None) -> tuple[list[Pair], int]:
    """The pairs of ``split_dir/<which>.txt`` (train|test) with the stems quarantined since the
    split left out, and how many were left out."""
    list_path = Path(split_dir) / f"{which}.txt"
    stems = read_split_list(list_path)
    skip = quarantined(root, quarantine)
    kept = [s for s in stems if s not in skip]
    return select(pairs_by_stem(root, quarantine), kept, str(list_path)), len(stems) - len(kept)


def read_split_list(path: str | Path) -> list[str]:
    """Stems from a split list (train.txt / test.txt)."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: split list not found (run `egnet data split` first)")
    return [ln.strip() for ln in p.read_text().splitlines() if ln.strip()]


def select(pairs: dict[str, Pair], stems: Iterable[str], source: str) -> list[Pair]:
    """Pairs for the stems of a split list; a stem with no pair is an error naming ``source``."""
    stems = list(stems)
    missing = [s for s in stems if s not in pairs]
    if missing:
        raise DataError(
            f"{source}: {len(missing)} stem(s) have no image/label pair (or are quarantined), "
            f"first: {missing[0]}"
        )
    return [pairs[s] for s in stems]


def read_image(path: str | Path, *, bgr: bool = False) -> np.ndarray:
    """8-bit 3-channel PNG -> HxWx3 uint8 RGB (OpenCV's BGR with ``bgr=True``: no conversion
    pass, for callers that cut the image down first). Anything else is a DataError naming the file."""
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise DataError(f"{path}: cannot be decoded as an image")
    if img.dtype != np.uint8:
        raise DataError(f"{path}: image must be 8-bit, got {img.dtype}")
    if img.ndim != 3 or img.shape[2] != 3:
        channels = 1 if img.ndim == 2 else img.shape[2]
        raise DataError(f"{path}: image must have 3 channels (RGB), got {channels}")
    return img if bgr else cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def read_label(path: str | Path, size: tuple[int, int] | None = None) -> tuple[np.ndarray, bool]:
    """8-bit 1-channel labelIds PNG -> (HxW uint8, resized).

    With ``size`` = (width, height): a label at exactly 2x that size (NightCity+) is
    resized nearest-neighbour and ``resized`` is True; any other mismatch is an error.
    """
    lab = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if lab is None:
        raise DataError(f"{path}: cannot be decoded as an image")
    if lab.dtype != np.uint8:
        raise DataError(f"{path}: label must be 8-bit, got {lab.dtype}")
    if lab.ndim != 2:
        raise DataError(f"{path}: label must have 1 channel, got {lab.shape[2]}")
    if size is None:
        return lab, False
    w, h = size
    if lab.shape == (h, w):
        return lab, False
    if lab.shape == (2 * h, 2 * w):
        return cv2.resize(lab, (w, h), interpolation=cv2.INTER_NEAREST), True
    raise DataError(f"{path}: label is {lab.shape[1]}x{lab.shape[0]}, expected {w}x{h} (or {2 * w}x{2 * h})")


def write_png(path: str | Path, array: np.ndarray, rgb: bool = True) -> None:
    """Write an RGB (HxWx3) or single-channel PNG; raises DataError if OpenCV cannot."""
    out = cv2.cvtColor(array, cv2.COLOR_RGB2BGR) if (rgb and array.ndim == 3) else array
    if not cv2.imwrite(str(path), out):
        raise DataError(f"{path}: could not write PNG")
