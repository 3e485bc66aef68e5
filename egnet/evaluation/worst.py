"""Per-image scores of an evaluation, and the worst images kept as small panels for review.

`egnet evaluate` feeds :class:`WorstImages` every test image; ``per_image.json`` and
``worst/`` become part of the evaluation's outputs, which `egnet report` shows as a gallery.
"""

from __future__ import annotations

import heapq
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from egnet.core.errors import DataError
from egnet.core.files import write_json
from egnet.data.labels import NUM_CLASSES, colorize

PER_IMAGE_FILE = "per_image.json"
WORST_DIR = "worst"
#: gallery panels are shrunk to this width (px): the report embeds them, 4 per image
GALLERY_WIDTH = 480


def image_scores(pred: Any, target: Any, num_classes: int = NUM_CLASSES) -> dict[str, Any]:
    """mIoU and pixel accuracy of one image (HxW trainIds, 255 = ignore; numpy or torch), from the
    one metrics definition; None where the image has no labelled pixel. (`egnet evaluate` passes
    the counts it already has to :meth:`WorstImages.add` instead: one counting pass per image.)"""
    import torch

    from egnet.metrics import ExposureConfusion
    from egnet.metrics import image_scores as from_counts

    p, t = torch.as_tensor(np.asarray(pred) if not torch.is_tensor(pred) else pred), torch.as_tensor(target)
    acc = ExposureConfusion(num_classes, p.device)
    counts = acc.count(p, t.to(p.device), torch.zeros(p.shape, dtype=torch.uint8, device=p.device))
    return from_counts(counts.cpu().numpy())


def _shrink(a: np.ndarray, nearest: bool = False) -> np.ndarray:
    h, w = a.shape[:2]
    if w <= GALLERY_WIDTH:
        return a
    size = (GALLERY_WIDTH, max(1, round(h * GALLERY_WIDTH / w)))
    return cv2.resize(a, size, interpolation=cv2.INTER_NEAREST if nearest else cv2.INTER_AREA)


class WorstImages:
    """Per-image scores of every evaluated image, and the ``k`` lowest-mIoU ones kept as small panels.

    `egnet evaluate` calls :meth:`add` once per test image with the paper-protocol prediction
    and :meth:`write` into its output dir: ``per_image.json`` and
    ``worst/<rank>_<stem>_{input,gt,pred,exposure}.{jpg,png}`` (panels GALLERY_WIDTH px wide).
    """

    def __init__(self, k: int, num_classes: int = NUM_CLASSES) -> None:
        self.k, self.num_classes = int(k), num_classes
        self.images: list[dict[str, Any]] = []
        self._heap: list[tuple[float, int, str, dict[str, np.ndarray]]] = []  # (-mIoU, seq, stem, panels)

    def add(self, stem: str, image: np.ndarray, target: Any, pred: Any, exposure: Any = None, *,
            counts: np.ndarray | None = None, mean_exposure: float | None = None) -> dict[str, Any]:
        """Score one image: ``image`` HxWx3 uint8 RGB, ``target``/``pred`` HxW trainIds, ``exposure``
        the predicted HxW V map in [0, 1] (float) or V x 255 (uint8), or None. ``counts``: the
        image's [10, C, C+1] pixel counts when the caller has them (else counted here);
        ``mean_exposure``: its mean V when known. Returns its per_image.json entry. The panels
        kept are copies: the arrays passed in may be reused by the caller."""
        from egnet.data.exposure import max_rgb
        from egnet.metrics import image_scores as from_counts

        scores = from_counts(counts) if counts is not None else image_scores(pred, target, self.num_classes)
        if mean_exposure is None:
            mean_exposure = float(cv2.mean(max_rgb(image))[0] / 255.0)
        entry = {"stem": stem, **scores, "mean_exposure": float(mean_exposure)}
        self.images.append(entry)
        miou = scores["mIoU"]
        if miou is None or self.k <= 0 or (len(self._heap) == self.k and -self._heap[0][0] <= miou):
            return entry
        as_np = lambda a: a.detach().cpu().numpy() if hasattr(a, "detach") else np.asarray(a)  # noqa: E731
        panels = {"input": _shrink(image).copy(),
                  "gt": colorize(_shrink(as_np(target).astype(np.uint8), True)),
                  "pred": colorize(_shrink(as_np(pred).astype(np.uint8), True))}
        if exposure is not None:
            e = as_np(exposure)
            e8 = e if e.dtype == np.uint8 else (np.clip(e.astype(np.float32), 0, 1) * 255).astype(np.uint8)
            panels["exposure"] = _shrink(e8).copy()
        item = (-miou, len(self.images), stem, panels)
        if len(self._heap) < self.k:
            heapq.heappush(self._heap, item)
        else:
            heapq.heapreplace(self._heap, item)
        return entry

    def write(self, out: str | Path) -> None:
        """``per_image.json`` and the ``worst/`` panels into ``out``."""
        out = Path(out)
        (out / WORST_DIR).mkdir(parents=True, exist_ok=True)
        worst = []
        for rank, (neg, _, stem, panels) in enumerate(sorted(self._heap, key=lambda x: (-x[0], x[1])), 1):
            files = {}
            for name, a in panels.items():
                fname = f"{WORST_DIR}/{rank:02d}_{stem}_{name}.{'png' if name in ('gt', 'pred') else 'jpg'}"
                bgr = cv2.cvtColor(a, cv2.COLOR_RGB2BGR) if a.ndim == 3 else a
                if not cv2.imwrite(str(out / fname), bgr):
                    raise DataError(f"{out / fname}: could not write")
                files[name] = fname
            worst.append({"rank": rank, "stem": stem, "mIoU": -neg, "files": files})
        write_json(out / PER_IMAGE_FILE, {"num_images": len(self.images), "k": self.k, "worst": worst,
                                          "images": self.images})
