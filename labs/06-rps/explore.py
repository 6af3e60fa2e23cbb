"""Lab 6's simulator: N random flows through the real Rps with a bucket table, per-worker load.

    .venv/bin/python labs/06-rps/explore.py [--flows 64] [--weights 1,1] [--then 1,1,1] [--table FILE]

Prints each worker's buckets, flows and share, and Jain's index over the flows; with --then, the
table is updated to the new weights and it prints how many buckets and flows changed worker (each
moved flow punts once more on its new worker). --table uses that file's apportion() and
rebalance() (default: your lab-work/06-rps/table.py if it exists, else the core's own).
"""
import argparse
import random
import sys
from pathlib import Path

from testbed.lab import DEFAULT_WORK, load_module
from vrouter.core.buckets import BucketTable
from vrouter.core.fairness import jain_index
from vrouter.core.steering import FIELDS, Rps


def _weights(text):
    return {i: float(w) for i, w in enumerate(text.split(","))}


def _load(table):
    path = Path(table) if table else DEFAULT_WORK / "06-rps" / "table.py"
    if not path.is_file():
        print("using the core's apportion() and rebalance() (vrouter/core/buckets.py)")
        return {}
    print(f"using apportion() and rebalance() of {path}")
    mod = load_module(path, "lab06_explore_table")
    return {"apportion": mod.apportion, "rebalance": mod.rebalance}


def _report(rps, flows, weights):
    owners = [rps.owner(k) for k in flows]
    counts = rps.table.counts()
    for w in sorted(weights):
        n = owners.count(w)
        print(f"  worker {w}  weight {weights[w]:>4g}  buckets {counts.get(w, 0):>4}  flows {n:>6}  "
              f"share {n / len(flows):6.1%}")
    print(f"  Jain's index over the flows: {jain_index([owners.count(w) for w in sorted(weights)]):.3f}")
    return owners


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--flows", type=int, default=64)
    p.add_argument("--weights", default="1,1", help="weights of workers 0, 1, ... (default 1,1)")
    p.add_argument("--then", default=None, help="new weights to update the table to")
    p.add_argument("--buckets", type=int, default=128)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--table", default=None, help="a file with apportion() and rebalance()")
    a = p.parse_args(argv)
    rnd = random.Random(a.seed)
    flows = [(100, 6, 0xC0A80100 + rnd.randrange(1, 255), 0xC0A80100 + rnd.randrange(1, 255),
              rnd.randrange(1024, 65536), 80) for _ in range(a.flows)]
    weights = _weights(a.weights)
    table = BucketTable(weights, a.buckets, **_load(a.table))
    if len(table.buckets) != a.buckets:
        print(f"error: apportion() gave {len(table.buckets)} buckets instead of {a.buckets}: flows that hash "
              "beyond them would have no worker (TODO 1; 'testbed lab check 6')", file=sys.stderr)
        return 1
    rps = Rps(FIELDS, table)
    print(f"{a.flows} flows, {a.buckets} buckets, weights {a.weights}")
    before = _report(rps, flows, weights)
    if a.then:
        new = _weights(a.then)
        try:
            moved = table.update(new)
        except ValueError as exc:      # the core's own check: a new table as long as the old one
            print(f"error: the update to {a.then} failed: {exc} (apportion() or rebalance() gave a table of "
                  "another size; 'testbed lab check 6')", file=sys.stderr)
            return 1
        print(f"update to weights {a.then}: {moved} buckets changed worker")
        after = _report(rps, flows, new)
        changed = sum(x != y for x, y in zip(before, after, strict=True))
        print(f"  flows that changed worker (each punts again): {changed}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
