"""NAT on the flow table: floating IPs (1:1) and source NAT, each flow a pair of entries that carry
both translations, so the proactive reverse entry stays right for NAT flows too.

Why here and how (docs/vrouter-core.md, "NAT and the default network"):
- The default network (routing instance ``DEFAULT_VRF``, core/vrf.py) is the seed's default
  forwarding table: what is outside every virtual network goes to the gateway without a tunnel, as
  a plain IP packet out of the server's external port (``ToExternal``; the shell writes it to a TUN
  device in the server's namespace, whose kernel routes it to the gateway), and what comes in on
  that port (``Nat.from_external``) is keyed in the default network.
- A VM's packet whose route is ``external`` is translated: to its VM's floating IP (1:1), else to
  the server's SNAT address with a port from a ``PortAllocator`` (ICMP echo: the identifier).
  The forward entry is keyed like any VM flow and rewrites the source; the reverse entry is keyed
  in the default network as the reply arrives (external host -> translated address and port) and
  rewrites the destination back. A packet from outside to a floating IP makes the mirror pair.
- Both entries are charged to the VM (a floating IP's inbound flow too: admission.py maps the
  floating IP to its VM), so NAT flows count against the VM's flow limits. NAT decisions always
  carry the reverse entry, in reactive mode too: the reply could not be keyed without it.
- A SNAT port is taken when the decision is installed (the flow table owns its ports, so they go
  back when the pair is removed: aged, closed, evicted, torn down) and released with the forward
  entry. The multi-core engine keeps one table per worker: NAT needs the single forwarder.
- Checksums: the IPv4 header checksum is computed again; TCP/UDP and ICMP checksums are updated
  incrementally (RFC 1624), except a partial TCP/UDP checksum (a VM's NEEDS_CSUM frame: the field
  holds the pseudo-header sum, core/gso.py), which becomes the new pseudo-header sum.

Pure (a core module).
"""
from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from .actions import Action, Drop, ToExternal, ToVif
from .codec.errors import Malformed
from .codec.ipv4 import FLAG_MF, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, OFFSET_MASK, checksum, int_to_ip
from .codec.l4 import ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST
from .config import VrouterConfig
from .flowkey import Extracted, extract
from .flowtable import DROP, HELD_EXTERNAL, NAT, FlowEntry, FlowTable, Held
from .gso import fold, pseudo_sum
from .natschema import DEFAULT_VRF, NatSettings
from .vrf import RoutingInstance

_PORTED = (IPPROTO_TCP, IPPROTO_UDP)
_ECHO = (ICMP_ECHO_REQUEST, ICMP_ECHO_REPLY)
_PROTOCOLS = (("tcp", IPPROTO_TCP), ("udp", IPPROTO_UDP), ("icmp", IPPROTO_ICMP))     # SNAT's port spaces
_H = struct.Struct("!H")
_HH = struct.Struct("!HH")
_II = struct.Struct("!II")


class PortAllocator:
    """Free ports of one SNAT address, per protocol: O(1) take and give back, lowest first."""

    def __init__(self, first: int, last: int) -> None:
        self.first, self.last = first, last
        self._free: dict[int, list[int]] = {}
        self._used: dict[int, set[int]] = {}

    def take(self, proto: int) -> int | None:
        free = self._free.get(proto)
        if free is None:
            free = self._free[proto] = list(range(self.last, self.first - 1, -1))
            self._used[proto] = set()
        if not free:
            return None
        port = free.pop()
        self._used[proto].add(port)
        return port

    def give(self, proto: int, port: int) -> None:
        used = self._used.get(proto)
        if used is not None and port in used:
            used.discard(port)
            self._free[proto].append(port)

    def size(self) -> int:
        return self.last - self.first + 1

    def in_use(self, proto: int | None = None) -> int:
        return sum(len(u) for p, u in self._used.items() if proto is None or p == proto)


class Rewrite:
    """One entry's translation: the addresses and ports its packets leave with, where they go
    (``vif`` and its Ethernet ``prefix``, or out of the external port when ``vif`` is None), and the
    SNAT port it holds (released once, with the entry)."""
    __slots__ = ("src", "dst", "sport", "dport", "vif", "prefix", "binding", "lease", "_addrs")

    def __init__(self, nat: dict[str, Any], vif: str | None, prefix: bytes, binding: tuple[str, str, int],
                 lease: tuple[PortAllocator, int, int] | None = None) -> None:
        self.src, self.dst, self.sport, self.dport = nat["src"], nat["dst"], nat["sport"], nat["dport"]
        self.vif, self.prefix, self.binding, self.lease = vif, prefix, binding, lease
        self._addrs = _II.pack(self.src, self.dst)

    def release(self) -> None:
        if self.lease is not None:
            allocator, proto, port = self.lease
            allocator.give(proto, port)
            self.lease = None

    def apply(self, buf: bytes, off: int, tlen: int, ttl: int) -> bytes:
        """The IPv4 packet at ``off`` translated, its TTL decremented, its checksums right."""
        ihl = (buf[off] & 15) * 4
        hdr = bytearray(buf[off:off + ihl])
        old_src, old_dst = _II.unpack_from(hdr, 12)
        hdr[8] = ttl - 1
        hdr[10:12] = b"\0\0"
        hdr[12:20] = self._addrs
        hdr[10:12] = _H.pack(checksum(hdr))
        l4 = bytearray(buf[off + ihl:off + tlen])
        fw, proto = hdr[6] << 8 | hdr[7], hdr[9]
        if fw & OFFSET_MASK:
            pass            # a later fragment: no L4 header, its checksum was fixed in the first
        elif proto in _PORTED and len(l4) >= (18 if proto == IPPROTO_TCP else 8):
            at = 16 if proto == IPPROTO_TCP else 6
            (field,) = _H.unpack_from(l4, at)
            words = (old_src >> 16, old_src & 0xFFFF, old_dst >> 16, old_dst & 0xFFFF, *_HH.unpack_from(l4, 0))
            _HH.pack_into(l4, 0, self.sport, self.dport)
            if proto == IPPROTO_UDP and field == 0:
                pass        # no UDP checksum: none to keep right
            elif not fw & FLAG_MF and field == pseudo_sum(old_src, old_dst, proto, tlen - ihl):
                _H.pack_into(l4, at, pseudo_sum(self.src, self.dst, proto, tlen - ihl))
            else:
                new = (self.src >> 16, self.src & 0xFFFF, self.dst >> 16, self.dst & 0xFFFF, self.sport, self.dport)
                c = adjust(field, words, new)
                _H.pack_into(l4, at, 0xFFFF if proto == IPPROTO_UDP and c == 0 else c)
        elif proto == IPPROTO_ICMP and len(l4) >= 8 and l4[0] in _ECHO:
            (old_id,) = _H.unpack_from(l4, 4)
            _H.pack_into(l4, 4, self.sport)
            _H.pack_into(l4, 2, adjust(_H.unpack_from(l4, 2)[0], (old_id,), (self.sport,)))
        return bytes(hdr) + bytes(l4)

    def describe(self) -> dict[str, Any]:
        return {"src": int_to_ip(self.src), "dst": int_to_ip(self.dst), "sport": self.sport,
                "dport": self.dport, "kind": self.binding[0], "out": self.vif or "external"}


def adjust(field: int, old: tuple[int, ...], new: tuple[int, ...]) -> int:
    """A checksum after 16-bit words ``old`` became ``new`` (RFC 1624, eqn. 3: HC' = ~(~HC + ~m + m'))."""
    total = (~field & 0xFFFF) + sum(~w & 0xFFFF for w in old) + sum(new)
    return ~fold(fold(total)) & 0xFFFF


# ---------------------------------------------------------------- the slow path's NAT decisions
def decide(vrfs: dict[int, RoutingInstance], config: VrouterConfig, request: dict[str, Any],
           vrf: RoutingInstance, nexthop: dict[str, Any]) -> dict[str, Any]:
    """The decision of a flow that leaves a VM for outside, or enters from outside (SlowPath.decide
    hands it here when the route says so): both entries, both translations."""
    nat = config.nat
    assert nat is not None
    proto, src, dst, sport, dport = (request["proto"], request["src"], request["dst"], request["sport"],
                                     request["dport"])
    key = [proto, src, dst, sport, dport]
    vifs = {v.name: v for v in config.vifs}
    if request["ingress"] == "vif":                 # VM -> outside
        vif = vifs[request["port"]]
        fip = next((f.address for f in nat.floating_ips if f.vm == vif.name), None)
        if fip is not None:
            binding = ("floating", vif.name, fip)
        elif vif.network in nat.snat_networks and nat.snat_address is not None:
            if proto not in _PORTED and proto != IPPROTO_ICMP:     # nothing to tell its flows apart by
                return _refused(request, key, "nat_unsupported")
            binding, fip = ("snat", vif.network, nat.snat_address), nat.snat_address
        else:
            return _refused(request, key, "no_nat")
        allowed, rule = vrf.policy.evaluate(proto, src, dst, sport, dport)
        back, rrule = vrf.policy.evaluate(proto, dst, src, dport, sport)
        fwd = _spec(key, allowed, {"type": "external"}, rule,
                    {"src": fip, "dst": dst, "sport": sport, "dport": dport, "binding": list(binding)})
        rev = _spec([proto, dst, fip, dport, sport], back, {"type": "vif", "vif": vif.name}, rrule,
                    {"src": dst, "dst": src, "sport": dport, "dport": sport, "binding": list(binding)})
        rev["vrf"] = DEFAULT_VRF
        return {"vrf": request["vrf"], "mode": "nat", "forward": fwd, "reverse": rev}
    if nexthop["type"] != "floating":               # outside -> the SNAT address or nowhere: no flow
        return _refused(request, key, "nat_no_flow" if nexthop["type"] == "snat" else "no_route")
    vif = vifs[nexthop["vif"]]
    inner = next(ri for ri in vrfs.values() if ri.name == vif.network)
    binding = ("floating", vif.name, dst)
    allowed, rule = inner.policy.evaluate(proto, src, vif.ip, sport, dport)
    back, rrule = inner.policy.evaluate(proto, vif.ip, src, dport, sport)
    fwd = _spec(key, allowed, {"type": "vif", "vif": vif.name}, rule,
                {"src": src, "dst": vif.ip, "sport": sport, "dport": dport, "binding": list(binding)})
    rev = _spec([proto, vif.ip, src, dport, sport], back, {"type": "external"}, rrule,
                {"src": dst, "dst": src, "sport": dport, "dport": sport, "binding": list(binding)})
    rev["vrf"] = inner.id
    return {"vrf": DEFAULT_VRF, "mode": "nat", "forward": fwd, "reverse": rev}


def _spec(key: list[int], allowed: bool, nexthop: dict[str, Any], rule: int, nat: dict[str, Any]) -> dict[str, Any]:
    return {"key": key, "action": "forward" if allowed else "drop", "reason": None if allowed else "policy_deny",
            "nexthop": nexthop, "rule": rule, "nat": nat}


def _refused(request: dict[str, Any], key: list[int], reason: str) -> dict[str, Any]:
    return {"vrf": request["vrf"], "mode": "nat", "reverse": None,
            "forward": {"key": key, "action": "drop", "reason": reason, "nexthop": None, "rule": None}}


# ---------------------------------------------------------------- the pipeline's side
Lookup = Callable[[int, bytes, int, Extracted, bool, float, Held, tuple[str, str]], list[Action]]


class Nat:
    """What the pipeline (core/pipeline.py, which owns one as ``self.nat``) does for NAT: the external
    port, SNAT ports at install, the NAT entries' actions, and their fate when the configuration
    changes. It knows the flow table and two callbacks of the pipeline, nothing else of it:
    ``lookup`` keys a packet from the external port like any other (hit, held or punted) and
    ``drop`` counts a drop and returns its action."""

    def __init__(self, table: FlowTable, lookup: Lookup, drop: Callable[[str], list[Action]]) -> None:
        self.table = table
        self._lookup, self._drop = lookup, drop
        self.settings: NatSettings | None = None
        self.ports: PortAllocator | None = None
        self._eth: dict[str, bytes] = {}     # VM interface -> the Ethernet header its frames get

    def from_external(self, packet: bytes, now: float) -> list[Action]:
        """An IPv4 packet read from the external port (the TUN toward the gateway)."""
        if self.settings is None:
            return self._drop("no_route")
        try:
            pkt = extract(packet, 0)
        except Malformed:
            return self._drop("malformed")
        return self._lookup(DEFAULT_VRF, packet, 0, pkt, True, now, (HELD_EXTERNAL, "", packet),
                            ("external", "gateway"))

    def configure(self, config: VrouterConfig, eth: dict[str, bytes]) -> None:
        """Take the NAT of a (new) config and the Ethernet header of each VM interface (``eth``); pairs
        whose floating IP or source NAT went are removed."""
        nat = config.nat
        old = self.settings
        if nat is None or nat.snat_address is None:
            self.ports = None
        elif old is None or old.snat_address != nat.snat_address or old.snat_ports != nat.snat_ports \
                or self.ports is None:
            self.ports = PortAllocator(*nat.snat_ports)
        self.settings, self._eth = nat, eth
        valid = set() if nat is None else {("floating", f.vm, f.address) for f in nat.floating_ips} | \
            {("snat", n, nat.snat_address) for n in nat.snat_networks}
        flows = self.table.entries
        for e in list(flows.values()):
            r = e.nat
            if r is not None and r.binding not in valid and flows.get(e.key) is e:
                self.table.remove_pair(e, "flush")

    def bind(self, decision: dict[str, Any]) -> dict[str, Any]:
        """A SNAT decision with its port taken (or refused as ``nat_ports_exhausted``)."""
        fwd = decision["forward"]
        nat = fwd.get("nat")
        if nat is None or nat["binding"][0] != "snat" or decision.get("reverse") is None:
            return decision
        proto = fwd["key"][0]
        port = self.ports.take(proto) if self.ports is not None else None
        if port is None:
            return {**decision, "reverse": None, "forward": {**fwd, "action": "drop", "reason": "nat_ports_exhausted",
                                                             "nat": None}}
        rev = decision["reverse"]
        both = proto == IPPROTO_ICMP            # an echo's identifier stands for both ports
        nat = {**nat, "sport": port, "dport": port if both else nat["dport"], "lease": port}
        rkey = [*rev["key"][:3], port if both else rev["key"][3], port]
        return {**decision, "forward": {**fwd, "nat": nat}, "reverse": {**rev, "key": rkey}}

    def set_entry(self, e: FlowEntry, spec: dict[str, Any]) -> bool:
        """Make ``e`` a NAT entry if its spec says so (True); an entry that stops being one lets its
        translation and its port go."""
        if e.nat is not None:
            e.nat.release()
            e.nat = None
        nat = spec.get("nat")
        if nat is None:
            return False
        e.nexthop, e.rule = spec.get("nexthop"), spec.get("rule")
        if spec["action"] != "forward":
            reason = spec.get("reason") or "policy_deny"
            e.kind, e.reason, e.drop = DROP, reason, Drop(reason)
            return True
        vif = spec["nexthop"].get("vif")
        lease = (self.ports, e.key[1], nat["lease"]) if nat.get("lease") is not None and self.ports else None
        e.nat = Rewrite(nat, vif, self._eth.get(vif, b""), tuple(nat["binding"]), lease)
        e.kind = NAT
        e.reason = e.drop = None  # type: ignore[assignment]
        return True

    def hit(self, e: FlowEntry, buf: bytes, off: int, tlen: int, ttl: int) -> list[Action]:
        """A packet of a NAT entry: translated, out of the external port or to its VM."""
        if ttl <= 1:
            return self._drop("ttl_expired")
        r = e.nat
        out = r.apply(buf, off, tlen, ttl)
        if r.vif is None:
            return [ToExternal(out)]
        return [ToVif(r.vif, r.prefix + out)]

    def state(self) -> dict[str, Any]:
        """The NAT settings, the SNAT ports in use and free per protocol (the ``nat`` introspection op)."""
        nat = self.settings
        if nat is None:
            return {"enabled": False, "why": "no NAT in this server's configuration"}
        ports = self.ports
        used = {name: ports.in_use(p) for name, p in _PROTOCOLS} if ports is not None else {}
        return {"enabled": True, "floating": f"{int_to_ip(nat.floating[0])}/{nat.floating[1]}",
                "snat_address": int_to_ip(nat.snat_address) if nat.snat_address is not None else None,
                "snat_networks": list(nat.snat_networks), "snat_ports": list(nat.snat_ports),
                "floating_ips": [{"vif": f.vm, "address": int_to_ip(f.address)} for f in nat.floating_ips],
                "ports_in_use": used,
                "ports_free": {name: ports.size() - n for name, n in used.items()} if ports is not None else {},
                "nat_flows": sum(1 for e in self.table.entries.values() if e.nat is not None)}
