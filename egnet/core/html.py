"""HTML pages through Jinja2 (autoescaped): the one way egnet writes HTML.

Pages are self-contained: inline CSS, images as ``data:`` URIs, no scripts that run, so
they open from an MLflow artifact, a KFP HTML artifact or a mail attachment alike.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from pathlib import Path
from typing import Any

#: a preformatted text block and PNG charts: the KFP report of a step
SIMPLE_PAGE = """<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>{{ title }}</title>
<style>body { font-family: Helvetica, Arial, sans-serif; margin: 24px; } img { max-width: 100%; }</style>
</head>
<body>
<h1>{{ title }}</h1>
<pre>{{ text }}</pre>
{% for img in images %}<h2>{{ img.title }}</h2>
<img alt="{{ img.name }}" src="{{ img.uri }}">
{% endfor %}</body>
</html>
"""


def render(template: str, **context: Any) -> str:
    """``template`` rendered with ``context``: autoescaped, and a missing name is an error."""
    import jinja2

    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    return env.from_string(template).render(**context)


def data_uri(path_or_bytes: Path | bytes, mime: str | None = None) -> str:
    """A file (or bytes) as a ``data:`` URI; the type from the file name unless given."""
    data = path_or_bytes if isinstance(path_or_bytes, bytes) else Path(path_or_bytes).read_bytes()
    if mime is None:
        mime = "image/jpeg" if str(path_or_bytes).lower().endswith((".jpg", ".jpeg")) else "image/png"
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def simple_page(title: str, text: str, images: Sequence[Path]) -> str:
    """A page with ``text`` preformatted and the PNGs ``images`` below it, each titled by its name."""
    shown = [{"title": Path(p).stem.replace("_", " "), "name": Path(p).name, "uri": data_uri(p)}
             for p in images]
    return render(SIMPLE_PAGE, title=title, text=text, images=shown)
