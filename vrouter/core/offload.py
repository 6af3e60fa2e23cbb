"""The offload state of a forwarder (and of each multi-core worker): the GRO/GSO switches, the GRO engine,
the VM MTU and the counters.

Shell code (it holds no sockets itself but drives `Tunnels` and TAP fds through the forwarder).
Switches, settable at run time (`python -m vrouter.processes.forwarder --gro off --gso off`, introspection
`set {"gro": false, "gso": false}`):

- gro on: the fabric UDP sockets have UDP_GRO (the kernel coalesces a flow's datagrams into one
  read) and `vrouter.core.gro.Gro` merges each read into super-packets, one `from_fabric` each, written
  to the VM's TAP with a GSO virtio_net_hdr. Off: UDP_GRO is cleared on the sockets and the engine
  merges nothing, so every tunnel packet is one read, one `from_fabric`, one TAP write.
- gso on: the VMs' TAPs advertise checksum offload and TSO, so VM kernels hand over 64 KB
  super-frames, and `vrouter.core.gso` cuts each into a buffer of tunnel packets sent with UDP_SEGMENT
  (MPLSoGRE: one send per segment, the fallback). Off: the TAPs withdraw those offloads, the VM's
  kernel segments and checksums itself, and every frame is one packet and one send. A super-frame
  still in flight when the switch flips is cut in Python and sent packet by packet.

The TAP keeps its vnet header in both modes (one read/write path); with gso off its header is all
zero on read, and frames written to the VM may still carry NEEDS_CSUM (the VM's kernel completes
partial checksums sent by a peer whose GSO is on).
"""
from __future__ import annotations

import collections
from collections.abc import Mapping
from typing import Any, Protocol

from . import gro as gro_mod
from . import gso
from .actions import ToTunnel
from .codec.buffer import Buffer
from .codec.errors import Malformed
from .config import VrouterConfig

UNDERLAY_MTU = 1500
# Bytes a tunnel adds in front of the inner IPv4 packet on the underlay: outer IPv4 (+ UDP) + prefix.
OVERHEAD = {"mplsoudp": 20 + 8 + 4, "vxlan": 20 + 8 + 8 + 14, "mplsogre": 20 + 4 + 4}
HIST_BUCKETS = ((1, "1"), (2, "2-3"), (4, "4-7"), (8, "8-15"), (16, "16-31"), (32, "32-63"), (64, "64+"))


class TunnelSender(Protocol):
    """What `Offloads.send_split` needs of the shell's tunnel sockets (vrouter.io.tunnel.Tunnels)."""

    def send(self, peer: str, encap: str, sport: int, payload: Buffer) -> object: ...

    def send_gso(self, peer: str, encap: str, sport: int, buffer: bytes, chunk: int, n: int) -> object: ...


def vm_mtu(config: VrouterConfig) -> int:
    """The MTU the VMs' interfaces get: every tunnel packet, GSO segments included, must fit the
    underlay MTU unfragmented (UDP_SEGMENT refuses segments beyond it), so the largest overhead of
    the encapsulations this vrouter may use sets it (as OpenStack gives VXLAN VMs 1450)."""
    # The config gives every tunnel next hop its encapsulation (the vrouter's default if none is named).
    encaps = {config.encapsulation} | {r.nexthop["encap"] for r in config.routes if r.nexthop["type"] == "tunnel"}
    return UNDERLAY_MTU - max(OVERHEAD.get(e, OVERHEAD["vxlan"]) for e in encaps)


class Offloads:
    def __init__(self, gro: bool = True, gso: bool = True) -> None:
        self.gso_on = gso
        self.gro = gro_mod.Gro(enabled=gro)
        self.mtu = UNDERLAY_MTU - OVERHEAD["vxlan"]
        self.hist: collections.Counter[int] = collections.Counter()     # segments per delivery -> deliveries
        self.counters: collections.Counter[str] = collections.Counter()

    @property
    def gro_on(self) -> bool:
        """The GRO switch: the engine's own `enabled` flag."""
        return self.gro.enabled

    def reset(self) -> None:
        self.gro = gro_mod.Gro(enabled=self.gro_on)
        self.hist.clear()
        self.counters.clear()

    # --- send ------------------------------------------------------------------------------------
    def send_split(self, tunnels: TunnelSender, a: ToTunnel, mss: int) -> None:
        """Send ToTunnel `a` whose inner packet is a TCP super-packet, cut at `mss` bytes of data."""
        c = self.counters
        try:
            buf, chunk, n = gso.split_payload(a.encap, a.payload, mss)
        except (Malformed, ValueError):
            c["gso_malformed"] += 1
            return
        if n > 1 and self.gso_on and a.encap != "mplsogre":
            tunnels.send_gso(a.peer, a.encap, a.sport, buf, chunk, n)
            c["gso_super_frames"] += 1
            c["gso_segments"] += n
            return
        # The fallback: MPLSoGRE has no UDP_SEGMENT (raw IP socket), or GSO is switched off.
        mv = memoryview(buf)
        send = tunnels.send
        for o in range(0, len(buf), chunk):
            send(a.peer, a.encap, a.sport, mv[o:o + chunk])
        c["fallback_super_frames"] += 1
        c["fallback_segments"] += n

    def released_mss(self, encap: str, payload: bytes) -> int:
        """MSS for a ToTunnel payload released by `install` (its virtio header is gone): a TCP
        packet longer than the VM MTU can only be a super-frame cut at the VM's MSS; else 0."""
        p = gso.PREFIX_LEN.get(encap, 0)
        ip_len = len(payload) - p
        if ip_len <= self.mtu or ip_len < 40 or payload[p + 9] != 6:
            return 0
        ihl = (payload[p] & 15) * 4
        thl = (payload[p + ihl + 12] >> 4) * 4
        return self.mtu - ihl - thl

    # --- statistics ------------------------------------------------------------------------------
    def stats(self, tunnel_counters: Mapping[str, int]) -> dict[str, Any]:
        g = self.gro.stats()
        buckets = dict.fromkeys((name for _, name in HIST_BUCKETS), 0)
        deliveries = segments = 0
        for nsegs, count in self.hist.items():
            deliveries += count
            segments += nsegs * count
            name = next(name for low, name in reversed(HIST_BUCKETS) if nsegs >= low)
            buckets[name] += count
        return averages({
            "gro": {"enabled": self.gro_on, "deliveries": deliveries, "segments": segments,
                    "merged_deliveries": g["merged"], "merged_segments": g["merged_segments"],
                    "histogram": buckets, "flush": g["flush"]},
            "gso": {"enabled": self.gso_on, "sends": tunnel_counters.get("tx_gso_sends", 0),
                    "segments": tunnel_counters.get("tx_gso_segments", 0),
                    "super_frames": self.counters["gso_super_frames"],
                    "fallback_super_frames": self.counters["fallback_super_frames"],
                    "fallback_segments": self.counters["fallback_segments"],
                    "malformed": self.counters["gso_malformed"]},
            "vm_mtu": self.mtu,
        })


def averages(stats: dict[str, Any]) -> dict[str, Any]:
    """Fill in the averages of a `stats` offload section (``gro``, ``gso``) from its counts; also
    for counts summed over the workers of a multi-core vrouter."""
    g, s = stats["gro"], stats["gso"]
    g["segments_per_delivery"] = _ratio(g["segments"], g["deliveries"])
    g["segments_per_merge"] = _ratio(g["merged_segments"], g["merged_deliveries"])
    s["segments_per_send"] = _ratio(s["segments"], s["sends"])
    return stats


def _ratio(n: float, d: float) -> float:
    return round(n / d, 2) if d else 0.0
