"""`egnet data drift`: is incoming data still like the data the champion was trained on?

    egnet data drift NEW_DATA --reference models:/egnet-nightcity@champion --out outputs/drift
    egnet data drift NEW_DATA --reference outputs/stats/stats.json

NEW_DATA's statistics come from the same per-image function as ``egnet data stats``
(:func:`egnet.data.stats.image_stats`) over all its pairs (both release folders, no
split; quarantined stems skipped). The reference is the ``drift.reference_split``
("train") of a stats.json: a file or its folder, ``runs:/RUN_ID``, or a registered
version ``models:/NAME@ALIAS`` / ``models:/NAME/VERSION`` whose training run carries
the stats.json as the artifact ``data/stats.json``. This module compares; the MLflow look-up
of a ``runs:/`` or ``models:/`` reference is :mod:`egnet.tracking.reference`, which hands the
document in (the data layer never talks to the tracking server).

Measures (each passes at or below its ``drift.<measure>`` threshold):

- ``js_exposure``: Jensen-Shannon distance (base 2, 0..1) between the exposure
  histograms (pixels per HSV-V bin, the paper's Fig. 4 bins);
- ``wasserstein_exposure``: earth mover's distance between the same histograms,
  with each bin's pixels at its centre (0.05 .. 0.95), in units of V;
- ``js_class``: Jensen-Shannon distance between the labelled-pixel class distributions;
- ``class_mean_exposure_shift``: largest |change| of a class's mean V, over classes
  holding at least ``drift.min_class_fraction`` of the labelled pixels on both sides.

Outputs (atomic, with ``--out``): ``drift.json`` (measures, values, thresholds,
passed per measure, reference source), ``stats.json`` of NEW_DATA (split ``all``;
usable as a later ``--reference``), ``exposure_overlay.png``, ``class_overlay.png``,
``class_mean_exposure.png``. Exit 1 naming the measures over threshold
(``drift.action: fail``); with ``flag`` a warning and exit 0.
"""

from __future__ import annotations

import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import wasserstein_distance

from egnet.core.config import Config, DriftConfig
from egnet.core.errors import ConfigError, DataError, GateRefused
from egnet.core.files import atomic_dir, read_json, write_json
from egnet.core.text import fmt, render_table
from egnet.data import exposure, labels, layout, stats
from egnet.data.split import js_distance

MEASURES = ("js_exposure", "wasserstein_exposure", "js_class", "class_mean_exposure_shift")
NEW_SPLIT = "all"
BIN_CENTRES = np.array([(lo + hi) / 2 for lo, hi in exposure.BIN_EDGES])

DESCRIPTIONS = {
    "js_exposure": "Jensen-Shannon distance (base 2) of pixels per exposure bin",
    "wasserstein_exposure": "earth mover's distance of pixels per exposure bin, in HSV V",
    "js_class": "Jensen-Shannon distance (base 2) of labelled pixels per class",
    "class_mean_exposure_shift": "largest change of a class's mean exposure (HSV V)",
}


@dataclass(frozen=True)
class Distribution:
    """What drift compares, summed over a set of images."""

    num_images: int
    exposure_hist: np.ndarray         # [10] pixels per exposure bin (all pixels)
    class_pixels: np.ndarray          # [19] labelled pixels per class (trainId order)
    class_mean_exposure: np.ndarray   # [19] mean V of each class's pixels, NaN for a class without pixels

    @classmethod
    def from_totals(cls, t: stats.SplitTotals) -> Distribution:
        means = np.array([np.nan if v is None else v for v in stats.mean_exposure(t)], dtype=np.float64)
        return cls(t.num_images, np.asarray(t.exposure_hist, np.float64),
                   np.asarray(t.class_pixels, np.float64), means)

    @classmethod
    def from_stats_doc(cls, doc: dict[str, Any], split: str, source: str) -> tuple[Distribution, str]:
        """The ``split`` of a stats.json document (or its only split); returns it and the split used."""
        try:
            splits = list(doc["exposure_hist"])
            if split not in splits:
                if len(splits) != 1:
                    raise DataError(f"{source}: no split '{split}' (has {', '.join(splits)}); "
                                    "set drift.reference_split")
                split = splits[0]
            names = list(labels.CLASS_NAMES)
            hist = np.asarray(doc["exposure_hist"][split], dtype=np.float64)
            pixels = np.asarray([doc["class_pixels"][split][c] for c in names], dtype=np.float64)
            means = np.asarray([np.nan if doc["class_mean_exposure"][split][c] is None
                                else doc["class_mean_exposure"][split][c] for c in names], dtype=np.float64)
            num = int(doc["num_images"][split])
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"{source}: not an `egnet data stats` stats.json "
                            f"(missing or bad {exc})") from None
        if hist.shape != (exposure.NUM_BINS,):
            raise DataError(f"{source}: exposure_hist.{split} has {hist.size} bins, "
                            f"expected {exposure.NUM_BINS}")
        return cls(num, hist, pixels, means), split


# --------------------------------------------------------------------------- measures


def class_mean_shift(ref: Distribution, new: Distribution,
                     min_fraction: float) -> tuple[float | None, str | None, dict[str, float]]:
    """(largest |mean V change|, its class, change per compared class) over classes with at least
    ``min_fraction`` of the labelled pixels on both sides; (None, None, {}) when none qualifies."""
    rf = ref.class_pixels / max(ref.class_pixels.sum(), 1.0)
    nf = new.class_pixels / max(new.class_pixels.sum(), 1.0)
    keep = (rf >= min_fraction) & (nf >= min_fraction) & (ref.class_pixels > 0) & (new.class_pixels > 0)
    per_class = {labels.CLASS_NAMES[c]: float(new.class_mean_exposure[c] - ref.class_mean_exposure[c])
                 for c in np.flatnonzero(keep)}
    if not per_class:
        return None, None, {}
    worst = max(per_class, key=lambda c: abs(per_class[c]))
    return abs(per_class[worst]), worst, per_class


def measure(ref: Distribution, new: Distribution, min_class_fraction: float) -> dict[str, dict[str, Any]]:
    """Every measure: ``{name: {"value": float | None, ...details}}`` (see the module docstring)."""
    if ref.exposure_hist.sum() > 0 and new.exposure_hist.sum() > 0:
        w = float(wasserstein_distance(BIN_CENTRES, BIN_CENTRES, ref.exposure_hist, new.exposure_hist))
    else:
        w = None
    shift, cls, per_class = class_mean_shift(ref, new, min_class_fraction)
    return {
        "js_exposure": {"value": float(js_distance(ref.exposure_hist, new.exposure_hist))},
        "wasserstein_exposure": {"value": w},
        "js_class": {"value": float(js_distance(ref.class_pixels, new.class_pixels))},
        "class_mean_exposure_shift": {"value": shift, "class": cls, "per_class": per_class,
                                      "min_class_fraction": min_class_fraction},
    }


def judge(measures: dict[str, dict[str, Any]], cfg: DriftConfig) -> dict[str, dict[str, Any]]:
    """Add ``threshold``, ``passed`` and ``description`` to each measure. A measure that cannot
    be computed (None: e.g. no class common to both sides) passes and says so."""
    out = {}
    for name in MEASURES:
        m = dict(measures[name])
        threshold = float(getattr(cfg, name))
        value = m["value"]
        m.update(threshold=threshold, passed=value is None or value <= threshold,
                 description=DESCRIPTIONS[name])
        if value is None:
            m["note"] = "not measurable on these data; not gated"
        out[name] = m
    return out


# --------------------------------------------------------------------------- reference


@dataclass(frozen=True)
class Reference:
    doc: dict[str, Any]
    source: dict[str, Any]   # spec, kind (file|run|registry), and where it came from

    @classmethod
    def from_file(cls, spec: str) -> Reference:
        """A stats.json given as a file, its folder, or an s3:// object (runs:/ and models:/
        references are MLflow look-ups: egnet.tracking.reference)."""
        with tempfile.TemporaryDirectory(prefix="egnet-drift-") as tmp:
            path = reference_file(spec, Path(tmp), f"--reference {spec}")
            return cls(read_json(path, "reference stats.json"),
                       {"spec": spec, "kind": "file", "stats": str(path)})


def reference_file(spec: str, dst: Path, what: str) -> Path:
    """A stats.json given as a local file or folder, or an s3:// object."""
    if spec.startswith("s3://"):
        from egnet.core.storage import Location

        parent, _, name = spec.rstrip("/").rpartition("/")
        local = dst / "stats.json"
        Location.from_str(parent).get(name, local)
        return local
    if "://" in spec:
        raise ConfigError(f"{what}: expected a stats.json path, s3://..., runs:/RUN_ID "
                          f"or models:/NAME@ALIAS, got {spec}")
    path = Path(spec)
    path = path / "stats.json" if path.is_dir() else path
    if not path.is_file():
        raise ConfigError(f"{what}: {path} not found")
    return path


# --------------------------------------------------------------------------- new data


def new_data_stats(root: str | Path, size: tuple[int, int], workers: int = 0,
                   quarantine: str | Path | None = None) -> tuple[stats.SplitTotals, dict[str, Any]]:
    """Totals over every pair of ``root`` and a stats.json-shaped document of them (split ``all``)."""
    pairs = list(layout.pairs_by_stem(root, quarantine).values())
    if not pairs:
        raise DataError(f"{root}: no image/label pairs to compare")
    t = stats.totals(stats.map_images(pairs, size, workers, desc="drift"))
    names = list(labels.CLASS_NAMES)
    labelled = max(1, int(t.class_pixels.sum()))
    doc = {
        "image_size": list(size),
        "class_names": names,
        "exposure_bins": [list(e) for e in exposure.BIN_EDGES],
        "exposure_bin_names": list(exposure.BIN_NAMES),
        "num_images": {NEW_SPLIT: t.num_images},
        "labels_resized": {NEW_SPLIT: t.labels_resized},
        "avg_pixels_per_image": {NEW_SPLIT: (t.exposure_hist / t.num_images).tolist()},
        "exposure_hist": {NEW_SPLIT: t.exposure_hist.tolist()},
        "exposure_fraction": {NEW_SPLIT: (t.exposure_hist / t.num_pixels).tolist()},
        "class_pixels": {NEW_SPLIT: dict(zip(names, t.class_pixels.tolist(), strict=True))},
        "class_fraction": {NEW_SPLIT: dict(zip(names, (t.class_pixels / labelled).tolist(), strict=True))},
        "class_mean_exposure": {NEW_SPLIT: dict(zip(names, stats.mean_exposure(t), strict=True))},
        "class_exposure_hist": {NEW_SPLIT: dict(zip(names, t.class_exposure_hist.tolist(), strict=True))},
    }
    return t, doc


# --------------------------------------------------------------------------- report


def _fractions(v: np.ndarray) -> list[float]:
    total = v.sum()
    return (v / total).tolist() if total > 0 else [0.0] * len(v)


def drift_report(ref: Distribution, new: Distribution, cfg: DriftConfig, reference: dict[str, Any],
                 new_root: str) -> dict[str, Any]:
    """The drift.json document."""
    measures = judge(measure(ref, new, cfg.min_class_fraction), cfg)
    failed = [n for n in MEASURES if not measures[n]["passed"]]
    nan_none = lambda a: [None if np.isnan(v) else float(v) for v in a]  # noqa: E731
    return {
        "status": "drift" if failed else "passed",
        "passed": not failed,
        "failed": failed,
        "action": cfg.action,
        "measures": measures,
        "reference": {**reference, "num_images": ref.num_images},
        "new_data": {"root": new_root, "num_images": new.num_images},
        "exposure_bins": list(exposure.BIN_NAMES),
        "exposure_fraction": {"reference": _fractions(ref.exposure_hist),
                              "new": _fractions(new.exposure_hist)},
        "class_names": list(labels.CLASS_NAMES),
        "class_fraction": {"reference": _fractions(ref.class_pixels), "new": _fractions(new.class_pixels)},
        "class_mean_exposure": {"reference": nan_none(ref.class_mean_exposure),
                                "new": nan_none(new.class_mean_exposure)},
    }


def write_charts(out: Path, report: dict[str, Any]) -> list[Path]:
    """Overlays of reference and new data: exposure bins, class shares, class mean exposure."""
    from egnet.data import charts as plots

    def pair(key: str) -> dict[str, list[float | None]]:
        return {"reference": report[key]["reference"], "new data": report[key]["new"]}

    return [
        plots.exposure_chart(out / "exposure_overlay.png", pair("exposure_fraction"),
                             "Share of pixels per exposure bin (cf. paper Fig. 4)", "fraction of pixels"),
        plots.class_chart(out / "class_overlay.png", pair("class_fraction"),
                          "Share of labelled pixels per class (cf. paper Fig. 3)", "fraction (log scale)",
                          log=True),
        plots.class_chart(out / "class_mean_exposure.png", pair("class_mean_exposure"),
                          "Mean exposure (HSV V) of each class's pixels", "mean V"),
    ]


def format_table(report: dict[str, Any]) -> str:
    rows = [("measure", "value", "threshold", "result")]
    rows += [(name, fmt(m["value"]), f"{m['threshold']:.4f}",
              ("ok" if m["passed"] else "DRIFT") + (f"  ({m['class']})" if m.get("class") else ""))
             for name, m in report["measures"].items()]
    return render_table(rows, "<>><")


def failure_line(report: dict[str, Any], out: Path | None) -> str:
    parts = [f"{n} {report['measures'][n]['value']:.4f} > {report['measures'][n]['threshold']:g}"
             for n in report["failed"]]
    where = f" (see {out / 'drift.json'})" if out else ""
    return f"data drift against {report['reference']['spec']}: {', '.join(parts)}{where}"


def check_drift(new_data: str | Path, ref_doc: Reference, cfg: Config, out: str | Path | None = None,
                quarantine: str | Path | None = None) -> dict[str, Any]:
    """Compare ``new_data`` with the reference stats; write outputs to ``out`` (atomic) if given;
    return drift.json. Never raises for drift itself: callers decide (see ``drift.action``)."""
    ref, split = Distribution.from_stats_doc(ref_doc.doc, cfg.drift.reference_split, ref_doc.source["spec"])
    totals, new_doc = new_data_stats(new_data, tuple(cfg.data.image_size), cfg.drift.workers, quarantine)
    report = drift_report(ref, Distribution.from_totals(totals), cfg.drift,
                          {**ref_doc.source, "split": split}, str(new_data))
    if out is not None:
        with atomic_dir(out) as tmp:
            write_json(tmp / "drift.json", report)
            write_json(tmp / "stats.json", new_doc)
            write_charts(tmp, report)
    return report


def skipped_report(reference: str, reason: str) -> dict[str, Any]:
    return {"status": "skipped", "passed": True, "failed": [], "reason": reason,
            "reference": {"spec": reference}, "measures": {}}


def write_skipped(out: str | Path, report: dict[str, Any]) -> None:
    with atomic_dir(out) as tmp:
        write_json(tmp / "drift.json", report)


def verdict(report: dict[str, Any], cfg: Config, out: str | Path | None) -> int:
    """Print the comparison; 0 when it passed or ``drift.action`` is flag, else GateRefused (exit 1)."""
    print(f"drift: {report['new_data']['num_images']} new images vs "
          f"{report['reference']['num_images']} reference images "
          f"({report['reference']['spec']}, split {report['reference']['split']})")
    print(format_table(report))
    if report["passed"]:
        print("drift: all measures within thresholds" + (f"; wrote {out}" if out else ""))
        return 0
    line = failure_line(report, Path(out) if out else None)
    if cfg.drift.action == "flag":
        print(f"egnet: warning: {line} (drift.action=flag: not failing)", file=sys.stderr)
        return 0
    raise GateRefused(line)
