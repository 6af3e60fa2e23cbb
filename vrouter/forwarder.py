"""Alias: `python -m vrouter.forwarder` (the documented name) runs `vrouter.processes.forwarder`."""
import sys

from vrouter.processes.forwarder import main

if __name__ == "__main__":
    sys.exit(main())
