"""Hand-made datasets in the release layout, for tests that need pixel values they control."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from egnet.data import layout
from tests.support import PARAMS

#: labelIds drawn by ``make_dataset``: road, sidewalk, building, pole, car, person, sky, bicycle, void
LABEL_IDS = (7, 8, 11, 17, 26, 24, 23, 33, 0)


def write_pair(root: Path, split: str, stem: str, image: np.ndarray, label: np.ndarray) -> layout.Pair:
    """Write an RGB image and a labelIds map as one pair of the release layout."""
    ip, lp = layout.image_path(root, split, stem), layout.label_path(root, split, stem)
    ip.parent.mkdir(parents=True, exist_ok=True)
    lp.parent.mkdir(parents=True, exist_ok=True)
    layout.write_png(ip, image)
    layout.write_png(lp, label, rgb=False)
    return layout.Pair(stem, split, ip, lp)


def random_pair(rng: np.random.Generator, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """A dark-ish random image (brightness varies per image) and a blocky random label map."""
    w, h = size
    scale = rng.uniform(0.15, 1.0)
    image = (rng.integers(0, 256, (h, w, 3)) * scale).astype(np.uint8)
    blocks = rng.choice(LABEL_IDS, size=(h // 8 + 1, w // 8 + 1))
    label = np.kron(blocks, np.ones((8, 8), dtype=np.int64))[:h, :w].astype(np.uint8)
    return image, label


def make_dataset(root: Path, num: int, size: tuple[int, int] = (64, 32), seed: int = 0,
                 val_every: int = 3) -> list[layout.Pair]:
    """``num`` random pairs; every ``val_every``-th one goes to ``val/``."""
    rng = np.random.default_rng(seed)
    pairs = []
    for i in range(num):
        split = "val" if i % val_every == 0 else "train"
        pairs.append(write_pair(root, split, f"Town_{i:04d}", *random_pair(rng, size)))
    return pairs


def data_args(*extra: str, size: tuple[int, int] = (64, 32)) -> list[str]:
    """``extra`` then the repo's params.yaml and ``size`` as the image size: a data step on these datasets."""
    return [*extra, "--params", str(PARAMS), "--set", f"data.image_size=[{size[0]},{size[1]}]"]
