"""Bar charts over the NightCity axes: the 10 exposure bins and the 19 classes (core.charts.bar_chart)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from egnet.core.charts import bar_chart
from egnet.data.exposure import BIN_NAMES
from egnet.data.labels import CLASS_NAMES


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
