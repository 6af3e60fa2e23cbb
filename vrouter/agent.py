"""Alias: `python -m vrouter.agent` (the documented name) runs `vrouter.processes.agent`."""
import sys

from vrouter.processes.agent import main

if __name__ == "__main__":
    sys.exit(main())
