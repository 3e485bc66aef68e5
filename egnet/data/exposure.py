"""The one definition of exposure (paper Sec. 3) used by stats, loss and metrics.

Exposure of a pixel = HSV V = max(R, G, B) / 255, in [0, 1]. Ten equal bins
[0, 0.1), [0.1, 0.2), ..., [0.8, 0.9), [0.9, 1.0]; the last bin is closed so
V = 1.0 falls in bin 9. For 8-bit images the bin is computed in integers
(``10 * max(R,G,B) // 255``), so no value lands in the wrong bin through
floating-point rounding.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

NUM_BINS = 10
BIN_EDGES: tuple[tuple[float, float], ...] = tuple((i / 10, (i + 1) / 10) for i in range(NUM_BINS))
BIN_NAMES: tuple[str, ...] = tuple(
    f"[{lo:.1f},{hi:.1f}{']' if i == NUM_BINS - 1 else ')'}" for i, (lo, hi) in enumerate(BIN_EDGES)
)


#: uint8 V -> bin, the integer rule below as a 256-entry table (one lookup pass per image)
BIN_OF_VALUE = np.minimum(np.arange(256) * 10 // 255, NUM_BINS - 1).astype(np.uint8)


def _max_rgb(image: np.ndarray) -> np.ndarray:
    if image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8 and image.flags.c_contiguous:
        # OpenCV's split and max (SIMD): 0.75 vs 0.9 ms per 1024x512 image for NumPy's strided
        # maximum below (benchmarks/bench_metrics.py measures the whole `egnet score` step)
        b, g, r = cv2.split(image)
        return cv2.max(cv2.max(b, g), r)
    # max of three slices: ~30x faster than image.max(axis=2) over the 3-long last axis
    return np.maximum(np.maximum(image[..., 0], image[..., 1]), image[..., 2])


def max_rgb(image: np.ndarray) -> np.ndarray:
    """HxWx3 uint8 (RGB or BGR: max is order-free) -> HxW uint8 V x 255."""
    return _max_rgb(image)


def value_bins(v: np.ndarray) -> np.ndarray:
    """uint8 V x 255 (from :func:`max_rgb`; any shape) -> uint8 bins 0..9 of the same shape."""
    v = np.ascontiguousarray(v)
    return cv2.LUT(v.reshape(-1, 1), BIN_OF_VALUE).reshape(v.shape)


def value_map(image: np.ndarray) -> np.ndarray:
    """HxWx3 uint8 RGB (or BGR: max is order-free) -> HxW float32 V map in [0, 1]."""
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 image, got shape {image.shape}")
    if image.dtype != np.uint8:
        raise ValueError(f"expected uint8, got {image.dtype}")
    return _max_rgb(image).astype(np.float32) / 255.0


def bin_index(image_or_v: np.ndarray) -> np.ndarray:
    """Exposure bin (0..9, uint8) per pixel.

    Accepts an HxWx3 uint8 image (exact integer binning) or a float V map in [0, 1].
    """
    a = np.asarray(image_or_v)
    if a.dtype == np.uint8:
        return value_bins(_max_rgb(a) if a.ndim == 3 else a)
    # float path: round to 1e-9 first so that 0.3 (stored as 0.299999...) lands in bin 3
    scaled = np.floor(np.round(a.astype(np.float64) * 10, 9))
    return np.clip(scaled, 0, NUM_BINS - 1).astype(np.uint8)


def bin_index_torch(images: torch.Tensor, channel_dim: int = -3) -> torch.Tensor:
    """Nx3xHxW (or 3xHxW; HxWx3 with ``channel_dim=-1``) uint8 tensor -> NxHxW (HxW) uint8 bins,
    on the tensor's device (no host copy; the evaluation bins on the GPU)."""
    if images.dtype != torch.uint8:
        raise ValueError(f"expected uint8, got {images.dtype}")
    return value_bins_torch(images.amax(dim=channel_dim))


def value_bins_torch(v: torch.Tensor) -> torch.Tensor:
    """uint8 V x 255 tensor -> uint8 bins 0..9 on its device: 10 v // 255 = 2 v // 51, in int16."""
    bins = torch.div(v.to(torch.int16) * 2, 51, rounding_mode="floor")
    return bins.clamp_(max=NUM_BINS - 1).to(torch.uint8)


def value_map_torch(images: torch.Tensor) -> torch.Tensor:
    """Nx3xHxW float RGB in [0, 1] (un-normalised) -> Nx1xHxW V map, the exposure target."""
    return images.amax(dim=-3, keepdim=True)


def histogram(image: np.ndarray) -> np.ndarray:
    """Pixel count per exposure bin (int64, length 10) of one HxWx3 uint8 image."""
    return np.bincount(bin_index(image).ravel(), minlength=NUM_BINS).astype(np.int64)
