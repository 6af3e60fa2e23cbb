"""`python -m vrouter.rps_dispatch`: the documented name of `python -m vrouter.processes.dispatcher`
(kept as an alias)."""
import sys

from vrouter.processes.dispatcher import main

if __name__ == "__main__":
    sys.exit(main())
