"""Sending to a bare-metal host's VXLAN tunnel endpoint: every inner checksum complete.

Why: between vrouters a VM's TCP/UDP checksum stays partial (the pseudo-header sum, as the VM's
virtio header left it) and the receiving vrouter hands it to its VM with NEEDS_CSUM
(vrouter/core/gso.py, "Partial-checksum invariant"). A standard VTEP (a Linux `vxlan` device, a
switch) verifies the checksum and drops such packets: ICMP got through, TCP did not. So what goes
to a peer that is a bare-metal host (a tunnel next hop with ``probe: false``,
controllers/vnc_baremetal.py) is completed first (core/gso.complete_checksum, a pass over the
payload: only those flows pay it), and a GSO super-packet to it is sent segment by segment, each
completed. `wrap` puts this in front of the datapath's sender only when the configuration has such
peers: without bare-metal hosts the sender is the plain one and nothing costs anything.
"""
from __future__ import annotations

from typing import Any

from vrouter.core import gso
from vrouter.core.codec.errors import Malformed
from vrouter.core.config import VrouterConfig


def vtep_peers(config: VrouterConfig) -> frozenset[str]:
    """The underlay addresses of the configuration's bare-metal hosts."""
    return frozenset(nh["peer"] for r in config.routes for nh in r.nexthop.get("members", [r.nexthop])
                     if nh["type"] == "tunnel" and nh.get("probe") is False)


def complete(encap: str, payload: Any) -> Any:
    """``payload`` with the inner TCP/UDP checksum complete if it was partial."""
    p = gso.PREFIX_LEN.get(encap, 0)
    if gso.partial_offset(payload, p) is None:
        return payload
    try:
        return gso.complete_checksum(payload, p)
    except Malformed:
        return payload


class VtepSender:
    """The datapath's sender (Tunnels | rps_kernel.Sender) for a configuration with bare-metal hosts."""

    def __init__(self, inner: Any, peers: frozenset[str]) -> None:
        self.inner, self.peers = inner, peers

    def __getattr__(self, name: str) -> Any:     # counters, send_probe, local_ip, close: the sender's own
        return getattr(self.inner, name)

    def send(self, peer: str, encap: str, sport: int, payload: Any) -> bool:
        if peer in self.peers:
            payload = complete(encap, payload)
        return self.inner.send(peer, encap, sport, payload)

    def send_gso(self, peer: str, encap: str, sport: int, buffer: Any, chunk: int, n: int) -> int:
        if peer not in self.peers:
            return self.inner.send_gso(peer, encap, sport, buffer, chunk, n)
        mv = memoryview(buffer)
        for o in range(0, len(buffer), chunk):
            self.send(peer, encap, sport, mv[o:o + chunk])
        return n


def wrap(sender: Any, config: VrouterConfig) -> Any:
    """``sender`` itself, or behind a VtepSender if ``config`` has bare-metal peers."""
    base = sender.inner if isinstance(sender, VtepSender) else sender
    peers = vtep_peers(config)
    return VtepSender(base, peers) if peers and base is not None else base
