"""`egnet` with a :class:`tests.support.host_syncs.HostSyncCounter` installed, for torchrun.

Each process writes its events to ``$EGNET_SYNC_LOG.<RANK>.json``; everything else is
production code. Run as a script: ``python tests/support/count_host_syncs.py train ...``
(or under torchrun).
"""

import os
import sys

from egnet.cli import main
from tests.support.host_syncs import HostSyncCounter

if __name__ == "__main__":
    with HostSyncCounter() as counter:
        code = main(sys.argv[1:])
    counter.dump(f"{os.environ['EGNET_SYNC_LOG']}.{os.environ.get('RANK', '0')}.json")
    sys.exit(code)
