"""`testbed vr SERVER TOOL ...`: look inside a running vrouter, like Tungsten Fabric's utilities.

    testbed vr srv1 flow -l          flow table (Index<=>RIndex, 5-tuple, proto(vrf), action, stats)
    testbed vr srv1 vif --list       VM interfaces with their routing instance and counters
    testbed vr srv1 rt --dump red    routing table of a routing instance (name or id)
    testbed vr srv1 nh --list        next hops
    testbed vr srv1 dropstats        named drop counters, with what each one means
    testbed vr srv1 stats            pipeline, forwarder, tunnel and agent counters
    testbed vr srv1 reset            flush the flow table and zero the counters (experiments)
Add --json for the raw data. Inside Mininet's CLI: `vr srv1 flow -l`.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from testbed import fabric
from testbed.commands import CommandError, command, run_arguments
from testbed.rundir import RunDir
from vrouter.io import introspect
from vrouter.tools import tables

TOOLS = {
    ("flow", "-l"): ("flows", tables.format_flows), ("flow", "--list"): ("flows", tables.format_flows),
    ("vif", "--list"): ("vifs", tables.format_vifs), ("vif", "-l"): ("vifs", tables.format_vifs),
    ("nh", "--list"): ("nexthops", tables.format_nexthops), ("nh", "-l"): ("nexthops", tables.format_nexthops),
    ("dropstats",): ("dropstats", tables.format_dropstats),
    ("stats",): ("stats", tables.format_stats),
    ("reset",): ("reset", lambda r: "flow table flushed, counters zeroed\n"),
}
USAGE = "flow -l | vif --list | rt --dump VRF | nh --list | dropstats | stats | reset"


def rundir_path(prefix: str, run_root: str | None) -> Path:
    rd = RunDir(run_root, prefix)
    if not rd.fabric_file.exists():
        raise CommandError(f"no testbed with prefix {prefix!r} under {rd.root} (start one with 'testbed up')")
    return rd.path


def known_servers(rundir: Path) -> list[str]:
    try:
        return [s["name"] for s in fabric.read(Path(rundir) / "fabric.json")["servers"]]
    except (OSError, ValueError, KeyError):
        return []


def run(argv: list[str], rundir: Path, out=sys.stdout) -> int:
    """Run one `vr` invocation (argv after `vr`); prints a table, raises CommandError on bad input."""
    as_json = "--json" in argv
    argv = [a for a in argv if a != "--json"]
    if not argv:
        raise CommandError(f"usage: vr SERVER {USAGE}", code=2)
    server, rest = argv[0], tuple(argv[1:])
    servers = known_servers(rundir)
    if server not in servers:
        raise CommandError(f"unknown server {server!r} (known: {', '.join(servers) or 'none'})", code=2)
    args = {}
    if rest[:2] == ("rt", "--dump") and len(rest) == 3:
        op, fmt, args = "routes", tables.format_routes, {"vrf": rest[2]}
    elif rest in TOOLS:
        op, fmt = TOOLS[rest]
    else:
        raise CommandError(f"unknown vr tool {' '.join(rest) or '(none)'!r}: use {USAGE}", code=2)
    try:
        result = introspect.query(rundir, server, op, **args)
    except introspect.IntrospectError as exc:
        raise CommandError(f"{server}: {exc}") from None
    out.write(json.dumps(result, indent=1, sort_keys=True) + "\n" if as_json else fmt(result))
    return 0


def _arguments(p):
    run_arguments(p)
    p.add_argument("server", help="server whose vrouter to inspect")
    # REMAINDER: the tools' own flags (-l, --list, --dump) must reach us untouched
    p.add_argument("tool", nargs=argparse.REMAINDER, help=USAGE + " (add --json for raw data)")


def _pop_option(argv: list, name: str, default):
    if name in argv:
        i = argv.index(name)
        if i + 1 >= len(argv):
            raise CommandError(f"{name} needs a value", code=2)
        value = argv[i + 1]
        del argv[i:i + 2]
        return value
    return default


@command("vr", help="inspect a server's vrouter: " + USAGE, arguments=_arguments)
def vr_command(args) -> int:
    tool = list(args.tool)
    prefix = _pop_option(tool, "--prefix", args.prefix)
    run_root = _pop_option(tool, "--run-root", args.run_root)
    return run([args.server, *tool], rundir_path(prefix, run_root))
