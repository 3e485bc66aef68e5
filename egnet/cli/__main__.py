"""``python -m egnet.cli ...`` (what torchrun runs: ``torchrun -m egnet.cli train ...``)."""

import sys

from egnet.cli import main

sys.exit(main())
