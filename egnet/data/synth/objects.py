"""The things standing in a synthetic night street, each drawn in world metres onto a ``Canvas``.

Lamps, trees, signs, traffic lights, vehicles with head and tail lights,
motorcycles, bicycles, pedestrians, riders and bins. ``place_objects`` returns
them with their depth so the scene draws them far to near.
"""

from __future__ import annotations

from functools import partial

import cv2
import numpy as np

from egnet.data.synth.scene import ID, LANE, LED, NEAR, PERSON, POLE, SODIUM, VEG, Canvas, circle, tint
from egnet.data.synth.street import Street, fence

CLOTHES = [(0.05, 0.05, 0.06), (0.30, 0.05, 0.05), (0.08, 0.12, 0.35), (0.55, 0.55, 0.5), (0.25, 0.22, 0.12),
           (0.05, 0.2, 0.1), (0.4, 0.3, 0.05), (0.15, 0.15, 0.18)]
PAINT = [(0.55, 0.55, 0.55), (0.05, 0.05, 0.06), (0.45, 0.05, 0.04), (0.06, 0.12, 0.35), (0.6, 0.6, 0.62),
         (0.2, 0.22, 0.24), (0.5, 0.42, 0.25), (0.1, 0.25, 0.12)]


def _lamp(cv: Canvas, x: float, z: float, side: int, colour, power: float) -> None:
    rng = cv.rng
    h, arm = rng.uniform(6.5, 9), rng.uniform(0.8, 2.5)
    metal = tint(rng, (0.2, 0.2, 0.22))
    ax = x - side * arm
    cv.poly(cv.face(x, z, [(-0.1, 0), (0.1, 0), (0.07, h), (-0.07, h)]), POLE, metal)
    cv.poly(cv.face(0, z, [(x, h - 0.12), (ax, h + 0.1), (ax, h), (x, h - 0.22)]), POLE, metal)
    cv.poly(cv.face(ax, z, [(-0.35, h - 0.05), (0.35, h - 0.05), (0.3, h + 0.15), (-0.3, h + 0.15)]),
            POLE, metal)
    glass = cv.face(ax, z, circle(12) * (0.28, 0.07) + (0, h - 0.06))
    cv.poly(glass, POLE, (0.8, 0.8, 0.8), emit=np.asarray(colour) * power)
    cv.ground_pool(ax, z, rng.uniform(4, 8), rng.uniform(0.4, 1.2))
    (px, py), = cv.face(ax, z, [(0, h)])
    cv.pool(px, py, 3 * cv.scale(z), 3 * cv.scale(z), 0.3)


def _tree(cv: Canvas, x: float, z: float) -> None:
    rng = cv.rng
    ht = rng.uniform(1.8, 3.0)
    cv.poly(cv.face(x, z, [(-0.15, 0), (0.15, 0), (0.1, ht + 0.5), (-0.1, ht + 0.5)]), VEG,
            tint(rng, (0.12, 0.08, 0.05)))
    for shade in (1.0, 0.7):
        blobs = [cv.face(x, z, circle(20) * r + (rng.uniform(-1.2, 1.2), ht + rng.uniform(0.6, 2.6)))
                 for r in rng.uniform(0.8, 2.0, int(rng.integers(2, 5)))]
        cv.poly(blobs, VEG, tint(rng, (0.06, 0.16, 0.05)) * shade)


def _person(cv: Canvas, x: float, z: float, label: int = PERSON, seated: float = 0.0) -> None:
    """A pedestrian (or, with ``seated`` = saddle height, a rider's upper body and bent legs)."""
    rng = cv.rng
    sc = rng.uniform(1.55, 1.9) / 1.75
    top, bottom = tint(rng, CLOTHES[rng.integers(0, 8)]), tint(rng, CLOTHES[rng.integers(0, 8)])
    skin = tint(rng, (0.45, 0.32, 0.25))
    s, a = rng.uniform(-0.25, 0.25), rng.uniform(-0.08, 0.08)
    lift = seated - 0.85 * sc + 0.1 if seated else 0.0

    def f(uv):
        return cv.face(x, z, np.asarray(uv) * sc + (0, lift))

    if seated:
        legs = [f([(-0.16, 0.85), (0.0, 0.85), (-0.1, 0.35), (-0.2, 0.35)]),
                f([(0.0, 0.85), (0.16, 0.85), (0.2, 0.35), (0.1, 0.35)])]
    else:
        legs = [f([(-0.16, 0.85), (-0.02, 0.85), (-0.05 + s, 0), (-0.17 + s, 0)]),
                f([(0.02, 0.85), (0.16, 0.85), (0.17 - s, 0), (0.05 - s, 0)])]
    cv.poly(legs, label, bottom)
    torso = f([(-0.2, 0.85), (0.2, 0.85), (0.23, 1.45), (0.1, 1.5), (-0.1, 1.5), (-0.23, 1.45)])
    arms = [f([(-0.23, 1.45), (-0.31, 1.42), (-0.34 + a, 0.88), (-0.26 + a, 0.88)]),
            f([(0.23, 1.45), (0.31, 1.42), (0.34 - a, 0.88), (0.26 - a, 0.88)])]
    cv.poly([torso, *arms], label, top)
    cv.poly(f(circle(14) * (0.1, 0.125) + (0, 1.62)), label, skin if rng.random() < 0.7 else top * 0.5)


def _bicycle(cv: Canvas, x: float, z: float, rider: bool) -> None:
    """Side view (parked on the sidewalk, or crossing with its rider)."""
    rng = cv.rng
    metal = tint(rng, PAINT[rng.integers(0, len(PAINT))])
    thick = max(int(round(0.05 * cv.scale(z))), 1)
    wheels = [np.round(cv.face(x, z, circle(16) * 0.34 + (u, 0.34)) * 8).astype(np.int32)
              for u in (-0.55, 0.55)]
    frame = np.round(cv.face(x, z, [(-0.55, 0.34), (-0.1, 0.85), (0.4, 0.85), (0.55, 0.34), (0.05, 0.34),
                                    (-0.1, 0.85)]) * 8).astype(np.int32)
    for img, val in ((cv.label, ID["bicycle"]), (cv.albedo, tuple(float(c) for c in metal)),
                     (cv.emit, (0.0, 0.0, 0.0))):
        cv2.polylines(img, [*wheels, frame], False, val, thick, cv2.LINE_8, 3)
    if rider:
        _person(cv, x - 0.05, z, ID["rider"], seated=0.95)


def _vehicle(cv: Canvas, x: float, z: float, kind: str, toward: bool) -> None:
    """Car, truck or bus: visible side (if off-axis) then its front or rear face, lights and light pools."""
    rng = cv.rng
    width, length, height = {"car": (1.8, 4.4, 1.45), "truck": (2.4, 7.5, 3.3),
                             "bus": (2.55, 11.5, 3.1)}[kind]
    label = ID[kind]
    body = tint(rng, PAINT[rng.integers(0, len(PAINT))])
    glass = tint(rng, (0.04, 0.05, 0.06))
    hw = width / 2
    if abs(x) > hw:
        xs = x - np.sign(x) * hw
        if kind == "car":
            prof = [(0, 0.25), (0, 0.9), (0.9, 1.0), (1.4, height), (length - 1.1, height),
                    (length - 0.5, 0.95), (length, 0.9), (length, 0.25)]
            win = [(1.0, 1.0), (1.5, height - 0.07), (length - 1.2, height - 0.07), (length - 0.65, 1.0)]
        else:
            prof = [(0, 0.3), (0, height), (length, height), (length, 0.3)]
            win = [(0.3, 1.3), (0.3, height - 0.4), (1.5, height - 0.4), (1.5, 1.3)]
        side = lambda pts: cv.project([(xs, v, z + d) for d, v in pts])  # noqa: E731
        cv.poly(side(prof), label, body * 0.8)
        windows = [side(win)]
        if kind == "bus":   # a row of passenger windows, often lit from inside
            windows += [side([(d, 1.3), (d, height - 0.4), (d + 1.1, height - 0.4), (d + 1.1, 1.3)])
                        for d in np.arange(1.8, length - 1.2, 1.3)]
        lit = kind == "bus" and rng.random() < 0.7
        cv.poly(windows, label, glass, emit=np.array(LED) * rng.uniform(0.2, 0.6) if lit else None)
        cv.poly([side(circle(12) * 0.33 + (d, 0.33)) for d in (0.8, length - 0.9)], label, (0.03, 0.03, 0.03))
    fw = [(-hw, 0.25), (hw, 0.25), (hw + 0.02, 0.85), (hw - 0.05, 0.95), (-hw + 0.05, 0.95),
          (-hw - 0.02, 0.85)]
    if kind != "car":
        fw = [(-hw, 0.3), (hw, 0.3), (hw, height), (-hw, height)]
    cv.poly([cv.face(x, z, [(u, 0), (u + 0.25, 0), (u + 0.25, 0.35), (u, 0.35)])
             for u in (-hw + 0.05, hw - 0.3)], label, (0.03, 0.03, 0.03))
    cv.poly(cv.face(x, z, fw), label, body)
    if kind == "car":
        cv.poly(cv.face(x, z, [(-0.8, 0.95), (0.8, 0.95), (0.62, height), (-0.62, height)]), label, body)
        cv.poly(cv.face(x, z, [(-0.72, 1.0), (0.72, 1.0), (0.57, height - 0.06), (-0.57, height - 0.06)]),
                label, glass)
    else:
        cv.poly(cv.face(x, z, [(-hw + 0.1, 1.4), (hw - 0.1, 1.4), (hw - 0.1, height - 0.2),
                               (-hw + 0.1, height - 0.2)]), label, glass)
    cv.poly(cv.face(x, z, [(-0.26, 0.4), (0.26, 0.4), (0.26, 0.52), (-0.26, 0.52)]), label, (0.6, 0.6, 0.55))
    if toward:
        power = rng.uniform(3, 9)
        lamps = [cv.face(x, z, circle(12) * (0.15, 0.07) + (u, 0.7)) for u in (-hw + 0.25, hw - 0.25)]
        for lamp in lamps:
            cv.poly(lamp, label, (0.9, 0.9, 0.9), emit=np.array(LED) * power)
        cv.ground_pool(x, max(z - 10, NEAR), 2.0, rng.uniform(0.5, 1.3), rz=10)
    else:
        power = rng.uniform(0.6, 2.5)
        for u in (-hw + 0.05, hw - 0.3):
            cv.poly(cv.face(x, z, [(u, 0.7), (u + 0.25, 0.7), (u + 0.25, 0.85), (u, 0.85)]), label,
                    (0.4, 0.02, 0.02), emit=np.array([1.0, 0.08, 0.05]) * power)


def _motorcycle(cv: Canvas, x: float, z: float) -> None:
    rng = cv.rng
    m = ID["motorcycle"]
    cv.poly(cv.face(x, z, [(-0.08, 0), (0.08, 0), (0.08, 0.6), (-0.08, 0.6)]), m, (0.03, 0.03, 0.03))
    cv.poly(cv.face(x, z, [(-0.3, 0.4), (0.3, 0.4), (0.25, 0.95), (-0.25, 0.95)]), m,
            tint(rng, PAINT[rng.integers(0, len(PAINT))]))
    cv.poly(cv.face(x, z, [(-0.1, 0.6), (0.1, 0.6), (0.1, 0.68), (-0.1, 0.68)]), m, (0.4, 0.02, 0.02),
            emit=np.array([1.0, 0.08, 0.05]) * rng.uniform(0.8, 2.5))
    _person(cv, x, z, ID["rider"], seated=0.95)


def _sign(cv: Canvas, x: float, z: float) -> None:
    rng = cv.rng
    h = rng.uniform(2.0, 2.8)
    cv.poly(cv.face(x, z, [(-0.04, 0), (0.04, 0), (0.04, h), (-0.04, h)]), POLE, tint(rng, (0.3, 0.3, 0.3)))
    ts, kind = ID["traffic sign"], rng.integers(0, 4)
    red, white, blue = tint(rng, (0.7, 0.05, 0.05)), tint(rng, (0.8, 0.8, 0.78)), tint(rng, (0.05, 0.2, 0.6))
    if kind == 0:
        cv.poly(cv.face(x, z, circle(20) * 0.33 + (0, h)), ts, red)
        cv.poly(cv.face(x, z, circle(20) * 0.25 + (0, h)), ts, white)
    elif kind == 1:
        cv.poly(cv.face(x, z, [(-0.38, h - 0.2), (0.38, h - 0.2), (0, h + 0.45)]), ts, red)
        cv.poly(cv.face(x, z, [(-0.26, h - 0.13), (0.26, h - 0.13), (0, h + 0.3)]), ts, white)
    elif kind == 2:
        cv.poly(cv.face(x, z, [(-0.3, h - 0.3), (0.3, h - 0.3), (0.3, h + 0.3), (-0.3, h + 0.3)]), ts, blue)
        cv.poly(cv.face(x, z, [(-0.05, h - 0.2), (0.05, h - 0.2), (0.05, h + 0.05), (0.15, h + 0.05),
                               (0, h + 0.22), (-0.15, h + 0.05), (-0.05, h + 0.05)]), ts, white)
    else:
        cv.poly(cv.face(x, z, [(-0.45, h - 0.25), (0.45, h - 0.25), (0.45, h + 0.25), (-0.45, h + 0.25)]), ts,
                tint(rng, (0.05, 0.35, 0.12)))


def _traffic_light(cv: Canvas, x: float, z: float, side: int) -> None:
    rng = cv.rng
    h, state = rng.uniform(2.8, 3.8), int(rng.integers(0, 3))
    cv.poly(cv.face(x, z, [(-0.08, 0), (0.08, 0), (0.08, h + 1.2), (-0.08, h + 1.2)]), POLE,
            tint(rng, (0.2, 0.2, 0.2)))
    heads = [x - side * 0.3]
    if rng.random() < 0.5:   # a second head on an arm over the road
        arm = rng.uniform(2.5, 5.0)
        cv.poly(cv.face(0, z, [(x, h + 1.05), (x - side * arm, h + 1.05), (x - side * arm, h + 1.15),
                               (x, h + 1.15)]), POLE, (0.2, 0.2, 0.2))
        heads.append(x - side * arm)
    colours = [(1.0, 0.12, 0.08), (1.0, 0.6, 0.05), (0.1, 1.0, 0.6)]
    for hx in heads:
        cv.poly(cv.face(hx, z, [(-0.2, h), (0.2, h), (0.2, h + 1.0), (-0.2, h + 1.0)]), ID["traffic light"],
                tint(rng, (0.04, 0.045, 0.04)))
        for i, c in enumerate(colours):
            on = i == state
            cv.poly(cv.face(hx, z, circle(14) * 0.12 + (0, h + 0.83 - 0.33 * i)), ID["traffic light"],
                    np.array(c) * (0.8 if on else 0.12), emit=np.array(c) * rng.uniform(2, 5) if on else None)


def _bin(cv: Canvas, x: float, z: float) -> None:
    cv.poly(cv.face(x, z, [(-0.3, 0.15), (0.3, 0.15), (0.33, 1.1), (-0.33, 1.1)]), ID["static"],
            tint(cv.rng, PAINT[cv.rng.integers(0, len(PAINT))]))


def place_objects(cv: Canvas, st: Street) -> list[tuple[float, object]]:
    """Everything between the facades and the camera, as (depth in m, draw function)."""
    rng, items = cv.rng, []
    lamp_colour, power = (SODIUM if rng.random() < 0.6 else LED), rng.uniform(3, 8)
    z_max = min(st.z_far - 2, 120)
    for side in (-1, 1):
        i = 0 if side < 0 else 1
        e, sw = st.edge(side), st.sidewalk[i]
        if rng.random() < 0.9:
            for z in np.arange(rng.uniform(6, 25), z_max, rng.uniform(18, 35)):
                items.append((z, partial(_lamp, x=side * (e + 0.5), z=z, side=side, colour=lamp_colour,
                                         power=power)))
        if rng.random() < 0.6:
            for z in np.arange(rng.uniform(6, 15), min(z_max, 90), rng.uniform(7, 15)):
                items.append((z, partial(_tree, x=side * (e + sw - 0.8), z=z)))
        for z in rng.uniform(6, min(z_max, 70), int(rng.integers(0, 5))):
            items.append((z, partial(_person, x=side * (e + rng.uniform(0.4, sw - 0.3)), z=z)))
        for z in rng.uniform(6, min(z_max, 50), int(rng.integers(0, 2))):
            items.append((z, partial(_bin, x=side * (e + sw - 0.4), z=z)))
        if rng.random() < 0.3:
            items.append((rz := rng.uniform(6, 40),
                          partial(_bicycle, x=side * (e + sw - 0.5), z=rz, rider=False)))
        if rng.random() < 0.25:
            z0 = rng.uniform(NEAR + 3, 40)
            items.append((z0, partial(fence, x=side * (e + 0.15), z0=z0, z1=z0 + rng.uniform(5, 20),
                                      height=rng.uniform(0.8, 1.2))))
    for side, z0, z1 in st.gaps:
        for z in np.arange(z0 + 2, z1, rng.uniform(6, 10)):
            items.append((z, partial(_tree, x=st.building_line(side) + side * rng.uniform(2, 6), z=z)))
    for z in rng.uniform(8, min(z_max, 60), int(rng.integers(0, 4))):
        side = 1 if rng.random() < 0.6 else -1
        items.append((z, partial(_sign, x=side * (st.edge(side) + 0.4), z=z)))
    if st.crossing is not None and st.crossing < z_max:
        zc = st.crossing
        for side in (-1, 1):
            items.append((zc, partial(_traffic_light, x=side * (st.edge(side) + 0.4), z=zc, side=side)))
        for _ in range(int(rng.integers(0, 4))):
            items.append((zc - 3, partial(_person, x=rng.uniform(-st.wl, st.wr), z=zc - 3)))
        if rng.random() < 0.4:
            items.append((zc - 3.2, partial(_bicycle, x=rng.uniform(-st.wl, st.wr), z=zc - 3.2, rider=True)))
    lanes = [(-LANE * k, k > st.nl - st.oncoming) for k in range(1, st.nl + 1)] + [(0.0, False)] + \
            [(LANE * k, False) for k in range(1, st.nr + 1)]
    for xl, toward in lanes:
        z = rng.uniform(8, 25) if xl == 0 else rng.uniform(5, 20)
        while z < z_max and rng.random() < 0.75:
            kind = rng.choice(["car", "car", "car", "car", "car", "car", "truck", "bus", "moto"])
            x = xl + rng.uniform(-0.3, 0.3)
            if kind == "moto":
                items.append((z, partial(_motorcycle, x=x, z=z)))
            else:
                items.append((z, partial(_vehicle, x=x, z=z, kind=str(kind), toward=toward)))
            z += rng.uniform(8, 30) + (12 if kind == "bus" else 0)
    if rng.random() < 0.7:   # our own low beams on the road ahead
        items.append((0.0, partial(Canvas.ground_pool, x=0.0, z=rng.uniform(8, 14), r=rng.uniform(2, 3.5),
                                   amp=rng.uniform(0.3, 0.9), rz=rng.uniform(5, 9))))
    if st.parking:
        for z in np.arange(rng.uniform(5, 12), min(z_max, 60), rng.uniform(5.5, 9)):
            if rng.random() < 0.7:
                items.append((z, partial(_vehicle, x=st.wr - 1.15, z=z, kind="car", toward=False)))
    return items
