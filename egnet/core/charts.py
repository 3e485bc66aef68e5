"""Grouped bar charts written as PNG (matplotlib Agg, no display): the one chart builder.

Figures are built with ``matplotlib.figure.Figure`` and the Agg canvas directly, so
no global pyplot state is touched and the helpers are safe in worker processes.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def _number(v: float | None) -> float:
    """None (e.g. a class with no pixels) -> NaN, which matplotlib leaves undrawn."""
    return math.nan if v is None else float(v)


def bar_figure(
    labels: Sequence[str],
    series: Mapping[str, Sequence[float | None]],
    title: str | None,
    ylabel: str,
    *,
    xlabel: str | None = None,
    log: bool = False,
    rotate: float | None = None,
    reference: tuple[str, Sequence[float | None]] | None = None,
    ylim: tuple[float, float] | None = None,
) -> Figure:
    """A grouped bar chart: one group per label, one bar per series (legend if > 1 series or a
    reference). ``series`` maps a legend name to one value per label; None/NaN bars are left out.
    ``reference``: (name, one value per label) drawn as a dashed line with markers (e.g. the
    paper's numbers). ``log``: logarithmic y axis (linear if no value is positive). Labels are
    rotated when there are many (or by ``rotate`` degrees).
    """
    names = list(series)
    for name, values in [*series.items(), *([reference] if reference else [])]:
        if len(values) != len(labels):
            raise ValueError(f"series {name!r} has {len(values)} values for {len(labels)} labels")
    fig = Figure(figsize=(max(6.0, 0.45 * len(labels) * max(1, len(names)) ** 0.5 + 2), 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    width = 0.8 / max(1, len(names))
    values = {name: [_number(v) for v in series[name]] for name in names}
    for k, name in enumerate(names):
        xs = [i + (k - (len(names) - 1) / 2) * width for i in range(len(labels))]
        ax.bar(xs, values[name], width=width, label=name)
    if reference:
        ax.plot(range(len(labels)), [_number(v) for v in reference[1]], "D--", color="black",
                label=reference[0])
    ax.set_xticks(range(len(labels)))
    angle = rotate if rotate is not None else (45 if len(labels) > 10 else 0)
    ax.set_xticklabels(labels, rotation=angle, ha="right" if angle else "center")
    if log and any(v > 0 for vs in values.values() for v in vs):  # log of nothing positive: stay linear
        ax.set_yscale("log")
    if ylim:
        ax.set_ylim(*ylim)
    if title:
        ax.set_title(title)
    ax.set_ylabel(ylabel)
    if xlabel:
        ax.set_xlabel(xlabel)
    if len(names) > 1 or reference:
        ax.legend(loc="lower right" if reference else "best", fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def interval_figure(
    labels: Sequence[str],
    points: Sequence[float | None],
    lows: Sequence[float | None],
    highs: Sequence[float | None],
    title: str | None,
    ylabel: str,
    *,
    xlabel: str | None = None,
    limit: tuple[str, float] | None = None,
    flagged: Sequence[bool] | None = None,
) -> Figure:
    """Point values with their intervals (error bars), one per label, around a zero line.
    ``limit``: (name, y) drawn as a dashed line (e.g. the largest drop a rule allows);
    ``flagged``: labels drawn in red (e.g. failing a rule). None values are left out."""
    if not len(points) == len(lows) == len(highs) == len(labels):
        raise ValueError("points, lows and highs need one value per label")
    fig = Figure(figsize=(max(6.0, 0.6 * len(labels) + 2), 4.2))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    xs = range(len(labels))
    flagged = list(flagged) if flagged is not None else [False] * len(labels)
    for x, p, lo, hi, bad in zip(xs, points, lows, highs, flagged, strict=True):
        if p is None:
            continue
        err = [[p - lo], [hi - p]] if lo is not None and hi is not None else None
        ax.errorbar([x], [p], yerr=err, fmt="o", capsize=4, color="#b42318" if bad else "#1f5fa8")
    ax.axhline(0.0, color="black", linewidth=0.8)
    if limit is not None:
        ax.axhline(limit[1], color="#b42318", linestyle="--", linewidth=1, label=limit[0])
        ax.legend(loc="best", fontsize=8)
    ax.set_xticks(list(xs))
    tilt = len(labels) > 8
    ax.set_xticklabels(labels, rotation=45 if tilt else 0, ha="right" if tilt else "center")
    if title:
        ax.set_title(title)
    ax.set_ylabel(ylabel)
    if xlabel:
        ax.set_xlabel(xlabel)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def bar_chart(path: str | Path, labels: Sequence[str], series: Mapping[str, Sequence[float | None]],
              title: str | None, ylabel: str, **kw: Any) -> Path:
    """:func:`bar_figure` written to ``path`` as PNG; returns ``path``."""
    path = Path(path)
    bar_figure(labels, series, title, ylabel, **kw).savefig(path, dpi=110)
    return path


def png_bytes(fig: Figure, dpi: int = 100) -> bytes:
    """A figure as PNG bytes (for a ``data:`` URI)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()
