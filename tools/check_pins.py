"""Refuse to build the images while a pin is a placeholder (run by `make image` first).

Two kinds of pins cannot always be filled where the repository is edited: a base image's
digest (``@sha256:UNRESOLVED``: find it with ``docker buildx imagetools inspect IMAGE:TAG``)
and wheel hashes of an index that was not reachable (``--hash=sha256:UNRESOLVED``: run
``make lock`` where it is). Each placeholder is one line naming the file and what to do;
exit 1 if there is any. The Dockerfiles fail on them as well (FROM rejects the reference,
the CPU build checks torch-cpu.lock), this only says it first and clearly.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PLACEHOLDER = "UNRESOLVED"
FILES = ["docker/Dockerfile", "docker/Dockerfile.cpu",
         "requirements/images.lock", "requirements/torch-cpu.lock"]


def problems(repo: Path = REPO) -> list[str]:
    out = []
    for name in FILES:
        for n, line in enumerate((repo / name).read_text().splitlines(), 1):
            if line.lstrip().startswith("#"):
                continue
            image = re.search(r"=(\S+)@sha256:" + PLACEHOLDER, line)
            if image:
                out.append(f"{name}:{n}: base image {image[1]} has no digest: put the one of "
                           f"`docker buildx imagetools inspect {image[1]}` in its place")
            elif "--hash=sha256:" + PLACEHOLDER in line:
                out.append(f"{name}:{n}: a wheel hash is missing: run `make lock` where the package index "
                           "is reachable")
    return out


def main() -> int:
    found = problems()
    for line in found:
        print(f"check_pins: {line}", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
