"""Fabric benchmark: bring-up and teardown time of the default and a 2x8x4 fabric, iperf3 throughput
(testbed/measure/) between the first and the last server, which sit under different leaves:
`testbed bench fabric [--json]`.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable

from testbed import DEFAULT_TOPOLOGY, generator, measure
from testbed.commands import command, group, prefix_arg
from testbed.measure import provenance
from testbed.runner import Testbed
from testbed.topology import Topology, from_dict, load


def _measure_one(topo: Topology, label: str, prefix: str, run_root: str | None, seconds: float,
                 progress: Callable[[str], None]) -> dict:
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


def fabric_bench(prefix: str = "vtb", run_root: str | None = None, seconds: float = 5.0,
                 big: tuple[int, int, int] = (2, 8, 4), progress: Callable[[str], None] | None = None) -> dict:
    """Python API of `testbed bench fabric`: the figures as a dict (see docs/testbed.md)."""
    say = progress or (lambda m: None)
    default = load(DEFAULT_TOPOLOGY)
    out = {"bench": "fabric", "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "host": platform.node(),
           "cpus": os.cpu_count(), "datapath": "userspace (netdev)", "provenance": provenance.collect()}
    out["default"] = _measure_one(default, "default", prefix, run_root, seconds, say)
    spines, leaves, per_leaf = big
    shape = f"{spines}x{leaves}x{per_leaf}"
    generated = from_dict(generator.leaf_spine(spines, leaves, per_leaf), source=f"generated {shape}")
    out[f"ls{shape}"] = _measure_one(generated, shape, prefix, run_root, seconds, say)
    return out


def report_lines(r: dict) -> list[str]:
    lines = []
    for key in [k for k in r if isinstance(r[k], dict) and "bringup_s" in r[k]]:
        x = r[key]
        lines.append(f"{key:<10} {x['spines']}x{x['leaves']}x{x['servers'] // x['leaves']}: "
                     f"bring-up {x['bringup_s']:.1f} s, teardown {x['teardown_s']:.1f} s, "
                     f"iperf3 {x['iperf3']['client']}->{x['iperf3']['server']} "
                     f"{x['iperf3']['tcp_1_stream_gbps']:.3f} Gbit/s (1 stream), "
                     f"{x['iperf3']['tcp_16_streams_gbps']:.3f} Gbit/s (16 streams)")
    return lines


def _bench_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print the figures as one JSON object on the last line")
    p.add_argument("--seconds", type=float, default=5.0, help="iperf3 duration (default 5)")
    p.add_argument("--prefix", type=prefix_arg, default="vtb",
                   help="name prefix of the benchmark's testbeds (default vtb)")
    p.add_argument("--run-root", default=None)


group("bench", "benchmarks")


@command("bench fabric", help="bring-up/teardown time and iperf3 throughput of the fabric", root=True,
         arguments=_bench_args)
def bench_fabric(args: argparse.Namespace) -> int:
    r = fabric_bench(args.prefix, args.run_root, args.seconds, progress=lambda m: print(m, file=sys.stderr))
    for line in report_lines(r):
        print(line)
    if args.json:
        print(json.dumps(r))
    return 0
