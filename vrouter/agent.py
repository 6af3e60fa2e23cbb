"""`python -m vrouter.agent`: the documented name of `python -m vrouter.processes.agent` (kept as an alias)."""
import sys

from vrouter.processes.agent import main

if __name__ == "__main__":
    sys.exit(main())
