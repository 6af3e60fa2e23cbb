"""The single forwarder's engine: the per-packet path of one server's vrouter, run in its shell.

`vrouter.processes.forwarder.Forwarder` is the shell (listeners, configuration, VM interfaces, the
fabric sockets and the loop); what is done with the packets it reads is its engine's. This one runs
one `Datapath` on the shell's own sockets; `vrouter.processes.dispatcher.WorkerPool` is the other
engine, which steers packets to worker processes.
"""
from __future__ import annotations

import logging
import socket
import time
from typing import Any

from vrouter.core.codec.l4 import ICMP_ECHO_REPLY
from vrouter.core.config import VrouterConfig
from vrouter.core.gro import icmp_type, inner_proto
from vrouter.io.introspect import summary
from vrouter.io.mirror_pcap import PcapFiles
from vrouter.io.tunnel import Tunnels
from vrouter.processes.datapath import Datapath, VifPort

log = logging.getLogger("forwarder")
FABRIC_WEIGHT = 64      # reads per fabric socket per loop round


class InProcess:
    """The single forwarder's engine: the per-packet path runs here, on the shell's sockets."""

    tap_queues = 1          # fds per VM TAP
    stamping = False        # latency stamps on (set_stamping): the loop notes when its wait returns
    reads_taps = True       # the shell's selector watches the TAPs and the fabric sockets
    reads_fabric = True
    bulk = False            # this round read bulk data (vrouter/core/coalesce.py)

    def __init__(self, shell: Any):      # the Forwarder (which imports this module)
        self.shell = shell
        self.datapath = Datapath(shell.agent, shell.offloads, clock=shell.clock, path_slots=shell.path_slots)
        self.datapath.mirror_sink = PcapFiles(shell.rundir, shell.server, shell.clock)     # mirror sessions' pcaps
        self.datapath.flowlog.place(shell.rundir, shell.server)

    @property
    def configured(self) -> bool:
        return self.datapath.pipeline is not None

    def configure(self, generation, config: VrouterConfig, config_dict: dict, tunnels: Tunnels) -> None:
        self.datapath.sender = tunnels
        self.datapath.external = self.shell.external
        self.datapath.configure(config)

    def agent_connected(self, conn: socket.socket) -> None:
        """Punts go out on the agent's one channel (the shell's link), nothing more to set up."""

    def flush_punts(self) -> None:
        self.datapath.flush_punts()

    def service(self) -> bool:
        return self.datapath.service()

    def punt_wait(self) -> float | None:
        return self.datapath.punt_wait()

    def probe_wait(self) -> float | None:
        return self.datapath.paths_wait()

    def probe(self) -> None:
        self.datapath.probe()

    def on_tap(self, name: str, frames: list[bytes]) -> None:
        if self.datapath.pipeline is not None:
            self.datapath.from_tap(name, frames)

    def on_external(self, packets: list[bytes]) -> None:
        if self.datapath.pipeline is not None:
            self.datapath.from_external(packets)

    def on_fabric(self, tunnels: Tunnels, sock: socket.socket) -> None:
        # A first read that GRO cannot merge (not TCP: a ping, a DNS query) is forwarded before the
        # drain of the rest, as a TAP's first frame is (Forwarder._on_tap), so it does not wait for the
        # read that finds the socket empty; TCP reads are drained first, so they merge across the drain
        # (forwarding a bulk flow's first read alone cut GRO from 15-17 to 13 segments per merge).
        dp = self.datapath
        kernel_ns = [] if dp.stamps is not None else None
        reads = tunnels.receive_gro(sock, 1, stamps=kernel_ns)
        if not reads:
            return
        src, encap, data, seg = reads[0]
        proto = inner_proto(encap, data)
        if proto == 6:
            self.bulk = True
            reads += tunnels.receive_gro(sock, FABRIC_WEIGHT - 1, stamps=kernel_ns)
            self._deliver(reads, kernel_ns)
            return
        dp.wrote_vif = None
        if proto == 1 and not seg and kernel_ns is None and dp.pipeline is not None:
            dp.from_lone_icmp(src, encap, data)     # a ping: from_reads' checks and GRO left out
        else:
            self._deliver(reads, kernel_ns)
        # An echo reply gets no answer: the read would find the TAP empty, and on the pinging side
        # it runs while ping, woken by the write, waits for this loop to sleep (SCHED_FIFO).
        if dp.wrote_vif is not None and not (proto == 1 and icmp_type(encap, data) == ICMP_ECHO_REPLY):
            if self.stamping:
                dp.woke_ns = time.time_ns()     # the answer's read starts its leg, as a wake-up would
            if self.shell.read_answer(dp.wrote_vif):
                dp.counters["answers_read"] += 1     # `stats`, forwarder section
        if self.shell.from_idle:
            return      # most likely alone; anything left is reported by epoll next round (_on_tap says why)
        kernel_ns = [] if dp.stamps is not None else None
        rest = tunnels.receive_gro(sock, FABRIC_WEIGHT - 1, stamps=kernel_ns)
        if rest:
            self._deliver(rest, kernel_ns)

    def _deliver(self, reads: list[tuple], kernel_ns: list[int] | None) -> None:
        dp = self.datapath
        if dp.pipeline is None:
            dp.counters["fabric_rx_unconfigured"] += len(reads)
        else:
            dp.from_reads(reads, kernel_ns)

    def set_stamping(self, on: bool, tunnels: Tunnels | None) -> None:
        """Latency stamps of ICMP echoes on or off (vrouter/core/latency.py), with the kernel's receive
        timestamps on the fabric sockets."""
        self.datapath.set_stamping(on)
        self.stamping = on
        if tunnels is not None:
            tunnels.set_stamping(on)

    def take_stamps(self) -> list[tuple]:
        return self.datapath.take_stamps()

    def vif_up(self, name: str, port: VifPort, entry: dict) -> None:
        self.datapath.vifs[name] = port
        log.info("vif %s attached (VM %s)", name, entry.get("vm", "?"))

    def vif_down(self, name: str, port: VifPort) -> None:
        self.datapath.vifs.pop(name, None)

    def set_offloads(self, gro, gso) -> None:
        """The GRO engine and GSO flag are the shell's own Offloads: nothing more to switch."""

    def reset(self) -> None:
        self.datapath.reset()

    def tick(self, now: float) -> bool:
        self.datapath.expire(now)
        return True

    def close(self) -> None:
        self.datapath.flowlog.drain(self.datapath.pipeline, end="shutdown")    # nothing lost at `down`

    # --- introspection (vrouter/processes/introspect.py) ---------------------------------------
    def flows(self) -> list[dict]:
        return self.datapath.flows()

    def drop_stats(self) -> dict:
        return self.datapath.drop_stats()

    def vif_counters(self) -> dict[str, dict]:
        return {name: dict(port.counters) for name, port in self.datapath.vifs.items()}

    def rtts(self) -> list[float]:
        return list(self.datapath.link.rtt_us)

    def pressure(self) -> dict:
        return self.datapath.pressure()

    def paths(self) -> dict:
        return self.datapath.paths_view()

    def nat(self) -> dict:
        return self.datapath.pipeline.nat.state()

    def stats(self) -> dict:
        s = self.datapath.stats()
        s["slowpath_rtt_us"] = summary(s.pop("rtts"))
        return s
