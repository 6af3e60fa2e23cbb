"""Flow setup bench: `testbed bench flowsetup [--quick] [--json]` (issue 11, item 5).

How many new flows per second a vrouter sets up end to end, against Tungsten Fabric's release gate
(10,000 policy flows/s per compute node) and our goal (20,000). One testbed on
topologies/default.yaml; generators (`python -m testbed.measure.load flood`, the flow experiments'
own, started in the VMs by testbed/measure/loadrun.py) in the VMs of the first cross-leaf server
pair send one UDP datagram per new flow, paced, from a common start, to the VM of the same network
on the other server: red1 -> red3 and blue1 -> blue3, srv1 -> srv3. Per step of an increasing
offered rate, the sending and the receiving vrouter are sampled (`pressure`) before, around a fixed
measuring window while the generators send, and after; a vrouter's setup rate is the flows whose
two entries it installed in the window per second (testbed/measure/flowsetup.py has the
arithmetic, the stop rule and the report).

What is not measured: the table (capacity raised in the topology, flows per step bounded by it, the
tables flushed between steps), the per-VM and per-network limits (raised to the capacity at run
time through the VNC's set_flow_limit) and the generators (as many as the offered rate needs, after
measuring what one reaches unpaced). All of it is printed and in the JSON.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from collections.abc import Callable

from testbed import DEFAULT_TOPOLOGY
from testbed.commands import CommandError, command, group, prefix_arg
from testbed.measure import flowsetup, loadrun, provenance
from testbed.measure.pairs import PairError, VmPair, pick_pair, same_servers
from testbed.measure.runners import wait_ping
from testbed.net_cmd import vnc_call
from testbed.runner import Testbed
from testbed.topology import Topology, from_dict, load
from testbed.vr import read_pressure
from vrouter.io import introspect

CAPACITY = 262_144       # entries: 40k flows/s offered for 2.9 s, two entries each, fit (TABLE_SHARE)
LEAD, TAIL = 0.5, 0.3    # s the generators send before the window opens and after it closed
START_DELAY = 0.4        # s from spawning the generators to their common start (Python starts in ~0.1 s)
MAX_GENERATORS = 4       # processes at once; on 2 cores more only take CPU from the vrouters
SETTLE = 2.5             # s at most for late decisions after the generators stopped (hold_timeout 2 s)
CALIBRATE_S = 1.0


def bench_topology(capacity: int) -> tuple[Topology, int, str]:
    """The default topology with a `flow` section raising the table's capacity."""
    doc = copy.deepcopy(load(DEFAULT_TOPOLOGY).raw)
    doc["flow"] = {"capacity": capacity}
    topo = from_dict(doc, source=f"{DEFAULT_TOPOLOGY} + flow.capacity {capacity}")
    return topo, capacity, "topology flow.capacity"


def raise_limits(tb: Testbed, vms: list[str], networks: list[str], limit: int) -> tuple[dict, str]:
    """Per-VM and per-network flow limits of the bench's VMs and networks set to `limit` at run time
    (set_flow_limit); waits until every vrouter has the new configuration."""
    done: dict[str, int] = {}
    generation = None
    for kind, names in (("vm", vms), ("network", networks)):
        for name in names:
            generation = vnc_call(tb.path, "set_flow_limit", kind, name, limit)["generation"]
            done[f"{kind} {name}"] = limit
    deadline = time.monotonic() + 5.0
    for server in sorted({vm["server"] for vm in vnc_call(tb.path, "dump")["vms"] if vm["name"] in vms}):
        while introspect.query(tb.path, server, "stats").get("generation", 0) < generation:
            if time.monotonic() > deadline:
                raise CommandError(f"{server} did not get the raised flow limits within 5 s")
            time.sleep(0.1)
    return done, ", ".join(f"{k} {v}" for k, v in done.items()) + " (set_flow_limit)"


def sample(tb: Testbed, server: str, drops: bool) -> dict:
    """One vrouter's sample (testbed/measure/flowsetup.py); with `drops` also its drop counters and
    the server's UDP socket losses."""
    t0 = time.monotonic()
    p = read_pressure(tb.path, server)
    out = {"t": (t0 + time.monotonic()) / 2, "pressure": p,
           "vifs": {v["name"]: v for v in introspect.query(tb.path, server, "vifs")}}
    if drops:
        out["drops"] = introspect.query(tb.path, server, "dropstats")
        out["udp"] = flowsetup.udp_errors(tb.host(server).cmd("cat /proc/net/snmp"))
    return out


def spawn(tb: Testbed, vm: str, dst: str, rate: float, seconds: float, start_at: float) -> loadrun.LoadProcess:
    """A flood generator in `vm`: `rate` new flows/s (0: unpaced) for `seconds` from `start_at`
    (time.monotonic())."""
    return loadrun.flood(tb.host(vm), dst, round(rate, 1), round(seconds, 3), start_at=round(start_at, 3))


def collect(gen: loadrun.LoadProcess, timeout: float) -> dict:
    """The generator's final record ({"done", "sent", "errors", "rate", ...}: testbed/measure/load.py)."""
    try:
        return gen.wait(timeout)
    except loadrun.LoadError as exc:
        raise CommandError(f"flow generator: {exc}") from None


def settle(tb: Testbed, servers: list[str]) -> None:
    """Wait until the vrouters' installs stop growing (late decisions), at most SETTLE s."""
    deadline, last = time.monotonic() + SETTLE, None
    while time.monotonic() < deadline:
        now = [read_pressure(tb.path, s).get("installs") for s in servers]
        if now == last:
            return
        last = now
        time.sleep(0.25)


def run_step(tb: Testbed, pairs: list[VmPair], roles: dict[str, str], taps: dict[str, list[str]], offered: float,
             window: float, n_gens: int) -> dict:
    """Offer `offered` new flows/s from `n_gens` generators over the pairs; the step's figures."""
    servers = list(roles)
    for s in servers:
        introspect.query(tb.path, s, "reset")
    samples: dict[str, dict] = {s: {"before": sample(tb, s, True)} for s in servers}
    seconds = LEAD + window + TAIL
    start_at = time.monotonic() + START_DELAY
    procs = [spawn(tb, pairs[i % len(pairs)].client_vm.name, pairs[i % len(pairs)].server_vm.address,
                   offered / n_gens, seconds, start_at) for i in range(n_gens)]
    try:
        time.sleep(max(0.0, start_at + LEAD - time.monotonic()))
        for s in servers:
            samples[s]["a"] = sample(tb, s, False)
        time.sleep(max(0.0, start_at + LEAD + window - time.monotonic()))
        for s in servers:
            samples[s]["b"] = sample(tb, s, False)
        gens = [collect(p, timeout=seconds + 10) for p in procs]
    finally:
        for p in procs:
            p.kill()
    settle(tb, servers)
    for s in servers:
        samples[s]["after"] = sample(tb, s, True)
    vrouters = {s: flowsetup.vrouter_figures(samples[s], taps[s]) for s in servers}
    return flowsetup.step_figures(offered, window, gens, vrouters)


def calibrate(tb: Testbed, pair: VmPair, servers: list[str]) -> float:
    """Datagrams/s one unpaced generator reaches in a VM (its vrouter reading as fast as it can)."""
    proc = spawn(tb, pair.client_vm.name, pair.server_vm.address, 0, CALIBRATE_S, time.monotonic() + START_DELAY)
    rate = collect(proc, timeout=CALIBRATE_S + 10)["rate"]
    settle(tb, servers)
    return rate


def _pairs(topo: Topology) -> list[VmPair]:
    try:
        return same_servers(topo, pick_pair(topo))
    except PairError as exc:
        raise CommandError(str(exc)) from None


def flowsetup_bench(quick: bool = False, prefix: str = "vtf", run_root: str | None = None,
                    progress: Callable[[str], None] | None = None, rates: tuple[int, ...] | None = None,
                    window: float | None = None) -> dict:
    """Python API of `testbed bench flowsetup`; `progress` gets the step table as it grows."""
    say = progress or (lambda m: None)
    started = time.time()
    rates = rates or (flowsetup.QUICK_RATES if quick else flowsetup.RATES)
    window = window or (1.5 if quick else 3.0)
    topo, capacity, capacity_source = bench_topology(CAPACITY)
    pairs = _pairs(topo)
    roles = {pairs[0].client: "sending", pairs[0].server: "receiving"}
    say(f"bringing up {topo.name}: {', '.join(p.ends['client'] + ' -> ' + p.ends['server'] for p in pairs)}")
    tb = Testbed(topo, prefix=prefix, run_root=run_root, progress=lambda m: say(f"  {m}"))
    tb.start()
    try:
        vms = [p.client_vm.name for p in pairs] + [p.server_vm.name for p in pairs]
        limits, limits_note = raise_limits(tb, vms, sorted({p.client_vm.network for p in pairs}), capacity)
        say(f"flow limits: {limits_note}")
        for p in pairs:
            if not wait_ping(tb.host(p.client_vm.name), p.server_vm.address, timeout=10):
                raise CommandError(f"{p.ends['client']} cannot reach {p.ends['server']}")
        tap = {v["name"]: v["tap"] for v in vnc_call(tb.path, "dump")["vms"]}
        taps = {pairs[0].client: [tap[p.client_vm.name] for p in pairs],
                pairs[0].server: [tap[p.server_vm.name] for p in pairs]}
        say(f"one generator, unpaced, {CALIBRATE_S:g} s in {pairs[0].client_vm.name}")
        one = calibrate(tb, pairs[0], list(roles))
        say(f"  {one:.0f} datagrams/s")
        say(flowsetup.step_header(roles))
        steps, stopped = [], "every offered rate was run"
        for offered in rates:
            w = flowsetup.step_window(offered, capacity, window, LEAD, TAIL)
            n = max(min(len(pairs), MAX_GENERATORS), flowsetup.generators_for(offered, one, MAX_GENERATORS))
            say(f"offering {offered}/s from {n} generator(s) for {LEAD + w + TAIL:.1f} s (window {w:g} s)")
            steps.append(run_step(tb, pairs, roles, taps, offered, w, n))
            say(flowsetup.step_line(steps[-1], roles))
            say(f"  {flowsetup.limit_hint(steps[-1], roles)}")
            why = flowsetup.should_stop(steps)
            if why:
                stopped = why
                break
        mode = introspect.query(tb.path, pairs[0].client, "stats").get("mode")
    finally:
        tb.stop()
    result = {"bench": "flowsetup", "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "topology": topo.name,
              "roles": roles, "steps": steps, "stopped": stopped, "generator_max_rate": one,
              "settings": {"capacity": capacity, "capacity_source": capacity_source, "limits": limits,
                           "limits_note": limits_note, "window": window, "lead": LEAD, "tail": TAIL,
                           "rates": list(rates), "max_generators": MAX_GENERATORS, "mode": mode,
                           "senders": [p.ends["client"] for p in pairs],
                           "receivers": [p.ends["server"] for p in pairs]},
              "provenance": provenance.collect(started)}
    result.update(flowsetup.summary(steps, roles))
    return result


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help="offer 2k, 10k, 40k flows/s with a 1.5 s window "
                                                        "(default 2k, 5k, 10k, 20k, 40k and 3 s)")
    p.add_argument("--json", action="store_true", help="print the figures as one JSON object on the last line")
    p.add_argument("--prefix", type=prefix_arg, default="vtf", help="name prefix of the bench's testbed (default vtf)")
    p.add_argument("--run-root", default=None)


group("bench", "benchmarks")


@command("bench flowsetup", help="end-to-end flow setup rate per vrouter at increasing offered rates",
         root=True, arguments=_arguments)
def bench_flowsetup(args: argparse.Namespace) -> int:
    r = flowsetup_bench(args.quick, args.prefix, args.run_root, progress=lambda m: print(m, file=sys.stderr))
    for line in flowsetup.report_lines(r):
        print(line)
    if args.json:
        print(json.dumps(r))
    return 0
