"""Alias: `python -m vrouter.bench_workers` (the documented name) runs `vrouter.tools.bench_workers`."""
import sys

from vrouter.tools.bench_workers import main

if __name__ == "__main__":
    sys.exit(main())
