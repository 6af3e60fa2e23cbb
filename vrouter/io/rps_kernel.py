"""NIC plumbing for the multi-core vrouter: tunnel receive/send sockets, (multi-queue) TAPs, pinning.

Separate from `vrouter.io.tunnel`/`vrouter.io.tap` (the single forwarder's) because several processes share
one server's ports here:
- receive sockets are either one per NIC (read by the dispatcher) or, in kernel mode, one per worker
  with SO_REUSEPORT, so the kernel picks a worker by a hash of the OUTER 4-tuple;
- a raw GRE socket receives a copy of every GRE packet, so only one process may hold a reading one;
  every other raw GRE socket (the workers' senders) gets a BPF filter that drops everything;
- entropy source ports are bound by every worker that sends a flow's packets (SO_REUSEPORT), and
  nothing is ever sent to them;
- a TAP opened with IFF_MULTI_QUEUE gives one fd per queue (`vrouter.io.vm_interface.attach`); the VM's
  kernel picks the queue of each frame it sends (a flow hash, and the queue the flow's last received
  frame came from).
Receiving (UDP_GRO reads, `tunnel.read_gro`) and sending (entropy ports, UDP GSO: `tunnel.EntropySender`)
are the single forwarder's code; every queue carries a virtio_net_hdr as the forwarder's TAP does.
"""
from __future__ import annotations

import socket

import psutil

from vrouter.io import tunnel
from vrouter.io.tunnel import IPPROTO_GRE, EntropySender, drop_all_filter, open_raw_udp


class NicError(Exception):
    """A socket or TAP of the multi-core vrouter could not be opened; one line."""


def pin(cpu: int | None) -> None:
    """Pin this process to one CPU (psutil), or leave it floating for None."""
    if cpu is None:
        return
    try:
        psutil.Process().cpu_affinity([cpu])
    except (ValueError, OSError) as exc:
        raise NicError(f"cannot pin to CPU {cpu}: {exc}") from None


def open_rx(reuseport: bool, gre: bool = True, gro: bool = True) -> dict:
    """{socket: encap} receive sockets on UDP 6635 and 4789 (with UDP_GRO if ``gro``) and raw GRE unless
    ``gre`` is False."""
    try:
        return tunnel.open_rx(reuseport=reuseport, gre=gre, gro=gro)
    except OSError as exc:
        raise NicError(f"cannot open fabric receive sockets: {exc.strerror}") from None


class Sender(EntropySender):
    """Send-only tunnel sockets of one worker: entropy-port UDP pool and a deaf raw GRE socket."""

    REUSEPORT = True    # another worker may send other flows with the same entropy port

    def __init__(self, local_ip: str, pool_size: int = 512):
        super().__init__(local_ip, pool_size)
        self._gre = socket.socket(socket.AF_INET, socket.SOCK_RAW, IPPROTO_GRE)
        drop_all_filter(self._gre)
        self._gre.setblocking(False)
        self._udp_fallback = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._udp_fallback.setblocking(False)
        self._raw_udp = open_raw_udp(local_ip)

    def close(self) -> None:
        for s in [self._gre, self._udp_fallback, *self._pool.values(), *([self._raw_udp] if self._raw_udp else [])]:
            s.close()
        self._pool.clear()

    def _fallback(self, encap: str) -> socket.socket:
        return self._udp_fallback
