"""`testbed flows [RUN]`: the flow records of a run (every ended flow pair, per vrouter), filtered,
listed or summarised (docs/testbed.md, "testbed flows"). Reading and filtering: testbed/flowrecs.py.

While the testbed runs, each vrouter is first asked to write what it holds (introspection
``records`` with flush), so what ended a moment ago is there; a stopped run's files are read as
they are (``testbed down`` keeps the run directory, and the vrouters write their last records,
the pairs still in their tables included, when they stop).
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from testbed import fabric
from testbed.commands import CommandError, command, run_arguments
from testbed.flowrecs import (
    RecordsError,
    check_decision,
    check_reason,
    proto_name,
    read,
    select,
    since_seconds,
    summary,
    vm_addresses,
)
from testbed.rundir import RunDir
from vrouter.io import introspect, ipc
from vrouter.io.flowlog import flows_dir


def _args(p) -> None:
    p.add_argument("run", nargs="?", metavar="RUN",
                   help="a run directory (default: the testbed of --prefix under --run-root)")
    p.add_argument("--network", help="only this virtual network")
    p.add_argument("--vm", help="only flows of this VM (owned by it, or to or from its address)")
    p.add_argument("--server", help="only the records of this server's vrouter")
    p.add_argument("--proto", help="tcp | udp | icmp | a protocol number")
    p.add_argument("--port", type=int, help="source or destination port (ICMP: the echo id)")
    p.add_argument("--reason", help="end reason (idle_timeout, tcp_closed, evicted, ...) or drop reason")
    p.add_argument("--decision", help="allow | deny | drop | nat | held | refused")
    p.add_argument("--since", help="only records that ended within this long: 90, 90s, 5m, 1h")
    p.add_argument("--summary", action="store_true",
                   help="per network, decision and end reason: flows, packets, bytes; refusals; top talkers")
    p.add_argument("--no-flush", action="store_true",
                   help="do not ask a running testbed's vrouters to write their pending records first")
    p.add_argument("--json", action="store_true", help="the records (or the summary) as JSON")
    run_arguments(p)


def run_dir(args) -> Path:
    if args.run:
        path = Path(args.run)
        if not path.is_dir():
            raise CommandError(f"no run directory {path}", 2)
        return path
    rd = RunDir(args.run_root, args.prefix)
    if not rd.exists():
        raise CommandError(f"no testbed run with prefix {args.prefix!r} under {rd.root} "
                           "(give --prefix, or a run directory)", 2)
    return rd.path


def flush_running(rundir: Path, err=sys.stderr) -> None:
    """Ask each running vrouter to write what it holds now; a stopped one is skipped quietly."""
    try:
        servers = [s["name"] for s in fabric.read(rundir / "fabric.json")["servers"]]
    except (OSError, ValueError, KeyError):
        return
    for server in servers:
        if not ipc.introspect_socket(rundir, server).exists():
            continue
        try:
            introspect.query(rundir, server, "records", flush=True)
        except introspect.IntrospectError as exc:
            err.write(f"note: {server}: records not flushed ({exc})\n")


def filters(args, rundir: Path) -> dict[str, Any]:
    try:
        f: dict[str, Any] = {
            "network": args.network, "server": args.server, "port": args.port,
            "proto": proto_name(args.proto) if args.proto else None,
            "reason": check_reason(args.reason) if args.reason else None,
            "decision": check_decision(args.decision) if args.decision else None,
            "after": time.time() - since_seconds(args.since) if args.since else None,
        }
    except RecordsError as exc:
        raise CommandError(str(exc), 2) from None
    if args.port is not None and not 0 <= args.port <= 65535:
        raise CommandError(f"--port {args.port}: not a port (0..65535)", 2)
    if args.vm:
        f["vm"], f["vm_address"] = args.vm, vm_addresses(rundir).get(args.vm)
    return f


def _rule(decision: str | None, rule: Any, reason: str | None) -> str:
    if decision is None:
        return "-"
    if decision in ("allow", "deny") and rule is not None:
        return f"{decision}({'default' if rule == -1 else f'rule {rule}'})"
    return f"{decision}({reason})" if reason and decision != "allow" else decision


def format_records(records: list[dict[str, Any]]) -> str:
    if not records:
        return "no flow records match\n"
    lines = [f"{'Server':<8}{'Network':<10}{'Proto':<6}{'Source:Port -> Destination:Port':<44}"
             f"{'Decision':<30}{'Pkts fwd/rev':<16}{'Bytes fwd/rev':<20}{'Secs':>7}  {'End':<18}VM"]
    for r in records:
        if r["kind"] == "refused":
            lines.append(f"{r.get('server', ''):<8}{r['network']:<10}{'-':<6}{'(refused new flows)':<44}"
                         f"{'refused(' + r['reason'] + ')':<30}{r['flows']:<16}{'-':<20}"
                         f"{r['end'] - r['start']:>7.1f}  {'refused':<18}{r.get('vm') or r['vif']}")
            continue
        tup = f"{r['src']}:{r['sport']} -> {r['dst']}:{r['dport']}"
        dec = _rule(r["decision"], r.get("rule"), r.get("reason"))
        if r.get("rdecision") not in (None, r["decision"]):
            dec += "/" + _rule(r["rdecision"], r.get("rrule"), r.get("rreason"))
        lines.append(f"{r.get('server', ''):<8}{r['network']:<10}{r['proto']:<6}{tup:<44}{dec:<30}"
                     f"{str(r['packets']) + '/' + str(r['rpackets']):<16}"
                     f"{str(r['bytes']) + '/' + str(r['rbytes']):<20}{r['end'] - r['start']:>7.1f}  "
                     f"{r['end_reason']:<18}{r.get('vm') or r['vif']}")
    return "\n".join(lines) + f"\n{len(records)} records\n"


def format_summary(s: dict[str, Any]) -> str:
    t = s["total"]
    lines = [f"{t['flows']} flows, {t['packets']} packets, {t['bytes']} bytes (both directions)"]
    for key, title in (("by_network", "network"), ("by_decision", "decision"), ("by_end_reason", "end reason")):
        lines.append(f"\n{'by ' + title:<22}{'flows':>10}{'packets':>14}{'bytes':>16}")
        for name, row in s[key].items():
            lines.append(f"  {name:<20}{row['flows']:>10}{row['packets']:>14}{row['bytes']:>16}")
    if s["refused"]:
        lines.append("\nrefused new flows (network/vif/reason)")
        lines += [f"  {k:<40}{v:>10}" for k, v in s["refused"].items()]
    if s["top_talkers"]:
        lines.append("\ntop talkers (bytes, both directions)")
        lines += [f"  {x['network']:<10}{x['src'] + ' -> ' + x['dst']:<36}{x['bytes']:>16}" for x in s["top_talkers"]]
    return "\n".join(lines) + "\n"


def format_counters(c: dict[str, Any]) -> str:
    """`testbed vr SRV records`: the records' queue and file (introspection ``records``)."""
    if not c.get("enabled"):
        head = "flow records: off (flow.records: false)"
    else:
        head = (f"flow records: {c['records']} recorded, {c['lost']} lost (queue full), {c['queued']} queued "
                f"of {c['kept']}, {c['refusals']} refused flows counted")
    files = c.get("files") or [c.get("file")]
    tail = f"written: {c['written']} to {', '.join(str(f) for f in files)}"
    if c.get("write_errors"):
        tail += f"; {c['write_errors']} not written ({c.get('last_error')})"
    return head + "\n" + tail + "\n"


@command("flows", help="flow records of a run: filter, list or summarise the ended flows (--summary, --json)",
         arguments=_args)
def flows_command(args) -> int:
    rundir = run_dir(args)
    f = filters(args, rundir)
    if not args.no_flush:
        flush_running(rundir)
    if not flows_dir(rundir).is_dir():
        sys.stderr.write(f"note: no flow records in {rundir} yet (no flow ended, or flow.records is false)\n")
    try:
        records, bad = read(rundir)
    except RecordsError as exc:
        raise CommandError(str(exc)) from None
    if bad:
        sys.stderr.write(f"note: {bad} unreadable lines skipped\n")
    chosen = select(records, **f)
    if args.summary:
        s = summary(chosen)
        sys.stdout.write(json.dumps(s, indent=1) + "\n" if args.json else format_summary(s))
    else:
        sys.stdout.write(json.dumps(chosen, indent=1) + "\n" if args.json else format_records(chosen))
    return 0
