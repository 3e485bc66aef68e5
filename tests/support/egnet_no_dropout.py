"""`egnet` with dropout switched off, for comparing process layouts step by step.

Dropout masks are drawn per process, so one process with batch 4 and two with batch 2
draw different masks even from the same seed; everything else is production code.
Run as a script: ``python tests/support/egnet_no_dropout.py train ...`` (or under torchrun).
"""

import sys

import torch

torch.nn.Dropout.forward = lambda self, x: x  # noqa: E731 - identity: the layout-dependent part

from egnet.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
