"""Per-image evidence of an evaluation: the paper-protocol pixel counts of every test image.

`egnet evaluate` writes ``per_image_counts.npz`` beside ``metrics.json`` (and logs it into
the run under ``evaluation/``), so a later comparison can resample test images without
running the network again (the promotion gate's paired bootstrap, `egnet report --vs`).

File (NumPy ``.npz``, compressed, no pickled objects):

- ``counts``: int32 [images, 10, C, C+1]: per image, exposure bin, gt class (rows),
  predicted class (columns) then not-a-class; summed over images it is ``confusion.npy``.
  int32 holds any count of one image (at most its pixel count).
- ``stems``: the images' stems, in the test list's order (the pairing key).
- ``classes``, ``bins``: class and exposure-bin names, for readers without egnet.

Dense and compressed: most cells are zero (a class is confused with a few others), and
zlib squeezes the zero runs; docs/registry.md gives the size for 1,299 NightCity images.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from egnet.core.errors import DataError
from egnet.core.files import atomic_file
from egnet.data.exposure import BIN_NAMES, NUM_BINS
from egnet.data.labels import CLASS_NAMES

PER_IMAGE_COUNTS_FILE = "per_image_counts.npz"


@dataclass(frozen=True)
class PerImageCounts:
    """``counts`` [images, 10, C, C+1] (integers) of the images ``stems``, in that order."""

    stems: list[str]
    counts: np.ndarray

    def __post_init__(self) -> None:
        c = self.counts
        n = len(self.stems)
        if c.ndim != 4 or c.shape[0] != n or c.shape[1] != NUM_BINS or c.shape[3] != c.shape[2] + 1:
            raise ValueError(f"per-image counts of shape {tuple(c.shape)} for {n} stems: expected "
                             f"[{n}, {NUM_BINS}, C, C+1]")
        if len(set(self.stems)) != len(self.stems):
            raise ValueError("per-image counts: stems repeat")

    @property
    def num_images(self) -> int:
        return len(self.stems)

    def total(self) -> np.ndarray:
        """[10, C, C+1] int64: the dataset's counts (what metrics.json was computed from)."""
        return self.counts.sum(axis=0, dtype=np.int64)

    def aligned_to(self, stems: list[str]) -> PerImageCounts:
        """The same counts in the order of ``stems`` (the same set of images); ValueError otherwise."""
        if stems == self.stems:
            return self
        where = {s: i for i, s in enumerate(self.stems)}
        if len(stems) != len(where) or any(s not in where for s in stems):
            raise ValueError("not the same test images")
        return PerImageCounts(list(stems), self.counts[[where[s] for s in stems]])


def write_per_image(path: str | Path, data: PerImageCounts) -> None:
    """Write ``data`` to ``path`` (atomically; int32 counts, compressed)."""
    if data.counts.size and (data.counts.min() < 0 or data.counts.max() > np.iinfo(np.int32).max):
        raise ValueError("per-image counts must lie in 0..2**31-1")
    buf = io.BytesIO()
    np.savez_compressed(buf, counts=data.counts.astype(np.int32, copy=False),
                        stems=np.array(data.stems, dtype=str),
                        classes=np.array(CLASS_NAMES[:data.counts.shape[2]]), bins=np.array(BIN_NAMES))
    with atomic_file(Path(path), "wb") as fh:
        fh.write(buf.getvalue())


def read_per_image(path: str | Path) -> PerImageCounts:
    """Read a ``per_image_counts.npz``; DataError naming the file when it is not one."""
    try:
        with np.load(Path(path), allow_pickle=False) as z:
            counts, stems = z["counts"], [str(s) for s in z["stems"]]
    except (OSError, ValueError, KeyError) as exc:
        raise DataError(f"{path}: not a per-image counts file ({str(exc).splitlines()[0][:120]})") from None
    try:
        return PerImageCounts(stems, counts)
    except ValueError as exc:
        raise DataError(f"{path}: {exc}") from None
