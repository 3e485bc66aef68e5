"""Check every image/label pair of a NightCity-layout dataset; never modifies the data.

    egnet data validate DATA [--report FILE] [--quarantine FILE]

Per pair: both files are intact PNGs (signature, chunk CRCs, IEND) and decode;
the image is 8-bit 3-channel, the label 8-bit single-channel; both have
``data.image_size`` (a label at exactly 2x is a NightCity+ re-annotation:
counted as info, not a problem); label values are Cityscapes labelIds; names
follow ``<City>_<NNNN>``; no two images have the same content. Over the tree:
no image without a label or label without an image, no stray files.

The report (``--report``) is JSON with ``ok``, ``num_pairs``, ``problems``
(``{file, kind, message, stem}``), ``num_good``, ``bad_stems``,
``nightcity_plus_labels``. Exit 1 listing the first problems when anything is
bad; with ``--quarantine FILE`` the bad stems are written there (later steps
skip them) and the exit is 0 if at least ``data.min_good_pairs`` good pairs remain.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import zlib
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from egnet.core.config import Config
from egnet.core.files import atomic_file, cpu_workers, write_json
from egnet.data import labels, layout

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAX_LISTED = 10          # problems printed on stderr before "... and N more"
POOL_MIN_PAIRS = 32      # fewer pairs are checked in-process: a pool would cost more than it saves


def png_problem(data: bytes) -> tuple[str, str] | None:
    """(kind, message) if ``data`` is not a complete PNG, else None. Walks the chunks, checking CRCs."""
    if not data:
        return "empty", "empty file (0 bytes)"
    if not data.startswith(PNG_SIGNATURE):
        return "not_png", f"not a PNG file (starts with {data[:8]!r})"
    pos = len(PNG_SIGNATURE)
    while pos + 12 <= len(data):
        length = int.from_bytes(data[pos:pos + 4], "big")
        kind = data[pos + 4:pos + 8]
        end = pos + 12 + length
        if end > len(data):
            return "truncated", (f"truncated PNG: chunk {kind.decode('latin-1')!r} needs {length} bytes, "
                                 "file ends early")
        if zlib.crc32(data[pos + 4:pos + 8 + length]) != int.from_bytes(data[end - 4:end], "big"):
            return "corrupt", f"corrupt PNG: CRC mismatch in chunk {kind.decode('latin-1')!r} at byte {pos}"
        if kind == b"IEND":
            return None
        pos = end
    return "truncated", "truncated PNG: no IEND chunk"


def _decode(data: bytes) -> np.ndarray | None:
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)


def _describe(a: np.ndarray) -> tuple[int, str]:
    channels = 1 if a.ndim == 2 else a.shape[2]
    return channels, {1: "grayscale", 2: "gray+alpha", 3: "RGB", 4: "RGBA"}.get(
        channels, f"{channels}-channel")


def check_pair(task: tuple[str, str, str, tuple[int, int]]) -> dict[str, Any]:
    """Check one pair: (stem, image path, label path, (width, height)) -> problems, image hash,
    NightCity+ flag."""
    stem, image_file, label_file, (w, h) = task
    problems: list[dict[str, Any]] = []

    def bad(file: str, kind: str, message: str) -> None:
        problems.append({"file": file, "kind": kind, "message": message, "stem": stem})

    if not layout.STEM_RE.match(stem):
        bad(image_file, "bad_name", f"name {stem!r} does not follow <City>_<NNNN>")
    img_bytes, lab_bytes = Path(image_file).read_bytes(), Path(label_file).read_bytes()
    digest = hashlib.blake2b(img_bytes, digest_size=16).hexdigest()
    plus = False
    for file, data, what in ((image_file, img_bytes, "image"), (label_file, lab_bytes, "label")):
        broken = png_problem(data)
        if broken:
            bad(file, *broken)
            continue
        a = _decode(data)
        if a is None:
            bad(file, "undecodable", f"{what} PNG cannot be decoded")
            continue
        channels, name = _describe(a)
        if a.dtype != np.uint8:
            bad(file, f"{what}_depth", f"{what} is {a.dtype.itemsize * 8}-bit, expected 8-bit")
        if what == "image" and channels != 3:
            bad(file, "image_channels", f"image has {channels} channel(s) ({name}), expected 3 (RGB)")
        if what == "label" and channels != 1:
            bad(file, "label_channels", f"label has {channels} channels ({name}), expected 1 (labelIds)")
        got = (a.shape[1], a.shape[0])
        if what == "label" and got == (2 * w, 2 * h):
            plus = True   # NightCity+ re-annotation: resized nearest-neighbour when read
        elif got != (w, h):
            allowed = f" (or {2 * w}x{2 * h})" if what == "label" else ""
            bad(file, f"{what}_size", f"{what} is {got[0]}x{got[1]}, expected {w}x{h}{allowed}")
        if what == "label" and a.dtype == np.uint8 and channels == 1:
            unknown = labels.unknown_ids(a)
            if unknown:
                shown = ", ".join(map(str, unknown[:8])) + (" ..." if len(unknown) > 8 else "")
                bad(file, "label_values", f"label has values that are not Cityscapes labelIds: {shown}")
    if any(p["file"] == image_file and p["kind"] in ("empty", "not_png", "truncated", "corrupt")
           for p in problems):
        digest = None   # two broken files are not "duplicates" worth a second line each
    return {"stem": stem, "image": image_file, "problems": problems, "hash": digest, "nightcity_plus": plus}


def validate(root: str | Path, size: tuple[int, int], workers: int = 0) -> dict[str, Any]:
    """Check the whole dataset under ``root`` at image ``size`` = (width, height) px; returns the report."""
    root = Path(root)
    listing = layout.scan(root)   # DataError if the release folders are missing
    problems: list[dict[str, Any]] = []
    for path in listing.orphan_images:
        problems.append({"file": str(path), "kind": "orphan_image", "stem": path.stem,
                         "message": "image has no label "
                                    f"(expected {layout.label_path(root, path.parent.name, path.stem)})"})
    for path in listing.orphan_labels:
        stem = path.name[: -len(layout.LABEL_SUFFIX)]
        problems.append({"file": str(path), "kind": "orphan_label", "stem": stem,
                         "message": "label has no image "
                                    f"(expected {layout.image_path(root, path.parent.name, stem)})"})
    for path in listing.stray_files:
        problems.append({"file": str(path), "kind": "stray_file", "stem": None,
                         "message": "file is neither <City>_<NNNN>.png nor <City>_<NNNN>_labelIds.png"})

    seen: dict[str, layout.Pair] = {}
    for pair in listing.pairs:   # a stem in both train/ and val/ would leak and collide in split lists
        if pair.stem in seen:
            problems.append({"file": str(pair.image), "kind": "duplicate_name", "stem": pair.stem,
                             "message": f"stem also in {seen[pair.stem].split}/ ({seen[pair.stem].image})"})
        seen[pair.stem] = pair

    size = (int(size[0]), int(size[1]))
    tasks = [(p.stem, str(p.image), str(p.label), size) for p in listing.pairs]
    n_proc = min(cpu_workers(workers), len(tasks)) if len(tasks) >= POOL_MIN_PAIRS else 1
    bar = dict(total=len(tasks), desc="validate", unit="pair", disable=None)
    if n_proc <= 1:
        results = [check_pair(t) for t in tqdm(tasks, **bar)]
    else:
        with ProcessPoolExecutor(n_proc) as pool:
            results = list(tqdm(pool.map(check_pair, tasks, chunksize=max(1, len(tasks) // (16 * n_proc))),
                                **bar))

    first_with: dict[str, str] = {}
    for r in results:   # pairs come sorted (split, stem): the later copy is the one reported
        problems += r["problems"]
        if r["hash"] is None:
            continue
        if r["hash"] in first_with:
            problems.append({"file": r["image"], "kind": "duplicate", "stem": r["stem"],
                             "message": f"image has the same content as {first_with[r['hash']]}"})
        else:
            first_with[r["hash"]] = r["image"]

    pair_stems = {p.stem for p in listing.pairs}
    bad_pairs = {p["stem"] for p in problems if p["stem"] in pair_stems}
    return {
        "ok": not problems,
        "root": str(root),
        "image_size": list(size),
        "num_pairs": len(listing.pairs),
        "num_good": sum(p.stem not in bad_pairs for p in listing.pairs),   # what later steps will use
        "num_problems": len(problems),
        "splits": {s: sum(p.split == s for p in listing.pairs) for s in layout.SPLITS},
        "nightcity_plus_labels": sum(r["nightcity_plus"] for r in results),
        "bad_stems": sorted({p["stem"] for p in problems if p["stem"]}),
        "problems": problems,
    }


def format_problems(problems: list[dict[str, Any]], limit: int = MAX_LISTED) -> list[str]:
    """``file: message`` lines for the first ``limit`` problems, then '... and N more'."""
    lines = [f"  {p['file']}: {p['message']}" for p in problems[:limit]]
    if len(problems) > limit:
        lines.append(f"  ... and {len(problems) - limit} more")
    return lines


def _summary(report: dict[str, Any]) -> str:
    plus = report["nightcity_plus_labels"]
    extra = f"; {plus} NightCity+ label(s) at 2x, resized nearest-neighbour when read" if plus else ""
    s = report["splits"]
    return (f"validate: {report['num_good']}/{report['num_pairs']} pairs good "
            f"(train {s['train']}, val {s['val']}) "
            f"at {report['image_size'][0]}x{report['image_size'][1]}{extra}")


def main(args: argparse.Namespace, cfg: Config) -> int:
    report = validate(args.data, tuple(cfg.data.image_size), cfg.data.workers)
    if args.report:
        write_json(args.report, report)
    if args.quarantine:
        with atomic_file(args.quarantine) as fh:
            fh.write(f"# bad pairs found by `egnet data validate {args.data}`; "
                     "later steps skip these stems\n")
            fh.writelines(f"{stem}\n" for stem in report["bad_stems"])
    if report["ok"]:
        print(_summary(report))
        return 0
    print(f"validate: {report['num_problems']} problem(s) in {args.data}:", file=sys.stderr)
    print("\n".join(format_problems(report["problems"])), file=sys.stderr)
    if args.quarantine:
        need = cfg.data.min_good_pairs
        if report["num_good"] >= need:
            print(f"{_summary(report)}; {len(report['bad_stems'])} stem(s) quarantined in {args.quarantine}")
            return 0
        print(f"egnet: error: {args.data}: only {report['num_good']} good pair(s) left after quarantine, "
              f"data.min_good_pairs is {need}", file=sys.stderr)
        return 1
    print(f"egnet: error: {args.data}: {report['num_problems']} problem(s) in {report['num_pairs']} pairs "
          f"(--quarantine FILE sets bad pairs aside)", file=sys.stderr)
    return 1
