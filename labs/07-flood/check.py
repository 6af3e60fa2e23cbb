"""Lab 7's check: while a noisy VM floods, the limits in force on the running testbed contain it.

The check makes the flood itself: red1 (srv1) sends one UDP datagram per new flow to an echo server
in red3 (srv3), so every flood pair is answered and cannot be evicted to make room
(testbed/measure/load.py flood and serve --echo); once srv1's table or red1's share of it is
full, blue1 (srv1) opens new TCP connections to blue3 (srv3) (testbed/measure/reach.py). It reads
what `testbed vr SRV flow -r` and `testbed vr SRV dropstats` show at srv1 and srv3 before the
flood and during it, and stops the flood and the servers by their PIDs before it returns.
"""
import sys
import time

from testbed.lab import Finding
from testbed.labkit import listening, reach

NOISY, ECHO, VICTIM, SERVICE = "red1", "red3", "blue1", "blue3"
FLOOD_PORT, SERVICE_PORT = 9000, 8080
RATE = 400                         # new flows/s: fills a 1024-entry table in about 2 s
FILL_WAIT = 20.0                   # s at most to wait for the flood to fill what it may
ATTEMPTS = 4                       # blue1's new connections during the flood
LIMIT_DROPS = ("vm_flow_limit", "network_flow_limit")
LOAD = (sys.executable, "-m", "testbed.measure.load")
LIMITS = "your limits.sh: 'sudo testbed net flow-limit ...' (--vm, --network, --default-vm, --default-network)"

_RUNS: dict[int, dict] = {}        # one flood per `lab check`


def _vif(tb, server: str, address: str, network: str) -> str:
    return next(v["name"] for v in tb.vr(server, "vifs") if v["ip"] == address and v["network"] == network)


def _full(p: dict, vif: str) -> bool:
    """The flood has taken what it may: red1 or its network refused, or no room left."""
    return p["vms"][vif]["blocked"] or p["networks"]["red"]["blocked"] or p["entries"] >= p["capacity"] - 2


def _flood(ctx) -> dict:
    if id(ctx) in _RUNS:
        return _RUNS[id(ctx)]
    tb = ctx.testbed
    vif = _vif(tb, "srv1", "192.168.1.11", "red")
    deadline = time.monotonic() + FILL_WAIT      # a flood of before (a check's, a student's) ages first
    while time.monotonic() < deadline and any(
            (p := tb.vr(s, "pressure"))["entries"] > p["capacity"] // 2 for s in ("srv1", "srv3")):
        time.sleep(0.5)
    run: dict = {"vif": vif, "before": {s: tb.vr(s, "dropstats") for s in ("srv1", "srv3")},
                 "limits": tb.vr("srv1", "pressure")}
    with listening(tb, {SERVICE: ([SERVICE_PORT], [])}):
        procs = [tb.start(ECHO, *LOAD, "serve", "--port", str(FLOOD_PORT), "--echo", "--hold", "0.1")]
        try:
            procs.append(tb.start(NOISY, *LOAD, "flood", "--dst", "192.168.1.13", "--rate", str(RATE),
                                  "--seconds", "60", "--fixed-dport", str(FLOOD_PORT)))
            deadline = time.monotonic() + FILL_WAIT
            while not _full(tb.vr("srv1", "pressure"), vif) and time.monotonic() < deadline:
                time.sleep(0.5)
            run["filling"] = tb.vr("srv1", "pressure")
            run["attempts"] = [reach(tb, VICTIM, "tcp", "192.168.1.13", SERVICE_PORT, 21000 + i, 2.0)
                               for i in range(ATTEMPTS)]
            run["pressure"] = {s: tb.vr(s, "pressure") for s in ("srv1", "srv3")}
            run["after"] = {s: tb.vr(s, "dropstats") for s in ("srv1", "srv3")}
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait(timeout=10)
    _RUNS[id(ctx)] = run
    return run


def _grew(run: dict, server: str, reason: str) -> int:
    return run["after"][server][reason] - run["before"][server][reason]


def check_limit(ctx):
    """a flow limit keeps red1 below the size of srv1's table"""
    p = ctx.testbed.vr("srv1", "pressure")
    vif = _vif(ctx.testbed, "srv1", "192.168.1.11", "red")
    own, net, cap = p["vms"][vif]["limit"], p["networks"]["red"]["limit"], p["capacity"]
    if min(own, net) >= cap:
        return [Finding(f"red1 may fill srv1's whole table: its interface {vif} may own {own} entries and "
                        f"network red {net}, of a table of {cap}", f"'sudo testbed vr srv1 flow -r --count 1' "
                        f"(the limit column); {LIMITS}")]
    return None


def check_refused(ctx):
    """red1's excess flows are refused at srv1 and counted as vm_flow_limit or network_flow_limit"""
    run = _flood(ctx)
    refused = {r: _grew(run, "srv1", r) for r in LIMIT_DROPS}
    if not any(refused.values()):
        p = run["pressure"]["srv1"]
        return [Finding(f"srv1 refused none of red1's flood by a limit (vm_flow_limit +{refused['vm_flow_limit']}, "
                        f"network_flow_limit +{refused['network_flow_limit']}); its table held {p['entries']} of "
                        f"{p['capacity']} entries, red1's interface {p['vms'][run['vif']]['entries']}",
                        f"'sudo testbed vr srv1 dropstats' and 'sudo testbed vr srv1 flow -r' while red1 floods "
                        f"(README step 2); {LIMITS}")]
    return None


def check_others_connect(ctx):
    """blue1's new connections to blue3 succeed while red1 floods"""
    run = _flood(ctx)
    failed = run["attempts"].count(False)
    if failed:
        full = {s: _grew(run, s, "flow_table_full") for s in ("srv1", "srv3")}
        where = ", ".join(f"{s} flow_table_full +{n}" for s, n in full.items() if n) or "no flow_table_full drop"
        return [Finding(f"{failed} of {ATTEMPTS} new TCP connections blue1 -> blue3 port {SERVICE_PORT} failed "
                        f"during the flood ({where})", f"'sudo testbed vr srv1 flow -r' and "
                        f"'sudo testbed vr srv3 flow -r' (entries / capacity, per owner); {LIMITS}")]
    return None


def check_table_not_full(ctx):
    """neither srv1's nor srv3's table fills during the flood (no flow_table_full drop)"""
    run = _flood(ctx)
    findings = []
    for s in ("srv1", "srv3"):
        p, full = run["pressure"][s], _grew(run, s, "flow_table_full")
        if full or p["entries"] >= p["capacity"]:
            top = max(p["vms"].items(), key=lambda kv: kv[1]["entries"])
            findings.append(Finding(f"{s}'s table was full during the flood: {p['entries']} of {p['capacity']} "
                                    f"entries, flow_table_full +{full}; the largest owner {top[0]} held "
                                    f"{top[1]['entries']} (its limit {top[1]['limit']})",
                                    f"'sudo testbed vr {s} flow -r' while red1 floods; which owner are the "
                                    f"entries charged to at {s}? {LIMITS}"))
    return findings


def solve(ctx):
    """Runs the testbed commands of the student's (now the solution's) limits.sh on the lab's testbed."""
    for line in (ctx.folder / "limits.sh").read_text().splitlines():
        words = line.split("#")[0].split()
        if words[:1] == ["sudo"]:
            words = words[1:]
        if words[:1] != ["testbed"] or len(words) < 3:
            continue
        r = ctx.testbed.testbed(" ".join(words[1:3]), *words[3:])
        if r.returncode:
            raise SystemExit(f"error: '{line.strip()}' failed: {r.stderr.strip() or r.stdout.strip()}")
