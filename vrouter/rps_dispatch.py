"""Alias: `python -m vrouter.rps_dispatch` (the documented name) runs `vrouter.processes.dispatcher`."""
import sys

from vrouter.processes.dispatcher import main

if __name__ == "__main__":
    sys.exit(main())
