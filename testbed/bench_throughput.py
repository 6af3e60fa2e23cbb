"""Throughput bench: `testbed bench throughput [--quick] [--json]` (issue 5, item 5).

One testbed on topologies/default.yaml; two servers on different leaves and a VM pair of one network
on them. TCP throughput (iperf3, 1 and 8 streams) of (a) the underlay between the servers, (b) a
kernel VXLAN overlay between the same servers, (c) our overlay VM to VM with GRO/GSO off, (d) on;
CPU seconds per GB of the two servers' vrouter processes (forwarder + agent, psutil); the median
ping RTT of the underlay, the kernel VXLAN, the overlay and a bare Python relay on the same servers
(testbed/relay_floor.py, the floor of a Python overlay here), and the cost of one idle Python process
hop (testbed/hop_floor.py), four of which every overlay round trip crosses. Prints a table, the ratios
(c)/(a), (d)/(a), (d)/(b), the GRO segments per delivery and which targets are met. The measuring
itself (pair, iperf3, ping, vrouter CPU, the overlay runs) is testbed/measure/, which
experiments/gro.py and rps_gro.py use too.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable

from testbed import DEFAULT_TOPOLOGY, fabric_tso, relay_floor
from testbed.commands import CommandError, command, group, prefix_arg
from testbed.hop_floor import hop_floor_us
from testbed.measure import provenance
from testbed.measure.pairs import PairError, VmPair, pick_pair
from testbed.measure.runners import ping_median_us
from testbed.measure.throughput import costed_iperf3, overlay_run, set_offloads
from testbed.runner import Testbed
from testbed.topology import Topology, load
from vrouter.core import latency
from vrouter.io import introspect

VXLAN_ID, VXLAN_PORT, VXLAN_NET = 4242, 4790, "172.31.255"
VXLAN_SERVER_ADDRESS = f"{VXLAN_NET}.2"  # the server side's address on the kernel VXLAN
# Issue 13's targets, for the default vrouter settings on the fabric with userspace TSO off
# (testbed/fabric_tso.py says why that is the fabric we measure against).
TARGETS = {"d_over_a": 0.9, "d_over_b": 1.0, "segments_per_merge": 8.0, "rtt_overhead_us": 480.0,
           "rtt_overhead_stretch_us": 300.0, "cpu_s_per_gb": 8.0}
TSO_MODES = ("underlay", "kernel_vxlan", "overlay_on")
CONNECT_TIMEOUT_MS = 3000   # the TSO leg: a mode the fabric cannot carry fails in 3 s, not after SYN retries
MODES = ("underlay", "kernel_vxlan", "overlay_off", "overlay_on")
LABELS = {"underlay": "(a) underlay", "kernel_vxlan": "(b) kernel VXLAN",
          "overlay_off": "(c) overlay GRO/GSO off", "overlay_on": "(d) overlay GRO/GSO on"}


def pick(topo: Topology) -> VmPair:
    """The bench's VM pair (testbed/measure/pairs.py): one network, servers under different leaves."""
    try:
        return pick_pair(topo)
    except PairError as exc:
        raise CommandError(str(exc)) from None


def run_iperf(tb: Testbed, mode: str, pair: VmPair, streams: int, seconds: float, extra: str = "") -> dict:
    """One iperf3 run of `mode` (see MODES) with CPU seconds of the two servers' vrouters; `extra`:
    more iperf3 client options."""
    if mode in ("underlay", "kernel_vxlan"):
        client, server = tb.host(pair.client), tb.host(pair.server)
        dst = pair.server_ip if mode == "underlay" else VXLAN_SERVER_ADDRESS
        return costed_iperf3(tb, pair, client, server, dst, mode, streams, seconds, extra=extra)
    return overlay_run(tb, pair, mode == "overlay_on", streams, seconds, extra=extra)


class KernelVxlan:
    """A kernel VXLAN interface in each of the two servers' namespaces (removed by close)."""

    def __init__(self, tb: Testbed, pair: VmPair) -> None:
        self.tb, self.pair = tb, pair
        self.name = f"{tb.prefix}-vx"
        self.made = []
        for i, (me, peer) in enumerate(((pair.client, pair.server_ip), (pair.server, pair.client_ip)), 1):
            host, info = tb.host(me), tb.server_info(me)
            cmds = [f"ip link add {self.name} type vxlan id {VXLAN_ID} dstport {VXLAN_PORT} remote {peer} "
                    f"local {info['ip']} dev {info['intf']}",
                    f"ip addr add {VXLAN_NET}.{i}/24 dev {self.name}", f"ip link set {self.name} up"]
            self.made.append(host)
            for c in cmds:
                out = host.cmd(f"{c} 2>&1 && echo OK").strip()
                if not out.endswith("OK"):
                    self.close()
                    raise CommandError(f"kernel VXLAN on {me}: {c}: {out.splitlines()[0] if out else 'failed'}")

    def close(self) -> None:
        for host in self.made:
            host.cmd(f"ip link del {self.name} 2>/dev/null")
        self.made = []


def measure_all(tb: Testbed, pair: VmPair, seconds: float, streams: tuple[int, ...] = (1, 8),
                progress: Callable[[str], None] = lambda m: None) -> dict:
    """Everything `bench throughput` reports, on a testbed that is up."""
    runs = []
    vx = KernelVxlan(tb, pair)
    try:
        for mode in MODES:
            for n in streams:
                progress(f"{LABELS[mode]}: iperf3 -P {n} for {seconds:g} s")
                r = run_iperf(tb, mode, pair, n, seconds)
                progress(f"  {r['gbps']:.3f} Gbit/s")
                runs.append(r)
        set_offloads(tb, pair.servers, True)
        progress("ping RTT: underlay, kernel VXLAN and overlay (GRO/GSO on), 50 pings at 20 ms")
        under = ping_median_us(tb.host(pair.client), pair.server_ip)
        kernel = ping_median_us(tb.host(pair.client), VXLAN_SERVER_ADDRESS)
    finally:
        vx.close()
    over = ping_median_us(tb.host(pair.client_vm.name), pair.server_vm.address)
    priority = loop_priority(tb, pair)
    progress("the same pings through a bare Python relay on the same servers (the floor of a Python overlay)")
    relay = relay_floor.measure(tb, pair)
    progress("where the overlay's round trip goes: the same pings again, stamped by both vrouters")
    legs = stamped_breakdown(tb, pair)
    progress("one Python process hop on loopback at the same spacing (the floor under the overhead)")
    try:
        floor = hop_floor_us()
    except OSError as exc:
        progress(f"  not measured: {exc}")
        floor = None
    return {"runs": runs, "rtt_us": {"underlay_median": under, "overlay_median": over,
                                     "overhead_median": over - under if under and over else None,
                                     "kernel_vxlan_median": kernel,
                                     "kernel_vxlan_overhead_median": kernel - under if under and kernel else None,
                                     "hop_floor": floor, "relay_median": relay["median"],
                                     "relay_overhead_median": relay["median"] - under
                                     if under and relay["median"] else None, "relay_error": relay.get("error")},
            "breakdown": legs, "priority": priority}


def loop_priority(tb: Testbed, pair: VmPair) -> dict:
    """How the two vrouters' loops were scheduled just after the pings (vrouter/core/priority.py):
    {server: Priority.stats()}, or {server: {"error": why}}."""
    out = {}
    for s in pair.servers:
        try:
            out[s] = introspect.query(tb.path, s, "stats")["priority"]
        except (introspect.IntrospectError, KeyError) as exc:
            out[s] = {"error": str(exc)}
    return out


def priority_line(priority: dict | None) -> list[str]:
    if not priority:
        return []
    parts = []
    for server, p in priority.items():
        if "mode" not in p:
            parts.append(f"{server} unknown ({p.get('error')})")
        elif p.get("error"):
            parts.append(f"{server} {p['mode']} ({p['error']})")
        else:
            fifo = f" (SCHED_FIFO {p['rt_priority']} while idle)" if p["rt_priority"] else ""
            parts.append(f"{server} {p['mode']}{fifo}")
    return [f"vrouter loops after the pings: {', '.join(parts)}"]


def stamped_breakdown(tb: Testbed, pair: VmPair) -> dict:
    """The overlay pings once more with both vrouters stamping every ICMP echo (vrouter/core/latency.py):
    the median of each leg of the round trip. Separate from the measured RTT: stamping costs a few us."""
    try:
        for s in pair.servers:
            introspect.query(tb.path, s, "stamp", on=True, take=True)
        ping_median_us(tb.host(pair.client_vm.name), pair.server_vm.address)
        stamps = []
        for s in pair.servers:
            got = introspect.query(tb.path, s, "stamp", on=False, take=True)["stamps"]
            stamps += [latency.Stamp(s, *x) for x in got]
    except introspect.IntrospectError as exc:
        return {"round_trips": 0, "legs_us": {}, "sum_us": None, "vrouter_us": None, "error": str(exc)}
    return latency.breakdown(pair.client, pair.server, stamps)


def summarize(result: dict) -> dict:
    by = {(r["mode"], r["streams"]): r for r in result["runs"]}
    ratios = {}
    for n in sorted({r["streams"] for r in result["runs"]}):
        g = {m: by[(m, n)]["gbps"] for m in MODES if (m, n) in by}
        if len(g) == len(MODES):
            ratios[str(n)] = {"c_over_a": g["overlay_off"] / g["underlay"], "d_over_a": g["overlay_on"] / g["underlay"],
                              "d_over_b": g["overlay_on"] / g["kernel_vxlan"]}
    on = [r for r in result["runs"] if r["mode"] == "overlay_on"]
    spm = max((r["gro_segments_per_merge"] for r in on), default=0.0)
    rtt = result["rtt_us"]["overhead_median"]
    cpu = max((r["cpu_s_per_gb"] for r in on if r["cpu_s_per_gb"] is not None), default=None)
    t = TARGETS
    met = {
        f"RTT overhead <= {t['rtt_overhead_us']:.0f} us": rtt is not None and rtt <= t["rtt_overhead_us"],
        f"RTT overhead <= {t['rtt_overhead_stretch_us']:.0f} us (stretch)":
            rtt is not None and rtt <= t["rtt_overhead_stretch_us"],
        f"(d) >= {t['d_over_b']:.1f} x kernel VXLAN, 1 and 8 streams":
            bool(ratios) and all(x["d_over_b"] >= t["d_over_b"] for x in ratios.values()),
        f"(d) >= {t['d_over_a']:.1f} x underlay, 1 and 8 streams (the physical limit)":
            bool(ratios) and all(x["d_over_a"] >= t["d_over_a"] for x in ratios.values()),
        f"vrouter CPU <= {t['cpu_s_per_gb']:.0f} s per GB, GRO/GSO on": cpu is not None and cpu <= t["cpu_s_per_gb"],
        f"GRO segments per merge >= {t['segments_per_merge']:.0f}": spm >= t["segments_per_merge"],
    }
    return {"ratios": ratios, "gro_segments_per_merge": spm, "worst_cpu_s_per_gb_on": cpu, "targets_met": met}


def tso_leg(topo: Topology, pair: VmPair, seconds: float, prefix: str, run_root: str | None,
            say: Callable[[str], None]) -> dict:
    """The same fabric with OVS userspace TSO on and the servers' veths sending TCP super-packets
    (testbed/fabric_tso.py): underlay, kernel VXLAN and our overlay, 1 and 8 streams, and the pings.
    A mode the fabric cannot carry is reported with its error. TSO is switched off again at the end."""
    say("fabric setting: OVS userspace TSO on (restarting ovs-vswitchd)")
    fabric_tso.switch(True)
    runs, rtt = [], {}
    try:
        tb = Testbed(topo, prefix=prefix, run_root=run_root, progress=lambda m: say(f"  {m}"))
        tb.start()
        try:
            for srv in pair.servers:
                fabric_tso.server_offloads(tb.host(srv), tb.server_info(srv)["intf"], True)
            vx = KernelVxlan(tb, pair)
            extra = f"--connect-timeout {CONNECT_TIMEOUT_MS}"
            try:
                for mode in TSO_MODES:
                    for n in (1, 8):
                        say(f"TSO on, {LABELS[mode]}: iperf3 -P {n} for {seconds:g} s")
                        try:
                            r = run_iperf(tb, mode, pair, n, seconds, extra)
                        except RuntimeError as exc:
                            r = {"mode": mode, "streams": n, "gbps": None, "error": str(exc)}
                        say(f"  {r['gbps']:.3f} Gbit/s" if r["gbps"] is not None else f"  not carried: {r['error']}")
                        runs.append(r)
                rtt = {"underlay_median": ping_median_us(tb.host(pair.client), pair.server_ip),
                       "kernel_vxlan_median": ping_median_us(tb.host(pair.client), VXLAN_SERVER_ADDRESS)}
            finally:
                vx.close()
            rtt["overlay_median"] = ping_median_us(tb.host(pair.client_vm.name), pair.server_vm.address)
        finally:
            tb.stop()
    finally:
        say("fabric setting: OVS userspace TSO off again (restarting ovs-vswitchd)")
        fabric_tso.switch(False)
    return {"runs": runs, "rtt_us": rtt}


def throughput_bench(quick: bool = False, prefix: str = "vtt", run_root: str | None = None,
                     progress: Callable[[str], None] | None = None, tso: bool = False) -> dict:
    """Python API of `testbed bench throughput`; `tso`: also measure the fabric with OVS userspace TSO on."""
    say = progress or (lambda m: None)
    if fabric_tso.configured():
        raise CommandError("OVS has other_config:userspace-tso-enable=true: the bench measures the fabric "
                           "with it off (use --fabric-tso to add the TSO figures); remove it with "
                           "'ovs-vsctl remove Open_vSwitch . other_config userspace-tso-enable' and restart OVS")
    seconds = 3.0 if quick else 10.0
    started = time.time()
    topo = load(DEFAULT_TOPOLOGY)
    pair = pick(topo)
    say(f"bringing up {topo.name}: {pair.ends['client']} -> {pair.ends['server']}")
    tb = Testbed(topo, prefix=prefix, run_root=run_root, progress=lambda m: say(f"  {m}"))
    tb.start()
    try:
        result = measure_all(tb, pair, seconds, progress=say)
    finally:
        tb.stop()
    if tso:
        try:
            result["fabric_tso"] = tso_leg(topo, pair, seconds, prefix, run_root, say)
        except fabric_tso.FabricTsoError as exc:
            raise CommandError(f"--fabric-tso: {exc}") from None
    result.update(bench="throughput", time=time.strftime("%Y-%m-%dT%H:%M:%S%z"), seconds=seconds,
                  topology=topo.name, encapsulation=topo.encapsulation, client=pair.client, server=pair.server,
                  client_vm=pair.client_vm.name, server_vm=pair.server_vm.name,
                  provenance=provenance.collect(started))
    result.update(summarize(result))
    return result


def report_lines(r: dict) -> list[str]:
    lines = [f"{r['topology']} ({r['encapsulation']}): {r['client']} -> {r['server']}, "
             f"VMs {r['client_vm']} -> {r['server_vm']}, {r['seconds']:g} s per run",
             f"{'':26}{'streams':>8}{'Gbit/s':>9}{'retrans':>9}{'vrouter CPU s/GB':>18}{'GRO segs/merge':>16}"]
    for x in r["runs"]:
        cpu = f"{x['cpu_s_per_gb']:.2f}" if x["cpu_s_per_gb"] is not None and x["mode"].startswith("overlay") else "-"
        spm = f"{x['gro_segments_per_merge']:.1f}" if "gro_segments_per_merge" in x else "-"
        lines.append(f"{LABELS[x['mode']]:<26}{x['streams']:>8}{x['gbps']:>9.3f}{x['retransmits'] or 0:>9}"
                     f"{cpu:>18}{spm:>16}")
    for n, q in r["ratios"].items():
        lines.append(f"ratios, {n} stream(s): (c)/(a) {q['c_over_a']:.2f}  (d)/(a) {q['d_over_a']:.2f}  "
                     f"(d)/(b) {q['d_over_b']:.2f}")
    rtt = r["rtt_us"]
    if rtt["overhead_median"] is not None:
        lines.append(f"ping RTT median: underlay {rtt['underlay_median']:.0f} us, "
                     f"overlay {rtt['overlay_median']:.0f} us, "
                     f"overhead {rtt['overhead_median']:.0f} us")
    else:
        lines.append("ping RTT: no replies")
    if rtt.get("kernel_vxlan_overhead_median") is not None:
        lines.append(f"ping RTT median, kernel VXLAN: {rtt['kernel_vxlan_median']:.0f} us, "
                     f"overhead {rtt['kernel_vxlan_overhead_median']:.0f} us")
    floor = rtt.get("hop_floor")
    if floor and rtt["overhead_median"] is not None:
        lines.append(f"one idle Python process hop here: {floor['hop']:.0f} us (UDP echo {floor['python_echo']:.0f} us "
                     f"- kernel echo {floor['kernel_echo']:.0f} us, loopback); the overlay crosses 4 per round trip: "
                     f"floor {4 * floor['hop']:.0f} us, ours {rtt['overhead_median'] / 4:.0f} us per hop")
    if rtt.get("relay_overhead_median") is not None:
        ours = rtt["overhead_median"]
        lines.append(f"ping RTT median, bare Python relay (TAP + UDP, nothing else, scheduled as an idle vrouter "
                     f"loop; testbed/relay_floor.py): "
                     f"{rtt['relay_median']:.0f} us, overhead {rtt['relay_overhead_median']:.0f} us"
                     + (f"; ours {ours - rtt['relay_overhead_median']:.0f} us above it" if ours is not None else ""))
    elif rtt.get("relay_error"):
        lines.append(f"bare Python relay: not measured ({rtt['relay_error']})")
    lines += priority_line(r.get("priority"))
    lines += breakdown_lines(r.get("breakdown"), rtt)
    lines.append(f"GRO segments per merged delivery (bulk TCP, best run): {r['gro_segments_per_merge']:.1f}")
    if r["worst_cpu_s_per_gb_on"] is not None:
        lines.append(f"vrouter CPU per GB, GRO/GSO on (worst of 1 and 8 streams): {r['worst_cpu_s_per_gb_on']:.1f} s")
    lines += tso_lines(r.get("fabric_tso"))
    for name, ok in r["targets_met"].items():
        lines.append(f"target {name}: {'met' if ok else 'NOT met'}")
    return lines


LEG_LABELS = {
    "wake_vm_to_src": "VM sent -> source vrouter wakes (epoll returns)", "src_read": "  dispatch + TAP read",
    "src_pipeline": "  pipeline", "send_fabric_out": "UDP send + fabric (OVS) -> kernel rx at destination",
    "wake_fabric_to_dst": "kernel rx -> destination vrouter wakes", "dst_read": "  dispatch + socket read",
    "dst_pipeline": "  pipeline", "dst_tap_write": "  TAP write (the VM's stack runs in it)",
    "vm_turnaround": "VM answers -> destination vrouter's epoll returns", "dst_read_reply": "  dispatch + TAP read",
    "dst_pipeline_reply": "  pipeline", "send_fabric_back": "UDP send + fabric back -> kernel rx at source",
    "wake_fabric_to_src": "kernel rx -> source vrouter wakes", "src_read_reply": "  dispatch + socket read",
    "src_pipeline_reply": "  pipeline", "src_tap_write": "  TAP write (ping's socket gets the reply)"}


def breakdown_lines(b: dict | None, rtt: dict) -> list[str]:
    if not b or not b.get("round_trips"):
        why = (b or {}).get("error", "no complete round trip was stamped")
        return [f"round-trip breakdown: not measured ({why})"]
    out = [f"round-trip breakdown (median us over {b['round_trips']} stamped pings; vrouters on CPU "
           f"between wake-ups and fabric):"]
    legs = b["legs_us"]
    out += [f"  {LEG_LABELS[leg]:<56}{legs[leg]:>8.0f}" for leg in latency.LEGS]
    fabric = legs["send_fabric_out"] + legs["send_fabric_back"]
    under = rtt.get("underlay_median")
    out.append(f"  sum {b['sum_us']:.0f} us: vrouters and VMs {b['vrouter_us']:.0f}, send + fabric {fabric:.0f}"
               + (f" (the underlay's whole RTT: {under:.0f})" if under else ""))
    out.append(f"  (the send system calls themselves, beside the path: {legs['src_send_call']:.0f} and "
               f"{legs['dst_send_call']:.0f} us)")
    return out


def tso_lines(leg: dict | None) -> list[str]:
    if not leg:
        return ["fabric setting: OVS userspace TSO off (the targets' fabric; --fabric-tso adds the TSO-on figures)"]
    out = ["fabric setting OVS userspace TSO on, servers' veths sending TCP super-packets (not the targets' fabric):"]
    for x in leg["runs"]:
        fig = f"{x['gbps']:.3f} Gbit/s" if x["gbps"] is not None else f"not carried ({x['error'][:60]})"
        out.append(f"  {LABELS[x['mode']]:<26}{x['streams']:>3} stream(s)  {fig}")
    rtt = leg.get("rtt_us", {})
    parts = [f"{k.split('_median')[0]} {v:.0f} us" for k, v in rtt.items() if v]
    if parts:
        out.append("  ping RTT median: " + ", ".join(parts))
    return out


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help="3 s per run instead of 10")
    p.add_argument("--json", action="store_true", help="print the figures as one JSON object on the last line")
    p.add_argument("--prefix", type=prefix_arg, default="vtt", help="name prefix of the bench's testbed (default vtt)")
    p.add_argument("--run-root", default=None)
    p.add_argument("--fabric-tso", action="store_true",
                   help="also measure with OVS userspace TSO on (restarts ovs-vswitchd twice; refused while OVS "
                        "serves any bridge)")


group("bench", "benchmarks")


@command("bench throughput", help="TCP throughput: underlay, kernel VXLAN, our overlay with GRO/GSO off and on",
         root=True, arguments=_arguments)
def bench_throughput(args: argparse.Namespace) -> int:
    r = throughput_bench(args.quick, args.prefix, args.run_root, progress=lambda m: print(m, file=sys.stderr),
                         tso=args.fabric_tso)
    for line in report_lines(r):
        print(line)
    if args.json:
        print(json.dumps(r))
    return 0
