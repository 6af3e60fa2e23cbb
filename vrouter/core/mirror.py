"""Mirroring in the datapath: which flow entries are mirrored, and the copies they make.

Decided when an entry is installed, so the hit path pays nothing for flows nobody mirrors: the
pipeline asks ``Mirror.mark`` for every entry it installs or re-evaluates (a config push re-marks
the whole table, so a session added or removed at run time applies to existing flows too) and
stores the matching sessions in the entry's ``mirror`` slot (None: not mirrored). A hit on an entry
with sessions calls ``copy``: the ORIGINAL frame (what the VM sent, before the TTL rewrite and the
encapsulation; or what is delivered to the VM) goes, bounded by each session's token bucket, to its
sink as an action the shell drains after the batch (``out``): a ``ToPcap`` for a pcap session, or
for an analyzer an ordinary overlay packet (``ToTunnel`` to the analyzer's server with its network's
label, ``ToVif`` when it is local) carrying the copy as VXLAN-in-UDP (RFC 7348: UDP port 4789,
VNI = the session's number, the inner frame the original Ethernet frame) from the analyzer
network's gateway address to the analyzer, which Wireshark decodes as it is.

An entry's direction: ``ingress`` when its packets come from a local VIF (the key's source is the
VIF's address, or a service entry pinned to it), ``egress`` when it delivers to a local VIF. A VM
source matches that VIF, a network source the VIFs of the network, a rule source the network's
VIFs and flows whose key or reversed key matches the rule (both directions of a conversation).
Not mirrored: drop and NAT entries, what bypasses the flow table (ARP and the gateway's ping
answers) and the copies themselves (UDP to port 4789 from a network's gateway address: a VM never
sends from it), so mirroring the analyzer's own network does not loop.

Pure (a core module): bytes and ``now`` in, actions out.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .actions import ToTunnel, ToVif
from .codec import ipv4, vxlan
from .codec.ethernet import mac_to_bytes
from .codec.l4 import build_udp
from .codec.outer import VXLAN_PORT
from .config import VROUTER_MAC, Policy, VrouterConfig
from .encap import encap_prefix
from .flowtable import TO_TUNNEL, TO_VIF
from .mirrorschema import VrouterSession, rule_fields
from .offload import vm_mtu
from .policy import CompiledPolicy

if TYPE_CHECKING:
    from .encap import VifState
    from .flowtable import FlowEntry

BURST_SECONDS = 0.1         # a session's bucket holds this many seconds of its rate (at least one copy)
COPY_OVERHEAD = 20 + 8 + 8  # IPv4 + UDP + VXLAN in front of an analyzer's copy
MIRROR_SPORT = 49152        # the copies' UDP source port base (+ the session number: one flow per session)
PLAIN_ETH = VROUTER_MAC + VROUTER_MAC + b"\x08\x00"   # a transit packet had no Ethernet header here


@dataclass(frozen=True, slots=True)
class ToPcap:
    """Append ``frame`` to session ``session``'s pcap file, stamped ``at`` (the pipeline's clock)."""
    session: str
    frame: bytes
    at: float


@dataclass(frozen=True, slots=True)
class ClosePcap:
    """Session ``session`` is gone: its pcap file can be closed."""
    session: str


class Session:
    """One session in a vrouter: what it matches, its sink, its bucket and its counters."""

    def __init__(self, s: VrouterSession, vifs: Mapping[str, VifState], vrf_of: Mapping[str, int],
                 mtu: int) -> None:
        self.spec = s
        self.name, self.id, self.direction = s.name, s.id, s.direction
        self.vif = s.source if s.kind == "vif" else None
        self.network = None if s.kind == "vif" else s.source
        self.policy = None if s.rule is None else CompiledPolicy(Policy(s.source, "deny", (s.rule,)))
        self.rate = s.rate
        self.burst = max(1.0, s.rate * BURST_SECONDS)
        self.tokens = self.burst
        self.last: float | None = None
        self.copies = self.bytes = self.drops = self.truncated = 0
        self.room = mtu - COPY_OVERHEAD - 14        # the largest frame an analyzer's copy carries whole
        self.ident = 0
        a = s.analyzer
        self.prefix = b""
        self.peer: str | None = None
        self.encap: str | None = None
        self.to_vif: str | None = None
        if a is not None:
            nh = a.nexthop
            if nh["type"] == "vif":
                self.to_vif = nh["vif"]
                self.prefix = vifs[nh["vif"]].eth if nh["vif"] in vifs else b""
            else:
                self.peer, self.encap = nh["peer"], nh["encap"]
                self.prefix = encap_prefix(nh["encap"], nh["label"], mac_to_bytes(nh["mac"]))

    def allow(self, now: float) -> bool:
        """The token bucket: one token per copy, refilled at ``rate`` up to ``burst``."""
        last = self.last
        tokens = self.tokens if last is None else min(self.burst, self.tokens + (now - last) * self.rate)
        self.last = now
        if tokens < 1.0:
            self.tokens = tokens
            self.drops += 1
            return False
        self.tokens = tokens - 1.0
        return True

    def wrap(self, frame: bytes) -> bytes:
        """The analyzer's copy: an IPv4/UDP/VXLAN packet around ``frame`` (cut to fit one packet)."""
        if len(frame) > self.room:
            frame = frame[:self.room]
            self.truncated += 1
        self.ident = (self.ident + 1) & 0xFFFF
        a = self.spec.analyzer
        assert a is not None
        udp = build_udp(a.gateway, a.address, MIRROR_SPORT + (self.id & 0x3FFF), VXLAN_PORT,
                        vxlan.build(self.id) + frame, with_checksum=False)    # RFC 7348: checksum 0
        return ipv4.build(a.gateway, a.address, ipv4.IPPROTO_UDP, udp, ident=self.ident)

    def describe(self) -> dict[str, Any]:
        s = self.spec
        source = {s.kind: s.source} if s.rule is None else {"rule": {"network": s.source, **rule_fields(s.rule)}}
        return {"name": s.name, "id": s.id, "source": source, "direction": s.direction,
                "to": {"analyzer": s.analyzer.vm} if s.analyzer else {"pcap": True}, "rate": s.rate,
                "copies": self.copies, "bytes": self.bytes, "drops": self.drops, "truncated": self.truncated}


class Mirror:
    """The sessions of one pipeline, the copies waiting for the shell (``out``), and the marking."""

    def __init__(self) -> None:
        self.sessions: dict[str, Session] = {}
        self.out: list[Any] = []                # ToPcap | ClosePcap | ToTunnel | ToVif, for the shell
        self._by_addr: dict[tuple[int, int], str] = {}      # (vrf, VIF address) -> VIF name
        self._vif_net: dict[str, str] = {}
        self._gateways: dict[int, int] = {}     # vrf -> its gateway address (the copies' source)

    def configure(self, config: VrouterConfig, vifs: Mapping[str, VifState]) -> None:
        """A new config: sessions kept (same spec) keep their counters and bucket."""
        vrf_of = {n.name: n.id for n in config.networks}
        self._by_addr = {(v.vrf, v.ip): v.name for v in vifs.values()}
        self._vif_net = {v.name: v.network for v in config.vifs}
        self._gateways = {n.id: n.gateway for n in config.networks}
        mtu = vm_mtu(config)
        old, self.sessions = self.sessions, {}
        for s in config.mirrors:
            kept = old.pop(s.name, None)
            self.sessions[s.name] = kept if kept is not None and kept.spec == s else Session(s, vifs, vrf_of, mtu)
        self.out.extend(ClosePcap(name) for name in old)

    def mark(self, e: FlowEntry) -> tuple[Session, ...] | None:
        """The sessions that mirror entry ``e`` (decided, its action set), or None."""
        if not self.sessions or e.kind not in (TO_VIF, TO_TUNNEL):      # not drops, NAT, held
            return None
        vrf, proto, src, dst, sport, dport = e.key
        if proto == 17 and dport == VXLAN_PORT and self._gateways.get(vrf) == src:
            return None                                     # a copy itself
        src_vif = e.pin if e.pin in self._vif_net else self._by_addr.get((vrf, src))
        dst_vif = e.vif if e.kind == TO_VIF else None
        found = []
        for s in self.sessions.values():
            ends = []
            if s.direction != "egress" and src_vif is not None:
                ends.append(src_vif)
            if s.direction != "ingress" and dst_vif is not None:
                ends.append(dst_vif)
            if s.vif is not None:
                hit = s.vif in ends
            else:
                hit = any(self._vif_net.get(v) == s.network for v in ends)
                if hit and s.policy is not None:
                    hit = s.policy.evaluate(proto, src, dst, sport, dport)[0] or \
                        s.policy.evaluate(proto, dst, src, dport, sport)[0]
            if hit:
                found.append(s)
        return tuple(found) or None

    def copy(self, e: FlowEntry, buf: bytes, off: int, tlen: int, fabric: bool, out: bytes, now: float) -> None:
        """A hit on a mirrored entry: the IPv4 packet is ``buf[off:off + tlen]``, ``out`` what the hit
        sends on (for a delivery to a VM: the very frame it gets)."""
        if not fabric:
            frame = buf[off - 14:off + tlen]        # the VM's frame as it sent it
        elif e.kind == TO_VIF:
            frame = out
        else:
            frame = PLAIN_ETH + buf[off:off + tlen]
        for s in e.mirror or ():
            if not s.allow(now):
                continue
            s.copies += 1
            s.bytes += len(frame)
            if s.spec.analyzer is None:
                self.out.append(ToPcap(s.name, frame, now))
            elif s.to_vif is not None:
                self.out.append(ToVif(s.to_vif, s.prefix + s.wrap(frame)))
            elif s.peer is not None and s.encap is not None:
                self.out.append(ToTunnel(s.peer, s.encap, MIRROR_SPORT + (s.id & 0x3FFF), s.prefix + s.wrap(frame)))

    def take(self) -> list[Any]:
        out, self.out = self.out, []
        return out

    def describe(self) -> list[dict[str, Any]]:
        return [self.sessions[n].describe() for n in sorted(self.sessions)]
