"""Throughput through the vrouters and what it costs them: iperf3 between two hosts with the CPU
seconds of the pair's vrouter processes, and the overlay run of `testbed bench throughput` (c)/(d)
that experiments/gro.py and rps_gro.py repeat: GRO/GSO switched on both vrouters, their counters
zeroed, iperf3 VM to VM, the GRO/GSO figures from their `stats`.
"""
from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import psutil

from testbed.measure.pairs import VmPair
from testbed.measure.runners import IPERF3_PORT, Host, iperf3
from testbed.overlay import agent_name, forwarder_name
from testbed.runner import Testbed
from vrouter.io import introspect

OFFLOAD_SETTLE = 0.2  # s: TAP offload changes reach the VMs' TCP sockets on their next route lookup


def vrouter_pids(tb: Testbed, servers: Iterable[str]) -> list[int]:
    """The servers' vrouter processes: forwarder (or multi-core dispatcher with its forked workers
    and relays) and agent."""
    pids: list[int] = []
    if tb.supervisor is None:  # not started: no vrouter runs
        return pids
    for server in servers:
        for name in (forwarder_name(server), agent_name(server)):
            pid = tb.supervisor.pid(name)
            if pid:
                pids.append(pid)
                try:
                    pids += [c.pid for c in psutil.Process(pid).children(recursive=True)]
                except psutil.NoSuchProcess:
                    pass
    return pids


def cpu_seconds(pids: Iterable[int]) -> float:
    """User + system CPU seconds the processes have used so far (those gone count nothing)."""
    total = 0.0
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += t.user + t.system
    return total


def set_offloads(tb: Testbed, servers: Iterable[str], on: bool) -> None:
    for server in servers:
        introspect.query(tb.path, server, "set", gro=on, gso=on)


def reset_stats(tb: Testbed, servers: Iterable[str]) -> None:
    """Zero the vrouters' counters and flush their flow tables."""
    for server in servers:
        introspect.query(tb.path, server, "reset")


def offload_stats(tb: Testbed, server: str) -> dict[str, Any]:
    s = introspect.query(tb.path, server, "stats")
    return {"gro": s["gro"], "gso": s["gso"]}


def costed_iperf3(tb: Testbed, pair: VmPair, client: Host, server: Host, dst: str, mode: str, streams: int,
                  seconds: float, port: int = IPERF3_PORT, extra: str = "") -> dict[str, Any]:
    """One iperf3 run client -> server (`dst`) with the CPU seconds of `pair`'s vrouters meanwhile:
    {mode, streams, seconds, gbps, retransmits, vrouter_cpu_s, cpu_s_per_gb}."""
    pids = vrouter_pids(tb, pair.servers)
    cpu0 = cpu_seconds(pids)
    r = iperf3(client, server, dst, seconds=seconds, parallel=streams, port=port, extra=extra)
    cpu = cpu_seconds(pids) - cpu0
    gbytes = r["bits_per_second"] * r["seconds"] / 8 / 1e9
    return {"mode": mode, "streams": streams, "seconds": seconds, "gbps": r["bits_per_second"] / 1e9,
            "retransmits": r["retransmits"], "vrouter_cpu_s": cpu,
            "cpu_s_per_gb": cpu / gbytes if gbytes else None}


def overlay_run(tb: Testbed, pair: VmPair, on: bool, streams: int, seconds: float, extra: str = "") -> dict[str, Any]:
    """(c) or (d) of the bench: switch both vrouters, zero their stats, iperf3 VM to VM, add the
    GRO/GSO figures (mode "overlay_on" or "overlay_off")."""
    set_offloads(tb, pair.servers, on)
    reset_stats(tb, pair.servers)
    time.sleep(OFFLOAD_SETTLE)
    r = costed_iperf3(tb, pair, tb.host(pair.client_vm.name), tb.host(pair.server_vm.name), pair.server_vm.address,
                      "overlay_on" if on else "overlay_off", streams, seconds, extra=extra)
    rx, tx = offload_stats(tb, pair.server), offload_stats(tb, pair.client)
    r.update(gro_segments_per_delivery=rx["gro"]["segments_per_delivery"],
             gro_segments_per_merge=rx["gro"]["segments_per_merge"],
             gro_histogram=rx["gro"]["histogram"], gso_segments_per_send=tx["gso"]["segments_per_send"],
             gso_sends=tx["gso"]["sends"])
    return r
