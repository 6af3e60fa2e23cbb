"""The shell every experiment's command line shares: the same options around its own, the checks
before a testbed comes up, one-line errors, Ctrl-C, and bringing a testbed up around a measurement.
What they measure with and how they write results is testbed/measure/ (pairs, runners, spread,
results, provenance, plot).

Exit codes: 0 done, 1 a precondition or the experiment failed, 2 bad arguments, 130 interrupted
(the testbed is torn down by the experiment's own `finally`).
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

from testbed import DEFAULT_TOPOLOGY
from testbed.checks import PreconditionError, require_testbed_host
from testbed.measure.pairs import PairError, VmPair, pick_pair
from testbed.measure.results import RESULTS
from testbed.runner import Testbed
from testbed.topology import Topology, TopologyError, load

T = TypeVar("T")
Progress = Callable[[str], None]


class ExperimentError(Exception):
    """A one-line error for the user."""


def add_run_arguments(ap: argparse.ArgumentParser, name: str, prefix: str) -> None:
    """The options every experiment takes after its own; results go to results/<name>/ by default."""
    ap.add_argument("--topology", default=str(DEFAULT_TOPOLOGY), help="topology YAML (default topologies/default.yaml)")
    ap.add_argument("--prefix", default=prefix, help=f"name prefix of the experiment's testbed (default {prefix})")
    ap.add_argument("--run-root", default=None, help="where its run directory goes (default /run/vnet-testbed)")
    ap.add_argument("--out", default=str(RESULTS / name),
                    help=f"results root: a <timestamp>/ directory per run (default results/{name})")
    ap.add_argument("--json", action="store_true", help="print the summary as one JSON object last")


def load_topology(path: Path) -> Topology:
    try:
        return load(str(path))
    except TopologyError as exc:
        raise ExperimentError(str(exc)) from None


def pair_of(topology: Topology, **options: Any) -> VmPair:
    """testbed.measure.pairs.pick_pair, its complaint as an ExperimentError."""
    try:
        return pick_pair(topology, **options)
    except PairError as exc:
        raise ExperimentError(str(exc)) from None


def run_on_pair(topology_path: Path, prefix: str, run_root: str | None, progress: Progress,
                measure: Callable[[Testbed, VmPair], T]) -> tuple[Topology, VmPair, T]:
    """Bring up the topology, run ``measure(tb, pair)`` on the VM pair `testbed bench throughput` uses
    (one network, servers on different leaves) and tear down: (topology, pair, what measure returned)."""
    topology = load_topology(topology_path)
    pair = pair_of(topology)
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


def run_cli(args: argparse.Namespace, run: Callable[[Path, Progress], tuple[Path, dict]],
            summary_lines: Callable[[dict], Iterable[str]], invalid: str | None = None) -> int:
    """Run `run(topology_path, progress) -> (outdir, summary)` for the parsed `args` and report it.

    `invalid` is the experiment's own complaint about its arguments (exit 2 before anything runs)."""
    if invalid:
        print(f"error: {invalid}", file=sys.stderr)
        return 2
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
    print(f"results written to {outdir} (provenance.json: commit, versions, command)")
    if args.json:
        print(json.dumps(summary))
    return 0


def numbers(text: str, allow_zero: bool = False) -> tuple[float, ...]:
    """An argparse type: comma-separated positive (or, with `allow_zero`, non-negative) numbers."""
    try:
        values = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas: {text}") from None
    if not values or any(v < 0 or (v == 0 and not allow_zero) for v in values):
        raise argparse.ArgumentTypeError(f"expected {'non-negative' if allow_zero else 'positive'} numbers: {text}")
    return values


def main(ap: argparse.ArgumentParser, config_from: Callable[[argparse.Namespace], tuple[Any, str | None]],
         run: Callable[..., tuple[Path, dict]], summary_lines: Callable[[dict], Iterable[str]],
         argv: list[str] | None = None) -> int:
    """The main() of an experiment whose `config_from(args)` gives (config, complaint or None) and
    whose `run(topology_path, config, prefix, run_root, outroot, progress)` gives (outdir, summary)."""
    args = ap.parse_args(argv)
    cfg, invalid = config_from(args)
    return run_cli(args, lambda topology, progress: run(
        topology, cfg, args.prefix, args.run_root, Path(args.out), progress), summary_lines, invalid)
