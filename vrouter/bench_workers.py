"""`python -m vrouter.bench_workers`: the documented name of `python -m vrouter.tools.bench_workers`
(kept as an alias)."""
import sys

from vrouter.tools.bench_workers import main

if __name__ == "__main__":
    sys.exit(main())
