"""Where each received packet goes in a multi-core vrouter (pure; the dispatcher and relays call it).

``Router.from_tap`` / ``Router.from_fabric`` run on the designated core of a NIC and return the next
hop of a packet: ``("worker", cpu)`` or, for a tunnel packet on an interface in extended mode,
``("relay", second core)``. ``Router.stage2`` runs on a relay and returns the worker. Batching:
``Outbox`` collects records per destination so each hop costs one ``sendmsg`` per NIC read, or
more when a read's records pass ``rps_channel.MAX_BATCH_BYTES`` (64 reads of 64 KB would not fit one
datagram).
"""
from collections.abc import Callable, Hashable
from typing import TypeAlias

from .codec.buffer import Buffer
from .rps_channel import Batch
from .steering import ExtendedRps, Local, Rps, SteeringConfig

_TAP_KIND = "tap"
# What SteeringConfig.for_interface gives for a NIC.
Steerer: TypeAlias = Local | Rps | ExtendedRps


class Router:
    def __init__(self, steering: SteeringConfig, local_ip: str = "0.0.0.0") -> None:
        """``local_ip``: this server's underlay address."""
        self.steering = steering
        self.local_ip = local_ip
        self._by_nic: dict[str, Steerer] = {}

    def _for(self, nic: str) -> Steerer:
        s = self._by_nic.get(nic)
        if s is None:
            s = self._by_nic[nic] = self.steering.for_interface(nic)
        return s

    def from_tap(self, vif: str, vrf: int, frame: Buffer, off: int = 0) -> tuple[str, int]:
        """``off``: where the Ethernet header starts (behind the virtio_net_hdr of a TAP read)."""
        return "worker", self._for(vif).steer(_TAP_KIND, frame, vrf, off)

    def from_fabric(self, encap: str, src: str, sport: int, payload: Buffer) -> tuple[str, int]:
        s = self._for(encap)
        if isinstance(s, ExtendedRps):
            # Stage 1: outer header only (no decapsulation); the relay does the inner hash.
            return "relay", s.stage1(src, self.local_ip, sport if encap != "mplsogre" else 0)
        return "worker", s.steer(encap, payload)

    def stage2(self, encap: str, payload: Buffer) -> int:
        return self._for(encap).stage2(encap, payload)  # type: ignore[union-attr]  # relays serve extended NICs only


class Outbox:
    """One pending :class:`Batch` per destination, handed to ``send(dest, buffers, count)`` when it is
    full and at :meth:`flush` (the end of a NIC read)."""

    def __init__(self, send: Callable[[Hashable, list[Buffer], int], object]) -> None:
        self.send = send
        self.batches: dict[Hashable, Batch] = {}

    def add(self, dest: Hashable, kind: str, tag: str, payload: Buffer, seg: int = 0) -> None:
        b = self.batches.get(dest)
        if b is None:
            b = self.batches[dest] = Batch()
        b.add(kind, tag, payload, seg)
        if b.full():
            self._send(dest, b)

    def flush(self) -> None:
        """Send every non-empty batch."""
        for dest, b in self.batches.items():
            if b.count:
                self._send(dest, b)

    def _send(self, dest: Hashable, b: Batch) -> None:
        count = b.count
        self.send(dest, b.take(), count)
