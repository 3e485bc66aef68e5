"""`egnet params show | resolve`: what each key's value is and where it came from.

- ``show [KEY ...] [--changed]``: every key (or those under the given sections/keys), its
  value and its source: ``base`` (configs/paper.yaml), ``profile`` (configs/<profile>.yaml),
  ``params.yaml`` (an explicit edit: differs from the base), ``--set``.
- ``resolve --out FILE``: the resolved params, every key with its final value, as a params
  file the steps can read (``--params FILE``): the first DVC stage writes
  ``outputs/params.yaml`` and every other stage declares its params from it.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path
from typing import Any

from egnet.core.config import Config, Resolved, leaves, resolve_params, write_resolved
from egnet.core.errors import ConfigError
from egnet.core.text import render_table


def _value(v: Any) -> str:
    if isinstance(v, str):
        return v if v else '""'
    return json.dumps(v)  # true/false, numbers, [1024, 512]


def _resolved(args: argparse.Namespace) -> Resolved:
    return resolve_params(args.params, args.profile, args.overrides)


def _select(keys: dict[str, Any], wanted: list[str]) -> list[str]:
    if not wanted:
        return list(keys)
    out = [k for k in keys if any(k == w or k.startswith(f"{w}.") for w in wanted)]
    unknown = [w for w in wanted if not any(k == w or k.startswith(f"{w}.") for k in keys)]
    if unknown:
        raise ConfigError(f"egnet params show: no key or section {unknown[0]!r}")
    return out


def _word(resolved: Resolved, source: str) -> str:
    """``profile quick`` for the overlay, else the word itself."""
    return f"profile {resolved.profile}" if source == "profile" else source


def _rel(path: str) -> str:
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return path


def _chain(resolved: Resolved) -> str:
    """``base configs/paper.yaml < profile configs/quick.yaml < params.yaml (...) < --set``."""
    steps = []
    for word, full in resolved.files.items():
        path = _rel(full)
        if word == "profile" and path == resolved.files.get("base"):
            continue  # the paper profile is the base itself
        if word in ("base", "profile"):
            steps.append(f"{word} {path}")
        elif word == "--set":
            steps.append(word)
        elif "base" in resolved.files:
            steps.append(f"{path} (where it differs from the base)")
        else:
            steps.append(f"{path} (resolved: {resolved.origin})")
    return " < ".join(steps)


def show_main(args: argparse.Namespace, cfg: Config) -> int:
    resolved = _resolved(args)
    values = leaves(cfg.to_dict())
    keys = _select(values, args.keys)
    if args.changed:
        keys = [k for k in keys if resolved.sources.get(k, "base") != "base"]
    rows = [("key", "value", "from")]
    rows += [(k, _value(values[k]), _word(resolved, resolved.sources.get(k, "base"))) for k in keys]
    origin = resolved.sources.get("profile")
    print(f"profile {resolved.profile} (from {origin}); precedence: {_chain(resolved)}")
    print(render_table(rows) if len(rows) > 1 else "(no key differs from the base)")
    return 0


def resolve_main(args: argparse.Namespace, cfg: Config) -> int:
    resolved = _resolved(args)
    out = write_resolved(cfg, resolved, args.out)
    counts = Counter(resolved.sources.get(k, "base") for k in leaves(cfg.to_dict()) if k != "profile")
    parts = ", ".join(f"{n} from {_word(resolved, w)}" for w, n in counts.most_common())
    print(f"params: {resolved.origin} -> {out} ({parts})")
    return 0
