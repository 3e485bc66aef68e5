"""Text output in one place: number formatting and aligned / Markdown tables."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

MISSING = "-"


def fmt(v: float | None, digits: int = 4, *, pct: bool = False, missing: str = MISSING) -> str:
    """A metric for a table: ``digits`` decimals (``pct``: as a percentage with 1 decimal);
    ``missing`` for None or NaN."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return missing
    return f"{100 * v:.1f}" if pct else f"{v:.{digits}f}"


def fmt_delta(v: float | None, digits: int = 4) -> str:
    """A signed difference (``+0.0123``); ``-`` when undefined."""
    return MISSING if v is None else f"{v:+.{digits}f}"


def render_table(rows: Sequence[Sequence[Any]], align: Sequence[str] | None = None) -> str:
    """Plain aligned columns; the first row is the header, a dashed rule under it.

    ``align``: one of ``<`` / ``>`` per column (default: all left).
    """
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    align = list(align) if align else ["<"] * len(widths)

    def line(r: Sequence[Any]) -> str:
        return "  ".join(f"{str(c):{a}{w}}" for c, a, w in zip(r, align, widths, strict=True)).rstrip()

    return "\n".join([line(rows[0]), "  ".join("-" * w for w in widths), *(line(r) for r in rows[1:])])


def render_markdown(rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub Markdown table; the first row is the header."""
    def cell(c: Any) -> str:
        return str(c).replace("|", "\\|")

    out = ["| " + " | ".join(cell(c) for c in rows[0]) + " |", "|" + "---|" * len(rows[0])]
    out += ["| " + " | ".join(cell(c) for c in r) + " |" for r in rows[1:]]
    return "\n".join(out)
