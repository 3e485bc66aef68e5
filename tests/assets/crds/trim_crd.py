"""Trim a published CRD to what the tests need: the served version's openAPIV3Schema.

Usage (from the repository root, with the CRD files of the pinned releases):

    python tests/assets/crds/trim_crd.py SRC.yaml SOURCE_NOTE > tests/assets/crds/NAME.schema.json

Only the served-and-stored version is kept and the `description` strings are dropped
(they are ~80% of the bytes); every type, property, required list, pattern, enum,
limit and `x-kubernetes-*` extension is kept as published.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml


def strip_descriptions(node):
    """Drop schema `description` annotations (string values), keep properties named so."""
    if isinstance(node, dict):
        return {k: strip_descriptions(v) for k, v in node.items()
                if not (k == "description" and isinstance(v, str))}
    if isinstance(node, list):
        return [strip_descriptions(v) for v in node]
    return node


def trim(crd: dict, source: str) -> dict:
    (version,) = [v for v in crd["spec"]["versions"] if v.get("served") and v.get("storage")]
    return {
        "source": source,
        "crd": crd["metadata"]["name"],
        "group": crd["spec"]["group"],
        "kind": crd["spec"]["names"]["kind"],
        "version": version["name"],
        "scope": crd["spec"]["scope"],
        "openAPIV3Schema": strip_descriptions(version["schema"]["openAPIV3Schema"]),
    }


if __name__ == "__main__":
    src, note = Path(sys.argv[1]), sys.argv[2]
    json.dump(trim(yaml.safe_load(src.read_text()), note), sys.stdout, indent=1, sort_keys=True)
    sys.stdout.write("\n")
