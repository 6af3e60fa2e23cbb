"""`python -m vrouter.forwarder`: the documented name of `python -m vrouter.processes.forwarder` (kept as an alias)."""
import sys

from vrouter.processes.forwarder import main

if __name__ == "__main__":
    sys.exit(main())
