"""Synthetic night street scenes written exactly as the NightCity release is laid out.

    egnet data synth --out DIR [--num N] [--seed S] [--size 1024x512]

The real NightCity cannot be downloaded here, so the demo and the tests use
procedural scenes (``scene``: camera, layers, lighting; ``street``:
structure; ``objects``: things in the street): road, sidewalk,
buildings with lit windows, sky, vegetation, terrain, walls, fences, poles with
street lamps, traffic lights and signs, cars/trucks/buses with head and tail
lights, motorcycles, bicycles, persons and riders, plus ignore regions
(ego vehicle, unlabelled, static). Images are dark with blooms around lights
and sensor noise, so their exposure histogram has the shape of the paper's
Fig. 4.

Scene ``i`` is drawn from its own generator seeded with ``(seed, i)``, so the
bytes written depend only on (seed, i, size), never on the process-pool size.
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from egnet.core.config import Config
from egnet.core.errors import ConfigError
from egnet.core.files import atomic_dir, cpu_workers
from egnet.data import labels
from egnet.data.exposure import NUM_BINS, histogram
from egnet.data.layout import IMAGES_DIR, LABELS_DIR, SPLITS, image_path, label_path, write_png
from egnet.data.synth.objects import place_objects
from egnet.data.synth.scene import Canvas, finish
from egnet.data.synth.street import (
    Street,
    draw_facades,
    draw_far_buildings,
    draw_ground,
    draw_ignore_regions,
    draw_sky,
)

CITIES = ("Chicago", "Tokyo", "Shanghai", "Hamburg", "Toronto", "LasVegas", "HongKong", "London")
MIN_SIZE = (32, 16)
MAX_SCENES = 10_000  # <City>_<NNNN>: four digits
SMALL_JOB_PIXELS = 4_000_000


def render_scene(rng: np.random.Generator, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """One scene -> (HxWx3 uint8 RGB image, HxW uint8 labelIds); deterministic for the generator state."""
    cv = Canvas(width, height, rng)
    street = Street.sample(rng)
    draw_sky(cv)
    draw_far_buildings(cv, street)
    draw_ground(cv, street)
    for side in (-1, 1):
        draw_facades(cv, street, side)
    for _, draw in sorted(place_objects(cv, street), key=lambda item: -item[0]):
        draw(cv)   # painter's algorithm: far to near
    draw_ignore_regions(cv)
    return finish(cv), cv.label


def scene_name(seed: int, index: int) -> tuple[str, np.random.Generator]:
    """Stem ``<City>_<NNNN>`` of scene ``index`` and the generator that draws it."""
    rng = np.random.default_rng((seed, 1, index))
    return f"{CITIES[int(rng.integers(len(CITIES)))]}_{index:04d}", rng


def split_of(num: int, seed: int, val_fraction: float) -> list[str]:
    """Release folder (train|val) per scene: round(num * val_fraction) val scenes, at least one
    of each when num >= 2, chosen by a permutation seeded with ``seed``."""
    n_val = round(num * val_fraction)
    if num >= 2:
        n_val = min(max(n_val, 1), num - 1)
    order = np.random.default_rng((seed, 2)).permutation(num)
    val = set(order[:n_val].tolist())
    return ["val" if i in val else "train" for i in range(num)]


def _make_one(task: tuple[Path, int, int, tuple[int, int], str]) -> dict[str, Any]:
    root, seed, index, (w, h), split = task
    stem, rng = scene_name(seed, index)
    image, label = render_scene(rng, w, h)
    write_png(image_path(root, split, stem), image)
    write_png(label_path(root, split, stem), label, rgb=False)
    return {
        "split": split,
        "exposure": histogram(image),
        "class_pixels": np.bincount(labels.to_train_ids(label).ravel(), minlength=256)[: labels.NUM_CLASSES],
    }


def synthesize(
    out: str | Path,
    num: int,
    seed: int,
    size: tuple[int, int] = (1024, 512),
    val_fraction: float = 0.3023,
    workers: int = 0,
) -> dict[str, Any]:
    """Write ``num`` scenes of ``size`` = (width, height) px under ``out`` (replaced atomically).

    Returns a summary: scenes per split, seconds taken, the exposure share per bin
    (fractions of all pixels, bins low to high) and the class names present.
    """
    w, h = size
    if not 1 <= num <= MAX_SCENES:
        raise ConfigError(f"synth: --num must be in 1..{MAX_SCENES}, got {num}")
    if w < MIN_SIZE[0] or h < MIN_SIZE[1]:
        raise ConfigError(f"synth: --size {w}x{h} is too small (at least {MIN_SIZE[0]}x{MIN_SIZE[1]})")
    if seed < 0:
        raise ConfigError(f"synth: --seed must be >= 0, got {seed}")
    if not 0 <= val_fraction < 1:
        raise ConfigError(f"synth: val_fraction must be in [0, 1), got {val_fraction}")
    start = time.perf_counter()
    splits = split_of(num, seed, val_fraction)
    exposure = np.zeros(NUM_BINS, np.int64)
    class_pixels = np.zeros(labels.NUM_CLASSES, np.int64)
    with atomic_dir(out) as tmp:
        for split in SPLITS:
            (tmp / IMAGES_DIR / split).mkdir(parents=True)
            (tmp / LABELS_DIR / split).mkdir(parents=True)
        tasks = [(tmp, seed, i, (w, h), splits[i]) for i in range(num)]
        # a pool costs more than it saves on a few small scenes (the test fixtures)
        n_proc = min(cpu_workers(workers), num) if num * w * h >= SMALL_JOB_PIXELS else 1
        bar = dict(total=num, desc="synth", unit="scene", disable=None)
        if n_proc <= 1:
            results = [_make_one(t) for t in tqdm(tasks, **bar)]
        else:
            with ProcessPoolExecutor(n_proc) as pool:
                results = list(tqdm(pool.map(_make_one, tasks, chunksize=max(1, num // (8 * n_proc))), **bar))
        for r in results:
            exposure += r["exposure"]
            class_pixels += r["class_pixels"]
    total = max(int(exposure.sum()), 1)
    return {
        "out": str(out),
        "num": num,
        "train": splits.count("train"),
        "val": splits.count("val"),
        "size": [w, h],
        "seed": seed,
        "seconds": round(time.perf_counter() - start, 2),
        "exposure_fraction": [round(int(c) / total, 5) for c in exposure],
        "classes": [labels.CLASS_NAMES[i] for i in np.flatnonzero(class_pixels)],
    }


def main(args: argparse.Namespace, cfg: Config) -> int:
    num = args.num if args.num is not None else cfg.data.synth_num
    seed = args.seed if args.seed is not None else cfg.data.synth_seed
    size = tuple(args.size) if args.size is not None else tuple(cfg.data.image_size)
    s = synthesize(args.out, num, seed, size, cfg.data.synth_val_fraction, cfg.data.workers)
    print(f"synth: {s['num']} scenes (train {s['train']}, val {s['val']}) at {size[0]}x{size[1]}, "
          f"seed {seed}, "
          f"{len(s['classes'])}/{labels.NUM_CLASSES} classes -> {args.out} in {s['seconds']:.1f} s")
    return 0
