"""Train/test split lists: ``D/train.txt``, ``D/test.txt`` (sorted stems) and ``D/split_report.json``.

Modes:

- ``official``: the release's folders, ``train/`` -> train and ``val/`` -> test (the
  paper calls val "test"). Real-release rule: a layout with more than
  ``REAL_RELEASE_MIN_PAIRS`` (1,000) image/label pairs, counted before quarantine, is
  taken to be the real NightCity release, and its folders must then hold exactly
  2,998 train / 1,299 val pairs, else exit 1 saying so. Smaller layouts (synthetic
  data, subsets) are split by their folders as they are. (A synthetic set of more than
  1,000 scenes passes only at 4,297 scenes, where synth's val share gives 2,998 / 1,299;
  otherwise use ``--mode stratified``.)
- ``stratified``: all pairs pooled and re-split so that ``round(N * test_fraction)``
  go to test (1,299 of 4,297 at the default 0.3023), keeping class-pixel and exposure
  distributions alike: iterative stratification (Sechidis et al., 2011) on per-image
  labels = presence of each of the 19 classes + the image's two most populated
  exposure bins, then seeded swaps between the sides that lower the Jensen-Shannon
  distances. Deterministic for a seed. If the class-pixel or the exposure JS distance
  (base 2, in [0, 1]) still exceeds ``split.max_js_distance``, exit 1 naming it.

Quarantined stems (``--quarantine F``, else ``DATA/quarantine.txt``) are left out of
both sides and listed in the report. Both modes read every pair once (process pool,
``stats.workers``) to report per-side histograms and JS distances; only the
stratified split is gated on them.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
from scipy.spatial.distance import jensenshannon

from egnet.core.config import Config
from egnet.core.errors import ConfigError, DataError
from egnet.core.files import atomic_dir, write_json
from egnet.data import exposure, labels, layout
from egnet.data.stats import ImageStats, map_images, totals

#: official split of the real release (docs/data.md, "Layout")
RELEASE_COUNTS = {"train": 2998, "val": 1299}
#: a layout with more pairs than this is taken to be the real release (see module docstring)
REAL_RELEASE_MIN_PAIRS = 1000
#: swap rounds after iterative stratification, and (test, train) swaps scored per round
SWAP_ROUNDS = 1000
SWAP_CANDIDATES = 4096
#: weight of the label-count term in the balancing objective (see ``_objective``)
PRESENCE_WEIGHT = 0.25


def js_distance(p: np.ndarray, q: np.ndarray) -> np.ndarray | float:
    """Jensen-Shannon distance, base 2 (0 = same distribution, 1 = disjoint), along the last axis.

    Inputs are unnormalised counts (scipy normalises them). An all-zero side has no
    distribution: the distance is 0 when both sides are empty and 1 when only one is.
    """
    p, q = np.asarray(p, dtype=np.float64), np.asarray(q, dtype=np.float64)
    ps, qs = p.sum(axis=-1), q.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        d = jensenshannon(p, q, base=2, axis=-1)
    d = np.where((ps == 0) & (qs == 0), 0.0, np.where((ps == 0) | (qs == 0), 1.0, d))
    return float(d) if d.ndim == 0 else d


def _strat_labels(stats: list[ImageStats]) -> np.ndarray:
    """[N, 29] bool: class present (19) + the image's two most populated exposure bins (10)."""
    present = np.array([s.class_pixels > 0 for s in stats], dtype=bool).reshape(-1, labels.NUM_CLASSES)
    hists = np.array([s.exposure_hist for s in stats]).reshape(-1, exposure.NUM_BINS)
    top2 = np.argsort(-hists, axis=1, kind="stable")[:, :2]
    dominant = np.zeros_like(hists, dtype=bool)
    np.put_along_axis(dominant, top2, True, axis=1)
    return np.concatenate([present, dominant], axis=1)


def iterative_stratification(y: np.ndarray, n_test: int, rng: np.random.Generator) -> np.ndarray:
    """Assign rows of the [N, L] label matrix to test (True) or train, rarest label first.

    Each example goes to the side that still wants most examples of the label being
    placed (ties: the side wanting most examples overall, then a seeded coin).
    Returns an [N] bool mask; its count is close to, not always exactly, ``n_test``.
    """
    n = len(y)
    want_total = np.array([n - n_test, n_test], dtype=np.float64)  # [train, test]
    ratio = want_total / n
    want_label = ratio[:, None] * y.sum(axis=0)[None, :]
    order = rng.permutation(n)
    side = np.full(n, -1)
    while True:
        free = side < 0
        left = y[free].sum(axis=0)
        if not left.any():
            break
        lab = int(np.argmin(np.where(left > 0, left, np.iinfo(np.int64).max)))
        for i in order[free[order] & y[order, lab]]:
            wl = want_label[:, lab]
            if wl[0] != wl[1]:
                j = int(np.argmax(wl))
            elif want_total[0] != want_total[1]:
                j = int(np.argmax(want_total))
            else:
                j = int(rng.integers(2))
            side[i] = j
            want_label[j] -= y[i]
            want_total[j] -= 1
    for i in order[side[order] < 0]:  # images with no label at all
        j = int(np.argmax(want_total))
        side[i] = j
        want_total[j] -= 1
    return side == 1


def _objective(test_c, test_e, test_y, tot_c, tot_e, tot_y) -> np.ndarray:
    """Squared JS distances between the sides: class pixels + exposure + (down-weighted) label counts.

    The label-count term keeps rare classes on both sides; it is weighted down because on
    small data its noise floor would otherwise stop the pixel distributions balancing.
    """
    return (js_distance(test_c, tot_c - test_c) ** 2 + js_distance(test_e, tot_e - test_e) ** 2
            + PRESENCE_WEIGHT * js_distance(test_y, tot_y - test_y) ** 2)


def balance(
    is_test: np.ndarray, feats: tuple[np.ndarray, np.ndarray, np.ndarray], n_test: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """Move images until test has exactly ``n_test``, then swaps that lower ``_objective``.

    ``feats`` = per-image class pixels [N, 19], exposure hist [N, 10], strat labels [N, L].
    Each round scores every (test, train) swap, or a seeded sample of ``SWAP_CANDIDATES``
    of them on large data, and makes the best one; it stops when no swap improves.
    """
    is_test = is_test.copy()
    cls, exp_, y = (f.astype(np.float64) for f in feats)
    tot = (cls.sum(0), exp_.sum(0), y.sum(0))

    def side_sums(mask: np.ndarray):
        return cls[mask].sum(0), exp_[mask].sum(0), y[mask].sum(0)

    while is_test.sum() != n_test:  # fix the count: move the image whose move hurts least
        grow = is_test.sum() < n_test
        cand = np.flatnonzero(~is_test if grow else is_test)
        sign = 1.0 if grow else -1.0
        c, e, yy = side_sums(is_test)
        scores = _objective(c + sign * cls[cand], e + sign * exp_[cand], yy + sign * y[cand], *tot)
        is_test[cand[int(np.argmin(scores))]] = grow
    c, e, yy = side_sums(is_test)
    best = float(_objective(c, e, yy, *tot))
    misses = 0
    for _ in range(SWAP_ROUNDS):
        tests, trains = np.flatnonzero(is_test), np.flatnonzero(~is_test)
        exhaustive = len(tests) * len(trains) <= SWAP_CANDIDATES
        if exhaustive:
            i, j = (a.ravel() for a in np.meshgrid(tests, trains, indexing="ij"))
        else:
            i = tests[rng.integers(len(tests), size=SWAP_CANDIDATES)]
            j = trains[rng.integers(len(trains), size=SWAP_CANDIDATES)]
        dc, de, dy = cls[j] - cls[i], exp_[j] - exp_[i], y[j] - y[i]
        scores = _objective(c + dc, e + de, yy + dy, *tot)
        k = int(np.argmin(scores))
        if scores[k] < best - 1e-12:
            is_test[i[k]], is_test[j[k]] = False, True
            c, e, yy, best = c + dc[k], e + de[k], yy + dy[k], float(scores[k])
            misses = 0
        else:
            misses += 1
            if exhaustive or misses >= 10:  # a local optimum (or very likely one, when sampling)
                break
    return is_test


def _side_report(stats: list[ImageStats]) -> dict[str, Any]:
    t = totals(stats)
    return {
        "class_pixels": dict(zip(labels.CLASS_NAMES, t.class_pixels.tolist(), strict=True)),
        "exposure_hist": t.exposure_hist.tolist(),
    }


def _check_sides(root: str | Path, mode: str, n_train: int, n_test: int) -> None:
    if n_train < 1 or n_test < 1:
        raise DataError(f"{root}: {mode} split leaves train {n_train} / test {n_test} images; "
                        "both sides need at least one (after quarantine)")


def split(
    root: str | Path,
    mode: str,
    seed: int,
    test_fraction: float,
    max_js: float,
    quarantine: str | Path | None = None,
    *,
    size: tuple[int, int],
    workers: int = 0,
) -> tuple[list[str], list[str], dict[str, Any]]:
    """Split the pairs under ``root``; returns (train stems, test stems, report), stems sorted.

    ``size`` = (width, height) images are read at (labels resized from 2x for NightCity+).
    Raises DataError for a real release with wrong official counts, too few pairs, or a
    stratified split whose JS distance exceeds ``max_js``.
    """
    if mode not in ("official", "stratified"):
        raise ConfigError(f"split mode {mode!r}: expected official or stratified")
    if seed < 0:
        raise ConfigError(f"split seed {seed}: must be >= 0")
    listing = layout.scan(root)
    skip = layout.quarantined(root, quarantine)
    quarantined = sorted(p.stem for p in listing.pairs if p.stem in skip)
    pairs = [p for p in listing.pairs if p.stem not in skip]

    if mode == "official":
        folder = {s: sum(p.split == s for p in listing.pairs) for s in layout.SPLITS}
        if len(listing.pairs) > REAL_RELEASE_MIN_PAIRS and folder != RELEASE_COUNTS:
            raise DataError(
                f"{root}: {len(listing.pairs)} pairs look like the real NightCity release, "
                f"but its folders hold train {folder['train']} / val {folder['val']}; the official split is "
                f"{RELEASE_COUNTS['train']} / {RELEASE_COUNTS['val']} (use --mode stratified for other data)"
            )
        is_test = np.array([p.split == "val" for p in pairs], dtype=bool)
    else:
        n_test = min(len(pairs) - 1, max(1, round(len(pairs) * test_fraction)))
        is_test = np.arange(len(pairs)) < n_test  # only the count matters before stratifying
    _check_sides(root, mode, int((~is_test).sum()), int(is_test.sum()))  # before reading any image
    stats = map_images(pairs, size, workers, desc="split")
    if mode == "stratified":
        rng = np.random.default_rng(seed)
        y = _strat_labels(stats)
        feats = (np.array([s.class_pixels for s in stats]), np.array([s.exposure_hist for s in stats]), y)
        is_test = balance(iterative_stratification(y, n_test, rng), feats, n_test, rng)

    train = sorted(p.stem for p, t in zip(pairs, is_test, strict=True) if not t)
    test = sorted(p.stem for p, t in zip(pairs, is_test, strict=True) if t)
    sides = {
        "train": _side_report([s for s, t in zip(stats, is_test, strict=True) if not t]),
        "test": _side_report([s for s, t in zip(stats, is_test, strict=True) if t]),
    }
    js_class = js_distance(list(sides["train"]["class_pixels"].values()),
                           list(sides["test"]["class_pixels"].values()))
    js_exposure = js_distance(sides["train"]["exposure_hist"], sides["test"]["exposure_hist"])
    report = {
        "mode": mode,
        "seed": seed if mode == "stratified" else None,
        "test_fraction": test_fraction if mode == "stratified" else None,
        "counts": {"train": len(train), "test": len(test)},
        "quarantined": {"count": len(quarantined), "stems": quarantined},
        "js_class": js_class,
        "js_exposure": js_exposure,
        "max_js_distance": max_js,
        "js_gated": mode == "stratified",
        "image_size": list(size),
        "labels_resized": sum(s.resized for s in stats),
        "class_names": list(labels.CLASS_NAMES),
        "exposure_bins": [list(edge) for edge in exposure.BIN_EDGES],
        "sides": sides,
    }
    if mode == "stratified":
        for measure, value in (("js_class", js_class), ("js_exposure", js_exposure)):
            if value > max_js:
                raise DataError(f"{root}: stratified split {measure} = {value:.4f} exceeds "
                                f"split.max_js_distance = {max_js} (too few or too uneven images to balance)")
    return train, test, report


def main(args: argparse.Namespace, cfg: Config) -> int:
    """`egnet data split DATA --out DIR [--mode official|stratified] [--seed S] [--quarantine F]`."""
    mode = args.mode or cfg.split.mode
    seed = cfg.split.seed if args.seed is None else args.seed
    train, test, report = split(
        args.data, mode, seed, cfg.split.test_fraction, cfg.split.max_js_distance, args.quarantine,
        size=tuple(cfg.data.image_size), workers=cfg.stats.workers,
    )
    with atomic_dir(args.out) as tmp:
        (tmp / "train.txt").write_text("".join(f"{s}\n" for s in train))
        (tmp / "test.txt").write_text("".join(f"{s}\n" for s in test))
        write_json(tmp / "split_report.json", report)
    q = report["quarantined"]["count"]
    print(f"split ({mode}): train {len(train)} / test {len(test)}"
          + (f", {q} quarantined skipped" if q else "")
          + f"; JS class {report['js_class']:.4f}, exposure {report['js_exposure']:.4f} -> {args.out}")
    return 0
