"""The static structure of a synthetic night street, drawn in world metres onto a ``Canvas``.

Lanes, sidewalks, terrain, markings, building fronts with lit windows and shop
signs, walls and fences in the gaps, the sky, and the ignore regions
(ego-vehicle bonnet, unlabelled patches). Sampled once per scene.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from egnet.data.synth.scene import (
    BUILDING,
    ID,
    LANE,
    LED,
    NEAR,
    ROAD,
    SIDEWALK,
    SKY,
    SODIUM,
    TERRAIN,
    VEG,
    Canvas,
    circle,
    tint,
)

FACADE = [(0.35, 0.30, 0.26), (0.25, 0.25, 0.27), (0.40, 0.36, 0.30), (0.20, 0.16, 0.14), (0.30, 0.33, 0.36)]


@dataclass
class Street:
    """Lanes and kerbs in metres (camera at X=0 in its lane), plus what stands where."""

    wl: float                 # road edge left of the camera (m)
    wr: float                 # road edge right of the camera
    sidewalk: tuple[float, float]
    terrain: tuple[float, float]
    z_far: float              # depth of the building row closing the view
    through: bool             # the road continues past z_far
    oncoming: int             # number of oncoming lanes (leftmost)
    nl: int
    nr: int
    parking: bool
    crossing: float | None    # depth of an intersection with traffic lights and a zebra crossing
    gaps: list[tuple[int, float, float]] = field(default_factory=list)   # (side, z0, z1) without buildings

    @classmethod
    def sample(cls, rng: np.random.Generator) -> Street:
        nl, nr = int(rng.integers(0, 4)), int(rng.integers(0, 2))
        parking = bool(rng.random() < 0.35)
        wl = LANE / 2 + LANE * nl + rng.uniform(0, 0.5)
        wr = LANE / 2 + LANE * nr + rng.uniform(0, 0.5) + (2.3 if parking else 0)
        return cls(
            wl=wl, wr=wr,
            sidewalk=(rng.uniform(2, 5), rng.uniform(2, 5)),
            terrain=tuple(rng.uniform(1, 3) if rng.random() < 0.3 else 0.0 for _ in range(2)),
            z_far=rng.uniform(60, 200), through=bool(rng.random() < 0.6),
            oncoming=min(nl, int(rng.integers(1, 3))) if nl else 0, nl=nl, nr=nr, parking=parking,
            crossing=rng.uniform(18, 55) if rng.random() < 0.6 else None,
        )

    def edge(self, side: int) -> float:
        return self.wr if side > 0 else self.wl

    def building_line(self, side: int) -> float:
        i = 0 if side < 0 else 1
        return side * (self.edge(side) + self.sidewalk[i] + self.terrain[i])


def draw_sky(cv: Canvas) -> None:
    rng = cv.rng
    top = np.array([0.01, 0.012, 0.03]) * rng.uniform(0.5, 1.5)
    horizon = np.array(SODIUM if rng.random() < 0.6 else (0.5, 0.55, 0.8)) * rng.uniform(0.06, 0.16)
    t = np.clip(np.arange(cv.h) / max(cv.cy, 1), 0, 1)[:, None] ** 2
    cv.albedo[:] = (top * (1 - t) + horizon * t).astype(np.float32)[:, None, :]
    cv.label[:] = SKY


def _windows(cv: Canvas, to_world, length: float, height: float, colour) -> None:
    """Window grid on a facade given by ``to_world(u, v) -> (N, 3)`` (u along, v up, metres)."""
    rng = cv.rng
    fh, col = rng.uniform(2.8, 3.6), rng.uniform(2.5, 4.5)
    us = np.arange(rng.uniform(0.3, 1.5), length - 1.0, col)
    vs = np.arange(3.2 if rng.random() < 0.5 else 0.9, height - 1.0, fh)
    if len(us) == 0 or len(vs) == 0:
        return
    u, v = np.meshgrid(us, vs)
    u, v = u.ravel(), v.ravel()
    ww, wh = col * rng.uniform(0.35, 0.6), fh * rng.uniform(0.4, 0.6)
    quads = np.stack([to_world(u, v), to_world(u + ww, v), to_world(u + ww, v + wh), to_world(u, v + wh)], 1)
    pts = cv.project(quads.reshape(-1, 3)).reshape(-1, 4, 2)
    lit = rng.random(len(pts)) < rng.uniform(0.05, 0.5)
    glass = np.asarray(colour) * 0.35
    if (~lit).any():
        cv.poly(pts[~lit], BUILDING, glass)
    warm = np.array(SODIUM if rng.random() < 0.7 else LED)
    groups = rng.integers(0, 3, len(pts))
    for g, power in enumerate((0.25, 0.5, 1.0)):
        sel = lit & (groups == g)
        if sel.any():
            cv.poly(pts[sel], BUILDING, glass, emit=warm * power * rng.uniform(0.7, 1.3))
    if rng.random() < 0.35 and length > 4:   # a shop front and a neon sign at street level
        a = rng.uniform(0.3, length - 3.5)
        b = a + rng.uniform(3, min(10, length - a))

        def quad(u0, u1, v0, v1):
            return cv.project(to_world(np.array([u0, u1, u1, u0]), np.array([v0, v0, v1, v1])))

        cv.poly(quad(a, b, 0.3, 2.6), BUILDING, glass, emit=warm * rng.uniform(0.2, 0.8))
        neon = np.array([(1, 0.1, 0.3), (0.2, 0.4, 1), (1, 0.2, 0.9), (0.2, 1, 0.4)][rng.integers(0, 4)])
        c = rng.uniform(a, max(b - 2.0, a + 0.1))
        cv.poly(quad(c, c + rng.uniform(1, 2), 2.9, 3.5), BUILDING, neon * 0.5,
                emit=neon * rng.uniform(1.2, 3.0))


def _facade(cv: Canvas, corners: np.ndarray, to_world, length: float, height: float, px_per_m: float) -> None:
    """A building front (world corners (4, 3)) with windows; ``to_world(u, v)`` maps facade metres
    to world."""
    colour = tint(cv.rng, FACADE[cv.rng.integers(0, len(FACADE))])
    if px_per_m < 1.0:   # windows would be under a pixel: draw the average look of wall and glass
        cv.poly(cv.project(corners), BUILDING, colour * 0.7)
        return
    cv.poly(cv.project(corners), BUILDING, colour)
    _windows(cv, to_world, length, height, colour)


def _facade_side(cv: Canvas, x: float, z0: float, z1: float, height: float) -> None:
    _facade(cv, np.array([(x, 0, z0), (x, height, z0), (x, height, z1), (x, 0, z1)]),
            lambda u, v: np.column_stack([np.full(len(u), x), v, z0 + u]), z1 - z0, height, cv.scale(z0))


def _facade_front(cv: Canvas, x0: float, x1: float, z: float, height: float) -> None:
    _facade(cv, np.array([(x0, 0, z), (x1, 0, z), (x1, height, z), (x0, height, z)]),
            lambda u, v: np.column_stack([x0 + u, v, np.full(len(u), z)]), x1 - x0, height, cv.scale(z))


def draw_far_buildings(cv: Canvas, st: Street) -> None:
    """Rows of fronts closing the view: far behind (3 x z_far) and at z_far (with a gap if the road
    goes on)."""
    rng = cv.rng
    for z, skip_road in ((st.z_far * 3, False), (st.z_far, st.through)):
        x, x_end = -cv.cx * z / cv.f - 10, (cv.w - cv.cx) * z / cv.f + 10   # the visible span at depth z
        while x < x_end:
            w = rng.uniform(8, 25) * max(1.0, z / 150)
            if not (skip_road and x + w > -st.wl - 2 and x < st.wr + 2):
                _facade_front(cv, x, x + w, z, rng.uniform(6, 45))
            x += w


def _ground_quad(cv: Canvas, x0: float, x1: float, z0: float, z1: float, y: float = 0.0) -> np.ndarray:
    return cv.project([(x0, y, z0), (x1, y, z0), (x1, y, z1), (x0, y, z1)])


def draw_ground(cv: Canvas, st: Street) -> None:
    rng = cv.rng
    z_end = st.z_far * (3 if st.through else 1)
    asphalt = tint(rng, (0.18, 0.18, 0.19), 0.3)
    cv.poly(_ground_quad(cv, -st.wl, st.wr, NEAR, z_end), ROAD, asphalt)
    if st.parking:
        cv.poly(_ground_quad(cv, st.wr - 2.3, st.wr, NEAR, st.z_far), ID["parking"], asphalt * 1.15)
    for side in (-1, 1):
        i = 0 if side < 0 else 1
        e, sw, tr = st.edge(side), st.sidewalk[i], st.terrain[i]
        pave = tint(rng, (0.32, 0.30, 0.27), 0.3)
        cv.poly(_ground_quad(cv, side * e, side * (e + sw), NEAR, z_end, 0.15), SIDEWALK, pave)
        kerb = cv.project([(side * e, 0, NEAR), (side * e, 0.15, NEAR), (side * e, 0.15, z_end),
                           (side * e, 0, z_end)])
        cv.poly(kerb, SIDEWALK, pave * 1.3)
        zs = np.arange(NEAR, min(z_end, 80), rng.uniform(1.0, 2.0))
        joints = [_ground_quad(cv, side * e, side * (e + sw), z, z + 0.05, 0.15) for z in zs]
        cv.poly(joints, None, pave * 0.6)
        if tr > 0:
            grass = tint(rng, (0.10, 0.16, 0.06), 0.3)
            cv.poly(_ground_quad(cv, side * (e + sw), side * (e + sw + tr), NEAR, z_end, 0.15), TERRAIN,
                    grass)
    _markings(cv, st, z_end)


def _markings(cv: Canvas, st: Street, z_end: float) -> None:
    rng = cv.rng
    paint = np.array([0.75, 0.75, 0.72]) * rng.uniform(0.5, 1.0)
    dashes, dash, gap = [], rng.uniform(2, 4), rng.uniform(5, 9)
    centre = -LANE / 2 - LANE * (st.nl - st.oncoming)
    boundaries = [-LANE / 2 - LANE * i for i in range(st.nl)] + [LANE / 2 + LANE * i for i in range(st.nr)]
    for xb in boundaries:
        if st.oncoming and abs(xb - centre) < 1e-6:
            for off in (-0.12, 0.12):
                dashes.append(_ground_quad(cv, xb + off - 0.06, xb + off + 0.06, NEAR, z_end))
            continue
        for z in np.arange(NEAR + rng.uniform(0, gap), min(z_end, 150), dash + gap):
            dashes.append(_ground_quad(cv, xb - 0.07, xb + 0.07, z, z + dash))
    if st.crossing is not None:
        for x in np.arange(-st.wl + 0.3, st.wr - 0.5, 1.0):
            dashes.append(_ground_quad(cv, x, x + 0.5, st.crossing - 4.5, st.crossing - 1.5))
    if dashes:
        yellow = np.array([0.8, 0.6, 0.1]) * rng.uniform(0.5, 1.0)
        cv.poly(dashes, None, paint if rng.random() < 0.6 else yellow)


def draw_facades(cv: Canvas, st: Street, side: int) -> None:
    """Building fronts along one side, with occasional gaps (terrain, a wall, a building set back)."""
    rng = cv.rng
    x = st.building_line(side)
    segments, z = [], NEAR
    while z < st.z_far:
        z1 = min(z + rng.uniform(8, 35), st.z_far)
        segments.append((z, z1, rng.random() < 0.15))
        z = z1
    for z0, z1, gap in segments:       # set-back buildings first: nearer fronts occlude them
        if gap:
            st.gaps.append((side, z0, z1))
            cv.poly(_ground_quad(cv, x, side * 60, z0, z1), TERRAIN, tint(rng, (0.10, 0.15, 0.06)))
            _facade_side(cv, side * 60, z0, z1, rng.uniform(10, 50))
    for z0, z1, gap in reversed(segments):
        if not gap:
            _facade_side(cv, x, z0, z1, rng.uniform(6, 40))
        else:
            kind = "wall" if rng.random() < 0.6 else "fence"
            hw = rng.uniform(1.0, 2.5)
            if kind == "wall":
                quad = cv.project([(x, 0, z0), (x, hw, z0), (x, hw, z1), (x, 0, z1)])
                cv.poly(quad, ID["wall"], tint(rng, (0.35, 0.33, 0.3)))
            else:
                fence(cv, x, z0, z1, hw)


def fence(cv: Canvas, x: float, z0: float, z1: float, height: float) -> None:
    """Bars and rails along Z at lateral position x (label fence, gaps show what is behind)."""
    bars = [cv.project([(x, 0, z), (x, height, z), (x, height, z + 0.05), (x, 0, z + 0.05)])
            for z in np.arange(z0, z1, 0.3)]
    for y in (0.1, height - 0.08):
        bars.append(cv.project([(x, y, z0), (x, y + 0.08, z0), (x, y + 0.08, z1), (x, y, z1)]))
    cv.poly(bars, ID["fence"], tint(cv.rng, (0.2, 0.2, 0.22)))


def draw_ignore_regions(cv: Canvas) -> None:
    """Ego-vehicle bonnet (labelId 1) and an unlabelled patch (0) where annotators left a dark area."""
    rng, w, h = cv.rng, cv.w, cv.h
    if rng.random() < 0.4:
        depth = h * rng.uniform(0.05, 0.12)
        pts = np.column_stack([w / 2 + circle(40)[:, 0] * w * 0.8,
                               h + circle(40)[:, 1] * depth * 1.6 + depth * 0.6])
        cv.poly(pts, ID["ego vehicle"], tint(rng, (0.05, 0.05, 0.06)))
    if rng.random() < 0.4:   # only over background classes, as annotators skip dark clutter, not cars
        cx, cy = rng.uniform(0.1, 0.9) * w, rng.uniform(0.3, 0.6) * h
        pts = circle(8) * (rng.uniform(0.03, 0.08) * w, rng.uniform(0.03, 0.08) * h) + (cx, cy)
        blob = np.zeros_like(cv.label)
        cv2.fillPoly(blob, [np.round(pts * 8).astype(np.int32)], 1, cv2.LINE_8, 3)
        cv.label[(blob == 1) & np.isin(cv.label, (BUILDING, VEG, TERRAIN))] = ID["unlabeled"]
