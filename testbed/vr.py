"""`testbed vr SERVER TOOL ...`: look inside a running vrouter, like Tungsten Fabric's utilities.

    testbed vr srv1 flow -l          flow table (Index<=>RIndex, 5-tuple, proto(vrf), action, stats)
    testbed vr srv1 flow -r          live: setup/teardown rates, table, held, owners vs their limits,
                                     one block per second until Ctrl-C (--count N, --interval S)
    testbed vr srv1 vif --list       VM interfaces with their routing instance and counters
    testbed vr srv1 rt --dump red    routing table of a routing instance (name or id)
    testbed vr srv1 nh --list        next hops
    testbed vr srv1 dropstats        named drop counters, with what each one means
    testbed vr srv1 stats            pipeline, forwarder, tunnel and agent counters
    testbed vr srv1 paths            path repair: per tunnel peer the path slots, their ports, alive or
                                     dead, probes sent and answered, flows moved
    testbed vr srv1 nat              NAT: this server's floating IPs, source NAT's networks and address,
                                     SNAT ports in use and free per protocol
    testbed vr srv1 flood            flooding: per network its flood list (endpoints), MAC table, counters
    testbed vr srv1 mirror           mirror sessions here: source, sink, copies, bytes, drops (rate bound)
    testbed vr srv1 baremetal        bare-metal hosts routed here (VXLAN next hop, VNI, MAC, flood endpoint),
                                     the answers to the ARP they flood (fabric_arp_replies)
    testbed vr srv1 records [--flush]  flow records: recorded, lost, queued, written (--flush: write now)
    testbed vr srv1 reset            flush the flow table and zero the counters (experiments)
    testbed vr srv1 offload [gro on|off] [gso on|off]
                                     switch GRO / GSO at run time (none given: show both)
Add --json for the raw data (`flow -r --json`: one JSON object per line and sample). Inside
Mininet's CLI: `vr srv1 flow -l`.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from testbed import fabric
from testbed.cmd_flows import format_counters
from testbed.commands import CommandError, command, run_arguments
from testbed.rundir import RunDir
from vrouter.io import introspect
from vrouter.tools import floodtable, tables

TOOLS = {
    ("flow", "-l"): ("flows", tables.format_flows), ("flow", "--list"): ("flows", tables.format_flows),
    ("vif", "--list"): ("vifs", tables.format_vifs), ("vif", "-l"): ("vifs", tables.format_vifs),
    ("nh", "--list"): ("nexthops", tables.format_nexthops), ("nh", "-l"): ("nexthops", tables.format_nexthops),
    ("dropstats",): ("dropstats", tables.format_dropstats),
    ("stats",): ("stats", tables.format_stats),
    ("paths",): ("paths", tables.format_paths),
    ("nat",): ("nat", tables.format_nat),
    ("flood",): ("flood", floodtable.format_flood),
    ("mirror",): ("mirror", tables.format_mirror),
    ("baremetal",): ("baremetal", tables.format_baremetal),
    ("records",): ("records", format_counters),
    ("reset",): ("reset", lambda r: "flow table flushed, counters zeroed\n"),
}
RATE_USAGE = "flow -r [--count N] [--interval S]"
OFFLOAD_USAGE = "offload [gro on|off] [gso on|off]"
USAGE = (f"flow -l | {RATE_USAGE} | vif --list | rt --dump VRF | nh --list | dropstats | stats | paths | nat | "
         f"flood | mirror | baremetal | records [--flush] | reset | {OFFLOAD_USAGE}")
PRESSURE_OP = "pressure"


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
    if rest[:2] in (("flow", "-r"), ("flow", "--rate")):
        count, interval = rate_options(list(rest[2:]))
        return watch(rundir, server, count, interval, as_json, out)
    if rest[:2] == ("rt", "--dump") and len(rest) == 3:
        op, fmt, args = "routes", tables.format_routes, {"vrf": rest[2]}
    elif rest == ("offload",):          # `set` wants something to set: the switches are in `stats`
        op, fmt = "stats", lambda r: _format_offloads({k: r[k]["enabled"] for k in ("gro", "gso")})
    elif rest[:1] == ("offload",):
        op, fmt, args = "set", _format_offloads, offload_args(list(rest[1:]))
    elif rest == ("records", "--flush"):
        op, fmt, args = "records", format_counters, {"flush": True}
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


def offload_args(words: list[str]) -> dict[str, bool]:
    """`gro off gso on` -> {"gro": False, "gso": True} (the introspection op `set`)."""
    if not words or len(words) % 2 or any(w not in ("gro", "gso") for w in words[::2]) or \
            any(w not in ("on", "off") for w in words[1::2]):
        raise CommandError(f"usage: vr SERVER {OFFLOAD_USAGE}", code=2)
    return {name: state == "on" for name, state in zip(words[::2], words[1::2], strict=True)}


def _format_offloads(result: dict) -> str:
    return f"gro {'on' if result['gro'] else 'off'}, gso {'on' if result['gso'] else 'off'}\n"


def read_pressure(rundir: Path, server: str) -> dict:
    """The forwarder's `pressure` answer (the flow table's occupancy, limits, queue and uptime)."""
    try:
        return introspect.query(rundir, server, PRESSURE_OP)
    except introspect.IntrospectError as exc:
        raise CommandError(f"{server}: {exc}") from None


def rate_options(argv: list[str]) -> tuple[int | None, float]:
    """--count N (samples to print, default: until Ctrl-C) and --interval S (default 1 s)."""
    count, interval = _pop_option(argv, "--count", None), _pop_option(argv, "--interval", "1")
    if argv:
        raise CommandError(f"unknown option(s) for flow -r: {' '.join(argv)} (use {RATE_USAGE})", code=2)
    try:
        count = None if count is None else int(count)
        interval = float(interval)
    except ValueError:
        raise CommandError(f"flow -r: --count takes a whole number and --interval seconds ({RATE_USAGE})",
                           code=2) from None
    if (count is not None and count < 1) or not interval > 0:
        raise CommandError("flow -r: --count must be >= 1 and --interval > 0", code=2)
    return count, interval


def watch(rundir: Path, server: str, count: int | None, interval: float, as_json: bool, out=sys.stdout,
          sleep=None, clock=None) -> int:
    """`flow -r`: a first sample, then one block (or JSON line) per interval; Ctrl-C ends it quietly."""
    sleep, clock = sleep or time.sleep, clock or time.monotonic
    try:
        prev = read_pressure(rundir, server)
        t_prev = next_at = clock()
        n = 0
        while count is None or n < count:
            next_at += interval
            sleep(max(0.0, next_at - clock()))
            cur = read_pressure(rundir, server)
            t = clock()
            rates = tables.flow_rates(prev, cur, t - t_prev)
            n += 1
            if as_json:
                out.write(json.dumps({"server": server, "sample": n, **cur, "rates": rates},
                                     sort_keys=True) + "\n")
            else:
                out.write(("\n" if n > 1 else "") + tables.format_flow_rate(server, cur, rates, prev))
            out.flush()
            prev, t_prev = cur, t
    except KeyboardInterrupt:
        if not as_json:
            out.write("\n")  # the shell's ^C stays on a line of its own
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
