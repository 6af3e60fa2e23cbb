"""The shell every experiment's command line shares: the same options around its own, the checks
before a testbed comes up, one-line errors, Ctrl-C, and one results directory per run.

Exit codes: 0 done, 1 a precondition or the experiment failed, 2 bad arguments, 130 interrupted
(the testbed is torn down by the experiment's own `finally`).
"""
from __future__ import annotations

import csv
import json
import sys
import time
from pathlib import Path

from testbed import DEFAULT_TOPOLOGY, REPO


class ExperimentError(Exception):
    """A one-line error for the user."""


def add_run_arguments(ap, name: str, prefix: str) -> None:
    """The options every experiment takes after its own; results go to results/<name>/ by default."""
    ap.add_argument("--topology", default=str(DEFAULT_TOPOLOGY))
    ap.add_argument("--prefix", default=prefix)
    ap.add_argument("--run-root", default=None)
    ap.add_argument("--out", default=str(REPO / "results" / name))
    ap.add_argument("--json", action="store_true", help="print the summary as one JSON object last")


def load_topology(path: Path):
    from testbed.topology import TopologyError, load
    try:
        return load(str(path))
    except TopologyError as exc:
        raise ExperimentError(str(exc)) from None


def results_dir(outroot: Path) -> Path:
    """Named for the time it is written, so runs never overwrite each other's results."""
    return outroot / time.strftime("%Y%m%d-%H%M%S")


def write_results(outdir: Path, fields, rows, summary, config) -> None:
    """raw.csv (one row per measurement), summary.json and config.yaml (what was run, to rerun it)."""
    import yaml
    outdir.mkdir(parents=True, exist_ok=True)
    with open(outdir / "raw.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    (outdir / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    (outdir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


def run_on_pair(topology_path: Path, prefix: str, run_root, progress, measure):
    """Bring up the topology, run ``measure(tb, pair)`` on the VM pair `testbed bench throughput` uses
    (one network, servers on different leaves) and tear down: (topology, pair, what measure returned)."""
    from testbed.bench_throughput import Pair
    from testbed.runner import Testbed
    topology = load_topology(topology_path)
    try:
        pair = Pair(topology)
    except Exception as exc:  # CommandError: one line
        raise ExperimentError(str(exc)) from None
    progress(f"bringing up {topology.name} with prefix {prefix!r}; pair {pair.ends['client']} -> "
             f"{pair.ends['server']}")
    tb = Testbed(topology, prefix=prefix, run_root=run_root, progress=lambda m: progress("  " + m)).start()
    try:
        return topology, pair, measure(tb, pair)
    finally:
        progress("tearing down")
        tb.stop()


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_cli(args, run, summary_lines, invalid: str | None = None) -> int:
    """Run `run(topology_path, progress) -> (outdir, summary)` for the parsed `args` and report it.

    `invalid` is the experiment's own complaint about its arguments (exit 2 before anything runs)."""
    if invalid:
        print(f"error: {invalid}", file=sys.stderr)
        return 2
    from testbed.checks import PreconditionError, require_testbed_host
    try:
        require_testbed_host()
        if not Path(args.topology).is_file():
            raise ExperimentError(f"no topology file {args.topology}")
        outdir, summary = run(Path(args.topology), progress)
    except (PreconditionError, ExperimentError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: testbed torn down", file=sys.stderr)
        return 130
    for line in summary_lines(summary):
        print(line)
    print(f"results written to {outdir}")
    if args.json:
        print(json.dumps(summary))
    return 0
