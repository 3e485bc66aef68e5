"""`egnet`: one subcommand per pipeline step (docs/architecture.md, "The CLI").

The top layer: the only package that wires the layers below together (``parser``: the
commands and their options; ``handlers``: what each runs). Every step takes ``--params FILE``
(default params.yaml), ``--profile NAME`` and ``--set section.key=value`` (repeatable). Exit
codes: 0 success; 1 the step ran and found a problem (bad data, gate refused); 2 usage or
configuration error, one line on stderr.
"""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Sequence

from egnet.cli.parser import build_parser
from egnet.core.errors import EgnetError, StepFailed

__all__ = ["build_parser", "main", "run_step"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        from egnet.core.config import load_config

        cfg = load_config(args.params, args.profile, args.overrides)
        code = args.handler(args, cfg)
    except EgnetError as exc:
        print(f"egnet: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("egnet: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `egnet ... | head`: the reader left; no traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except Exception as exc:
        # an MLflow 401/403 no step turned into its own message: still one line, exit 2
        from egnet.tracking.access import denial

        refused = denial(exc)
        if refused is not None:
            print(f"egnet: error: {refused}", file=sys.stderr)
            return 2
        if not isinstance(exc, OSError) or exc.errno not in _DISK_FULL:
            raise
        # steps write through atomic_dir/atomic_file: the temporary output is gone already
        where = exc.filename or getattr(args, "out", None) or "the output"
        print(f"egnet: error: {_DISK_FULL[exc.errno]} writing {where}; no partial output was kept",
              file=sys.stderr)
        return 1
    return int(code or 0)


def run_step(argv: Sequence[str], config: Sequence[str] = ()) -> int:
    """``egnet <argv> <config>`` in this process, for a pipeline step; raises StepFailed on a
    non-zero exit (the command has printed its error line)."""
    full = [str(a) for a in argv] + list(config)
    print("egnet " + " ".join(full), flush=True)
    code = main(full)
    if code != 0:
        raise StepFailed(f"`egnet {' '.join(full[:2])} ...` exited with {code}")
    return code


#: errors that mean "the disk (or the process's file size limit) is full", one line each
_DISK_FULL = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
              errno.EFBIG: "file too large (file size limit reached)"}


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
