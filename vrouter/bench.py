"""`python -m vrouter.bench`: the documented name of `python -m vrouter.tools.bench` (kept as an alias)."""
import sys

from vrouter.tools.bench import main

if __name__ == "__main__":
    sys.exit(main())
