"""Alias: `python -m vrouter.bench_steering` (the documented name) runs `vrouter.tools.bench_steering`."""
import sys

from vrouter.tools.bench_steering import main

if __name__ == "__main__":
    sys.exit(main())
