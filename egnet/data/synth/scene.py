"""Render one procedural night street scene: an 8-bit RGB image and its Cityscapes labelIds.

A pinhole camera (height ~1.5 m, horizon near mid-image) looks down a street in
world metres (X right, Y up, Z forward). Everything is drawn far to near
(painter's algorithm) into three layers at once with the same polygons, so the
label map and the image agree pixel for pixel:

- ``label``: labelIds (uint8);
- ``albedo``: surface colour, later multiplied by an illumination map (dark
  ambient plus light pools under street lamps and in front of headlights);
- ``emit``: light sources (lamp heads, headlights, tail lights, traffic lights,
  lit windows); values above 1 saturate and bloom.

Then: per-class texture noise, bloom (Gaussian blurs of the emission at quarter
resolution), a slight lens blur and sensor noise (read + shot). Most pixels end
dark (V < 0.2) with over-exposed blooms around lights: the shape of the paper's
Fig. 4. Classes are told apart by shape, position, texture and colour, never by
one pixel value: colours vary per instance and noise covers everything.
"""

from __future__ import annotations

import cv2
import numpy as np
from cityscapesscripts.helpers.labels import name2label

ID = {name: name2label[name].id for name in (
    "unlabeled", "ego vehicle", "rectification border", "static", "road", "sidewalk", "parking",
    "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation", "terrain",
    "sky", "person", "rider", "car", "truck", "bus", "motorcycle", "bicycle")}
SKY, ROAD, SIDEWALK, BUILDING = ID["sky"], ID["road"], ID["sidewalk"], ID["building"]
VEG, TERRAIN, POLE, PERSON = ID["vegetation"], ID["terrain"], ID["pole"], ID["person"]

NEAR = 1.5          # m: near clipping depth; keeps projected coordinates bounded
SHIFT = 3           # sub-pixel bits for cv2.fillPoly: 1/8 px vertex precision
LANE = 3.3          # m: lane width

# Texture amplitude per labelId: fine grain (2 px) and coarse blotches (stains, clouds, foliage clumps).
FINE = np.full(256, 0.08, np.float32)
COARSE = np.full(256, 0.10, np.float32)
for _name, _f, _c in (("road", 0.12, 0.18), ("sidewalk", 0.12, 0.15), ("building", 0.10, 0.22),
                      ("vegetation", 0.55, 0.35), ("terrain", 0.40, 0.30), ("sky", 0.02, 0.25),
                      ("wall", 0.20, 0.20), ("car", 0.04, 0.08), ("parking", 0.18, 0.3)):
    FINE[ID[_name]], COARSE[ID[_name]] = _f, _c

SODIUM, LED = (1.0, 0.72, 0.38), (0.85, 0.92, 1.0)


class Canvas:
    """The three layers plus the camera; every draw call paints label, albedo and emission together."""

    def __init__(self, w: int, h: int, rng: np.random.Generator) -> None:
        self.w, self.h, self.rng = w, h, rng
        self.f = w * rng.uniform(0.8, 1.0)            # px: ~55-65 deg horizontal field of view
        self.cx = w * rng.uniform(0.44, 0.56)
        self.cy = h * rng.uniform(0.40, 0.50)         # horizon row
        self.hc = rng.uniform(1.3, 1.7)               # m: camera height (dashcam)
        self.label = np.zeros((h, w), np.uint8)
        self.albedo = np.zeros((h, w, 3), np.float32)
        self.emit = np.zeros((h, w, 3), np.float32)
        self.qh, self.qw = max(h // 4, 2), max(w // 4, 2)
        ambient = rng.uniform(0.08, 0.26)
        self.light = np.full((self.qh, self.qw), ambient, np.float32)   # illumination, quarter res

    # --- geometry --------------------------------------------------------
    def project(self, pts: np.ndarray) -> np.ndarray:
        """(N, 3) world X, Y, Z in metres -> (N, 2) pixel x, y."""
        p = np.asarray(pts, np.float64).reshape(-1, 3)
        z = np.maximum(p[:, 2], NEAR)
        return np.stack([self.cx + self.f * p[:, 0] / z, self.cy + self.f * (self.hc - p[:, 1]) / z], 1)

    def face(self, x0: float, z: float, uv: np.ndarray) -> np.ndarray:
        """A flat shape facing the camera: (N, 2) offsets (u right, v up) in metres at (x0, z)."""
        uv = np.asarray(uv, np.float64).reshape(-1, 2)
        return self.project(np.column_stack([x0 + uv[:, 0], uv[:, 1], np.full(len(uv), z)]))

    def scale(self, z: float) -> float:
        """Pixels per metre at depth z."""
        return self.f / max(z, NEAR)

    # --- drawing ---------------------------------------------------------
    def poly(self, pts: np.ndarray | list[np.ndarray], label: int | None, colour, emit=None) -> None:
        """Fill polygon(s) (px: (k, 2), (n, k, 2) or a list); ``label=None`` paints the image only
        (markings)."""
        if isinstance(pts, np.ndarray):   # one (k, 2) polygon or a stack (n, k, 2): round all at once
            ip = list(np.round(pts.reshape(-1, *pts.shape[-2:]) * (1 << SHIFT)).astype(np.int32))
        else:
            ip = [np.round(np.asarray(p) * (1 << SHIFT)).astype(np.int32) for p in pts]
        if label is not None:
            cv2.fillPoly(self.label, ip, int(label), cv2.LINE_8, SHIFT)
        cv2.fillPoly(self.albedo, ip, tuple(float(c) for c in colour), cv2.LINE_8, SHIFT)
        # an opaque surface hides the light sources behind it
        cv2.fillPoly(self.emit, ip, tuple(float(c) for c in (emit if emit is not None else (0, 0, 0))),
                     cv2.LINE_8, SHIFT)

    def glow(self, pts: np.ndarray, colour, strength: float) -> None:
        """Add emission (a light source) without changing labels or albedo."""
        tmp = np.zeros_like(self.emit)
        ip = np.round(np.asarray(pts) * (1 << SHIFT)).astype(np.int32)
        cv2.fillPoly(tmp, [ip], tuple(float(c) * strength for c in colour), cv2.LINE_8, SHIFT)
        np.maximum(self.emit, tmp, out=self.emit)

    def pool(self, x: float, y: float, ax: float, ay: float, amp: float) -> None:
        """Add an elliptical Gaussian light pool (image px centre/semi-axes) to the illumination."""
        s = self.qw / self.w
        ax, ay, xq, yq = max(ax * s, 0.7), max(ay * s, 0.7), x * s, y * s
        # separable, and only within 5 sigma (beyond, exp(-12.5) changes no grey level)
        x0, x1 = max(int(xq - 5 * ax), 0), min(int(xq + 5 * ax) + 2, self.qw)
        y0, y1 = max(int(yq - 5 * ay), 0), min(int(yq + 5 * ay) + 2, self.qh)
        if x0 >= x1 or y0 >= y1:
            return
        gx = np.exp(-0.5 * ((np.arange(x0, x1, dtype=np.float32) - xq) / ax) ** 2)
        gy = np.exp(-0.5 * ((np.arange(y0, y1, dtype=np.float32) - yq) / ay) ** 2)
        self.light[y0:y1, x0:x1] += np.float32(amp) * np.outer(gy, gx).astype(np.float32)

    def ground_pool(self, x: float, z: float, r: float, amp: float, rz: float | None = None) -> None:
        """Light on the ground around world (x, 0, z), radius r (m) across and rz (m) along the road."""
        rz = rz or r
        if z + rz < NEAR:
            return
        (px, py), = self.project([(x, 0, z)])
        _, y_far = self.project([(x, 0, z + rz)])[0]
        _, y_near = self.project([(x, 0, max(z - rz, NEAR))])[0]
        self.pool(px, (y_far + y_near) / 2 if z < 3 * rz else py, r * self.scale(z),
                  max((y_near - y_far) / 2, 1), amp)


def circle(n: int = 16) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.column_stack([np.cos(t), np.sin(t)])


def tint(rng: np.random.Generator, base, spread: float = 0.25) -> np.ndarray:
    """A per-instance colour: ``base`` scaled and hue-jittered, so no class has one colour."""
    c = np.asarray(base, np.float32) * rng.uniform(1 - spread, 1 + spread) * rng.uniform(0.85, 1.15, 3)
    return np.clip(c, 0, 1)


def _noise(rng: np.random.Generator, h: int, w: int, cell: int) -> np.ndarray:
    """Smooth zero-mean noise with features about ``cell`` px across (bilinear upsampled grid)."""
    gh, gw = max(h // cell, 1) + 1, max(w // cell, 1) + 1
    return cv2.resize(rng.standard_normal((gh, gw), dtype=np.float32), (w, h), interpolation=cv2.INTER_LINEAR)


def finish(cv: Canvas) -> np.ndarray:
    """Texture, lighting, bloom, lens blur and sensor noise -> uint8 RGB."""
    rng, h, w = cv.rng, cv.h, cv.w
    k = cv.label
    fine = _noise(rng, h, w, 2) * 1.4
    coarse = _noise(rng, h, w, max(w // 40, 4))
    tex = 1.0 + FINE[k] * fine + COARSE[k] * coarse
    albedo = cv.albedo * np.clip(tex, 0.2, 2.0)[..., None]

    light = cv2.resize(cv2.GaussianBlur(cv.light, (0, 0), 1.5), (w, h), interpolation=cv2.INTER_LINEAR)
    light[k == SKY] = 1.0  # the sky is its own radiance (city glow), not a lit surface
    rad = albedo * light[..., None] + np.minimum(cv.emit, 1.6)

    # bloom: glare around bright sources spills over whatever class lies next to them
    s = w / 1024
    # only sources that saturate the sensor glare; a lit window (< 1) does not
    _, hot = cv2.threshold(cv.emit, 1.0, 0, cv2.THRESH_TOZERO)   # per channel: fast on 3-channel float
    src = cv2.resize(hot, (cv.qw, cv.qh), interpolation=cv2.INTER_AREA)
    bloom = np.zeros_like(src)
    for sigma, weight in ((1.0, 1.2), (3.5, 0.9), (10.0, 0.6)):
        bloom += weight * cv2.GaussianBlur(src, (0, 0), max(sigma * s, 0.4))
    rad += cv2.resize(bloom, (w, h), interpolation=cv2.INTER_LINEAR) * rng.uniform(0.8, 1.3)

    rad = cv2.GaussianBlur(rad, (3, 3), rng.uniform(0.4, 0.8))   # lens softness
    np.maximum(rad, 0, out=rad)
    read, shot = rng.uniform(0.006, 0.018), rng.uniform(0.015, 0.035)
    # unit-variance uniform noise: 4x cheaper to draw than Gaussian, the same after 8-bit rounding
    unit = (rng.random(rad.shape, dtype=np.float32) - 0.5) * np.float32(12 ** 0.5)
    rad += unit * (read + shot * np.sqrt(rad))
    return np.clip(rad * 255 + 0.5, 0, 255).astype(np.uint8)
