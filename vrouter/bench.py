"""Alias: `python -m vrouter.bench` (the documented name) runs `vrouter.tools.bench`."""
import sys

from vrouter.tools.bench import main

if __name__ == "__main__":
    sys.exit(main())
