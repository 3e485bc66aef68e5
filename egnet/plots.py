"""Shared chart helpers: grouped bar charts written as PNG (matplotlib Agg, no display).

Figures are built with ``matplotlib.figure.Figure`` and the Agg canvas directly, so
no global pyplot state is touched and the helpers are safe in worker processes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from egnet.data.exposure import BIN_NAMES
from egnet.data.labels import CLASS_NAMES


def _number(v: float | None) -> float:
    """None (e.g. a class with no pixels) -> NaN, which matplotlib leaves undrawn."""
    return math.nan if v is None else float(v)


def bar_chart(
    path: str | Path,
    labels: Sequence[str],
    series: Mapping[str, Sequence[float | None]],
    title: str,
    ylabel: str,
    *,
    xlabel: str | None = None,
    log: bool = False,
    rotate: float | None = None,
) -> Path:
    """Write a grouped bar chart: one group per label, one bar per series (legend if > 1 series).

    ``series`` maps a legend name to one value per label; None/NaN bars are left out.
    ``log``: logarithmic y axis (linear if no value is positive).
    Labels are rotated when there are many (or by ``rotate`` degrees). Returns ``path``.
    """
    path = Path(path)
    names = list(series)
    for name in names:
        if len(series[name]) != len(labels):
            raise ValueError(f"series {name!r} has {len(series[name])} values for {len(labels)} labels")
    fig = Figure(figsize=(max(6.0, 0.45 * len(labels) * max(1, len(names)) ** 0.5 + 2), 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    width = 0.8 / max(1, len(names))
    values = {name: [_number(v) for v in series[name]] for name in names}
    for k, name in enumerate(names):
        xs = [i + (k - (len(names) - 1) / 2) * width for i in range(len(labels))]
        ax.bar(xs, values[name], width=width, label=name)
    ax.set_xticks(range(len(labels)))
    angle = rotate if rotate is not None else (45 if len(labels) > 10 else 0)
    ax.set_xticklabels(labels, rotation=angle, ha="right" if angle else "center")
    if log and any(v > 0 for vs in values.values() for v in vs):  # log of nothing positive: stay linear
        ax.set_yscale("log")
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    if xlabel:
        ax.set_xlabel(xlabel)
    if len(names) > 1:
        ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def exposure_chart(
    path: str | Path, series: Mapping[str, Sequence[float | None]], title: str, ylabel: str, **kw
) -> Path:
    """``bar_chart`` over the 10 exposure bins (low to high), labelled with ``exposure.BIN_NAMES``."""
    return bar_chart(path, BIN_NAMES, series, title, ylabel, xlabel="exposure (HSV V)", **kw)


def class_chart(
    path: str | Path, series: Mapping[str, Sequence[float | None]], title: str, ylabel: str, **kw
) -> Path:
    """``bar_chart`` over the 19 classes in trainId order, labelled with ``labels.CLASS_NAMES``."""
    return bar_chart(path, CLASS_NAMES, series, title, ylabel, **kw)
