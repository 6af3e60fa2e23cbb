"""Fabric benchmark: bring-up and teardown time of the default and a 2x8x4 fabric, iperf3 throughput
between servers on different leaves: `testbed bench fabric [--json]`. Also `testbed demo`, which runs
the main experiment (experiments/proactive_flow.py, results in results/proactive_flow/<timestamp>/).
"""
from __future__ import annotations

import json
import os
import platform
import sys
import time

from testbed import DEFAULT_TOPOLOGY, generator, measure
from testbed.commands import command, group
from testbed.runner import Testbed
from testbed.topology import from_dict, load


def _measure_one(topo, label: str, prefix: str, run_root, seconds: float, progress) -> dict:
    progress(f"[{label}] bringing up {len(topo.spines)} spines, {len(topo.leaves)} leaves, "
             f"{len(topo.servers)} servers")
    t0 = time.monotonic()
    tb = Testbed(topo, prefix=prefix, run_root=run_root, hooks=[],
                 progress=lambda m: progress(f"[{label}]   {m}"))
    try:
        tb.start()
        bringup = time.monotonic() - t0
        progress(f"[{label}] up in {bringup:.1f} s")
        first, last = topo.servers[0], topo.servers[-1]
        if topo.leaf_of(first.name) == topo.leaf_of(last.name):
            raise RuntimeError("benchmark needs servers on two different leaves")
        progress(f"[{label}] iperf3 {first.name} -> {last.name} ({seconds:g} s, 1 TCP stream)")
        one = measure.iperf3(tb.host(first.name), tb.host(last.name), last.address, seconds=seconds)
        progress(f"[{label}] iperf3 {first.name} -> {last.name} ({seconds:g} s, 16 TCP streams)")
        many = measure.iperf3(tb.host(first.name), tb.host(last.name), last.address, seconds=seconds,
                              parallel=16)
    finally:
        t1 = time.monotonic()
        tb.stop()
        teardown = time.monotonic() - t1
    progress(f"[{label}] torn down in {teardown:.1f} s")
    return {"topology": topo.name, "spines": len(topo.spines), "leaves": len(topo.leaves),
            "servers": len(topo.servers), "bringup_s": round(bringup, 3),
            "bringup_phases_s": {k: round(v, 3) for k, v in tb.timings.items()},
            "teardown_s": round(teardown, 3),
            "iperf3": {"client": first.name, "server": last.name,
                       "tcp_1_stream_gbps": round(one["bits_per_second"] / 1e9, 3),
                       "tcp_1_stream_retransmits": one["retransmits"],
                       "tcp_16_streams_gbps": round(many["bits_per_second"] / 1e9, 3),
                       "seconds": seconds}}


def fabric_bench(prefix: str = "vtb", run_root=None, seconds: float = 5.0, big=(2, 8, 4),
                 progress=None) -> dict:
    """Python API of `testbed bench fabric`: the figures as a dict (see docs/testbed.md)."""
    say = progress or (lambda m: None)
    default = load(DEFAULT_TOPOLOGY)
    out = {"bench": "fabric", "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "host": platform.node(),
           "cpus": os.cpu_count(), "datapath": "userspace (netdev)"}
    out["default"] = _measure_one(default, "default", prefix, run_root, seconds, say)
    s, l, n = big
    generated = from_dict(generator.leaf_spine(s, l, n), source=f"generated {s}x{l}x{n}")
    out[f"ls{s}x{l}x{n}"] = _measure_one(generated, f"{s}x{l}x{n}", prefix, run_root, seconds, say)
    return out


def _summary(r: dict) -> list[str]:
    lines = []
    for key in [k for k in r if isinstance(r[k], dict) and "bringup_s" in r[k]]:
        x = r[key]
        lines.append(f"{key:<10} {x['spines']}x{x['leaves']}x{x['servers'] // x['leaves']}: "
                     f"bring-up {x['bringup_s']:.1f} s, teardown {x['teardown_s']:.1f} s, "
                     f"iperf3 {x['iperf3']['client']}->{x['iperf3']['server']} "
                     f"{x['iperf3']['tcp_1_stream_gbps']:.3f} Gbit/s (1 stream), "
                     f"{x['iperf3']['tcp_16_streams_gbps']:.3f} Gbit/s (16 streams)")
    return lines


def _bench_args(p):
    p.add_argument("--json", action="store_true", help="print the figures as one JSON object on the last line")
    p.add_argument("--seconds", type=float, default=5.0, help="iperf3 duration (default 5)")
    p.add_argument("--prefix", default="vtb", help="name prefix of the benchmark's testbeds (default vtb)")
    p.add_argument("--run-root", default=None)


group("bench", "benchmarks")


@command("bench fabric", help="bring-up/teardown time and iperf3 throughput of the fabric", root=True,
         arguments=_bench_args)
def bench_fabric(args) -> int:
    r = fabric_bench(args.prefix, args.run_root, args.seconds, progress=lambda m: print(m, file=sys.stderr))
    for line in _summary(r):
        print(line)
    if args.json:
        print(json.dumps(r))
    return 0


def _demo_args(p):
    p.add_argument("-n", "--connections", type=int, default=200,
                   help="new TCP connections and UDP exchanges per mode (default 200)")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object last")


@command("demo", help="run the main experiment (proactive vs reactive flow setup) -> results/proactive_flow/",
         root=True, arguments=_demo_args)
def demo(args) -> int:
    from experiments import proactive_flow
    return proactive_flow.main(["-n", str(args.connections)] + (["--json"] if args.json else []))
