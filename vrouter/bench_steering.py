"""`python -m vrouter.bench_steering`: the documented name of `python -m vrouter.tools.bench_steering`
(kept as an alias)."""
import sys

from vrouter.tools.bench_steering import main

if __name__ == "__main__":
    sys.exit(main())
