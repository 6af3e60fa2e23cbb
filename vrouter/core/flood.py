"""Flooding in a virtual network: broadcast, IPv4 multicast, ARP no route answers, unknown unicast.

The pipeline answers a VM's ARP itself for every address it routes (proxy ARP, core/local.py) and
routes IPv4 unicast by its FIB; what has no local answer is this module's (docs/vrouter-core.md,
"Flooding"): an ARP for an address no route has, frames to ff:ff:ff:ff:ff:ff or an IPv4 multicast MAC
(01:00:5e:..), and an ARP reply (unicast at L2) to a MAC that is not the vrouter's.

Ingress replication through a flooding next hop, as Tungsten Fabric does: the VNC gives each vrouter,
per network with local members, the flood endpoints (peer, encap, label) of every other server of
the network (core/floodschema.py). A flood frame from a local VM is copied to the network's other
local VMs and once to each endpoint; one from the fabric only to the local VMs (split horizon: never
back into the fabric), and never into another network. Over MPLS the copy carries the network's L2
label (Ethernet follows it, not IPv4); over VXLAN the frame is native behind the network's VNI.

An L2 unicast frame (an ARP reply to a flooded request) goes where its destination MAC is: a local
VM's, or one learned from a flood's source MAC (which endpoint it came from, aged by ``mac_age`` of
the injected clock); an unknown one is flooded. Each VM's flood frames pass a token bucket (``rate``,
``burst``): beyond it they are dropped as ``flood_storm`` (counted like every drop, dropstats).

Pure: frames and the clock in, actions out; the pipeline calls ``from_vif`` / ``from_fabric`` on its
slow paths only (the flow-hit path never meets this module).
"""
from __future__ import annotations

import struct
from collections.abc import Callable, Mapping
from typing import Any

from . import gso
from .actions import Action, ToTunnel, ToVif
from .codec import arp, vxlan
from .codec.errors import Malformed
from .codec.ethernet import mac_to_str
from .config import VROUTER_MAC, VrouterConfig
from .encap import VifState
from .floodschema import MAC_TABLE_MAX, FloodConfig
from .vrf import RoutingInstance

_ARP = b"\x08\x06"
_IP = b"\x08\x00"
_WORD = struct.Struct("!I")
_GRE_MPLS = b"\x00\x00\x88\x47"
_VXLAN_I = 0x08000000
_REQUEST = b"\x00\x01"     # ARP opcode 1
COUNTERS = ("from_vms", "from_fabric", "to_vms", "to_tunnels", "unicast", "unknown_unicast", "storm_drops",
            "learned", "aged")
Where = tuple[str, str, int]        # (peer, encap, label): how a learned MAC is reached


def l2_prefix(encap: str, label: int) -> bytes:
    """What goes before the Ethernet frame of a flood copy in a ToTunnel payload."""
    if encap == "vxlan":
        return vxlan.build(label)
    word = _WORD.pack(label << 12 | 0x100 | 64)
    return _GRE_MPLS + word if encap == "mplsogre" else word


class _Net:
    """One network's flood state on this vrouter: members, endpoints, MAC table, counters."""
    __slots__ = ("name", "vrf", "label", "members", "local", "ips", "endpoints", "macs", "counters")

    def __init__(self, name: str, vrf: int) -> None:
        self.name, self.vrf, self.label = name, vrf, 0
        self.members: tuple[str, ...] = ()
        self.local: dict[bytes, str] = {}           # a local member's MAC -> its VIF
        self.ips: frozenset[bytes] = frozenset()    # the local members' addresses (ARP answered here)
        self.endpoints: tuple[tuple[str, str, int, bytes], ...] = ()   # peer, encap, label, prefix
        self.macs: dict[bytes, list[Any]] = {}      # learned MAC -> [Where, last seen], oldest first
        self.counters = dict.fromkeys(COUNTERS, 0)

    def learn(self, mac: bytes, where: Where, now: float) -> None:
        e = self.macs.pop(mac, None)
        if e is None:
            self.counters["learned"] += 1
            if len(self.macs) >= MAC_TABLE_MAX:
                del self.macs[next(iter(self.macs))]
        self.macs[mac] = [where, now]               # re-inserted: the dict stays in last-seen order

    def lookup(self, mac: bytes, now: float, age: float) -> Where | None:
        e = self.macs.get(mac)
        if e is None:
            return None
        if now - e[1] > age:
            del self.macs[mac]
            self.counters["aged"] += 1
            return None
        where: Where = e[0]
        return where

    def expire(self, now: float, age: float) -> None:
        for mac in [m for m, e in self.macs.items() if now - e[1] > age]:
            del self.macs[mac]
            self.counters["aged"] += 1


class Flood:
    """The flood decisions of one pipeline; ``drop(reason)`` is the pipeline's counted drop."""

    def __init__(self, drop: Callable[[str], list[Action]]) -> None:
        self._drop = drop
        self._nets: dict[int, _Net] = {}            # by routing instance id (= network id = VXLAN VNI)
        self._by_label: dict[int, _Net] = {}        # by L2 label (the MPLS encapsulations)
        self._buckets: dict[str, list[float]] = {}  # VIF -> [tokens, last refill]
        self.rate, self.burst, self.mac_age = 0.0, 0, 0.0

    def configure(self, cfg: FloodConfig, config: VrouterConfig, vifs: Mapping[str, VifState]) -> None:
        """A new configuration: MAC tables, counters and buckets of what stays are kept."""
        self.rate, self.burst, self.mac_age = cfg.rate, cfg.burst, cfg.mac_age
        ids = {n.name: n.id for n in config.networks}
        old = {n.name: n for n in self._nets.values()}
        nets: dict[int, _Net] = {}
        for fn in cfg.networks:
            net = old.get(fn.network)
            if net is None or net.vrf != ids[fn.network]:
                net = _Net(fn.network, ids[fn.network])
            net.label = fn.label
            net.members = tuple(v.name for v in vifs.values() if v.vrf == net.vrf)
            net.local = {v.mac: v.name for v in vifs.values() if v.vrf == net.vrf}
            net.ips = frozenset(v.ip.to_bytes(4, "big") for v in vifs.values() if v.vrf == net.vrf)
            net.endpoints = tuple((e.peer, e.encap, e.label, l2_prefix(e.encap, e.label)) for e in fn.endpoints)
            for mac in [m for m in net.macs if m in net.local]:     # now a local VM's
                del net.macs[mac]
            nets[net.vrf] = net
        self._nets = nets
        self._by_label = {n.label: n for n in nets.values()}
        self._buckets = {v: b for v, b in self._buckets.items() if v in vifs}

    # ---------------------------------------------------------------- from a VM
    def from_vif(self, vif: VifState, frame: bytes, now: float,
                 vrfs: Mapping[int, RoutingInstance]) -> list[Action] | None:
        """The actions for an Ethernet frame of ``vif`` that is flooding's, or None: not ours (the
        pipeline goes on as without flooding: proxy ARP, routing, its drops)."""
        net = self._nets.get(vif.vrf)
        et = frame[12:14]
        if net is None:
            return None
        dst = frame[:6]
        if et == _ARP:
            try:
                req = arp.parse(frame, 14)
            except Malformed:
                return None
            if req.op == arp.ARP_REQUEST and (req.tpa == vif.ip or req.tpa == req.spa or
                                              vrfs[vif.vrf].fib.lookup(req.tpa) is not None):
                return None                         # the vrouter's own answer (core/local.py)
            if dst == VROUTER_MAC:
                return None
        elif et == _IP and dst[0] & 1 and len(frame) >= 34:
            src = int.from_bytes(frame[26:30], "big")
            if src != vif.ip and src and src not in vif.services:
                return None                         # spoofed_source, as any packet of the VM
        else:
            return None
        if frame[6:12] != vif.mac:
            return self._drop("spoofed_source")     # a foreign source MAC would poison MAC tables
        c = net.counters
        if not dst[0] & 1:
            local = net.local.get(dst)
            if local is not None and local != vif.name:
                c["unicast"] += 1
                return [ToVif(local, frame)]
            where = self.lookup(net, dst, now)
            if where is not None:
                c["unicast"] += 1
                peer, encap, label = where
                return [ToTunnel(peer, encap, _sport(frame), l2_prefix(encap, label) + _complete(frame))]
            c["unknown_unicast"] += 1
        if not self._take(vif.name, now):
            c["storm_drops"] += 1
            return self._drop("flood_storm")
        c["from_vms"] += 1
        out: list[Action] = [ToVif(m, frame) for m in net.members if m != vif.name]
        c["to_vms"] += len(out)
        if net.endpoints:
            inner, sport = _complete(frame), _sport(frame)
            out += [ToTunnel(peer, encap, sport, prefix + inner) for peer, encap, _, prefix in net.endpoints]
            c["to_tunnels"] += len(net.endpoints)
        return out

    def lookup(self, net: _Net, mac: bytes, now: float) -> Where | None:
        return net.lookup(mac, now, self.mac_age)

    def _take(self, vif: str, now: float) -> bool:
        """One token of the VM's bucket (``rate`` per second, at most ``burst``), if it has one."""
        b = self._buckets.get(vif)
        if b is None:
            b = self._buckets[vif] = [float(self.burst), now]
        tokens = min(float(self.burst), b[0] + (now - b[1]) * self.rate)
        b[1] = now
        if tokens < 1.0:
            b[0] = tokens
            return False
        b[0] = tokens - 1.0
        return True

    # ---------------------------------------------------------------- from the fabric
    def from_fabric(self, outer_src: str, encap: str, payload: bytes, now: float,
                    vrfs: Mapping[int, RoutingInstance] | None = None) -> list[Action] | None:
        """The actions for a tunnel payload that carries a network's Ethernet frame (an L2 label, or a
        VXLAN frame that is ARP or to a group MAC), or None: not ours (the pipeline routes it)."""
        if encap == "vxlan":
            if len(payload) < 22:
                return None
            flags, word = struct.unpack_from("!II", payload)
            net = self._nets.get(word >> 8) if flags & _VXLAN_I else None
            if net is None:
                return None
            et = payload[20:22]
            if not (et == _ARP or (et == _IP and payload[8] & 1)):
                return None                         # IPv4 unicast: routed
            if et == _ARP and len(payload) < 50:
                return self._drop("malformed")
            if et == _ARP and payload[28:30] == _REQUEST and (
                    payload[46:50] in net.ips or
                    vrfs is not None and vrfs[net.vrf].fib.lookup(int.from_bytes(payload[46:50], "big")) is not None):
                return None     # a host's ARP for a known VM: its server answers it (core/fabric_arp.py)
            label, off = word >> 8, 8
        else:
            off = 4 if encap == "mplsogre" else 0
            if len(payload) < off + 4 or (off and payload[:4] != _GRE_MPLS):
                return None
            (word,) = _WORD.unpack_from(payload, off)
            net = self._by_label.get(word >> 12)
            if net is None or not word & 0x100:
                return None
            label, off = word >> 12, off + 4
        frame = payload[off:]
        if len(frame) < 14:
            return self._drop("malformed")
        if frame[12:14] not in (_ARP, _IP):
            return self._drop("not_ip")
        src, dst, c = frame[6:12], frame[:6], net.counters
        if not src[0] & 1 and src not in net.local:
            net.learn(src, (outer_src, encap, label), now)
        if not dst[0] & 1:
            local = net.local.get(dst)
            if local is not None:
                c["unicast"] += 1
                return [ToVif(local, frame)]
            c["unknown_unicast"] += 1
        c["from_fabric"] += 1
        c["to_vms"] += len(net.members)
        return [ToVif(m, frame) for m in net.members]   # split horizon: no copy back to the fabric

    # ---------------------------------------------------------------- introspection
    def describe(self, now: float) -> dict[str, Any]:
        """The `flood` introspection op: settings, and per network its flood list, MACs, counters."""
        nets = []
        for net in sorted(self._nets.values(), key=lambda n: n.name):
            net.expire(now, self.mac_age)
            macs = [{"mac": mac_to_str(m), "vif": v, "local": True} for m, v in sorted(net.local.items())]
            macs += [{"mac": mac_to_str(m), "peer": e[0][0], "encap": e[0][1], "label": e[0][2], "local": False,
                      "age": round(now - e[1], 1)} for m, e in net.macs.items()]
            nets.append({"network": net.name, "vrf": net.vrf, "label": net.label, "members": list(net.members),
                         "endpoints": [{"peer": p, "encap": e, "label": lb} for p, e, lb, _ in net.endpoints],
                         "macs": macs, "counters": dict(net.counters)})
        buckets = {v: round(min(float(self.burst), b[0] + (now - b[1]) * self.rate), 1)
                   for v, b in sorted(self._buckets.items())}
        return {"enabled": True, "rate": self.rate, "burst": self.burst, "mac_age": self.mac_age,
                "networks": nets, "tokens": buckets}


def configured(prev: Flood | None, config: VrouterConfig, vifs: Mapping[str, VifState],
               drop: Callable[[str], list[Action]]) -> Flood | None:
    """The pipeline's Flood for ``config`` (None: the config has no ``flood``, nothing floods)."""
    cfg: FloodConfig | None = config.flood
    if cfg is None:
        return None
    flood = prev if prev is not None else Flood(drop)
    flood.configure(cfg, config, vifs)
    return flood


def _sport(frame: bytes) -> int:
    """The outer source port of a VM's flood copies: from its source MAC (one path per VM)."""
    return 0xC000 | (frame[10] << 8 | frame[11]) & 0x3FFF


def _complete(frame: bytes) -> bytes:
    """The frame with a partial UDP/TCP checksum (a VM's checksum offload) computed: the copy over
    the fabric carries no virtio header that could say NEEDS_CSUM (local copies keep theirs)."""
    if frame[12:14] != _IP or gso.partial_offset(frame, 14) is None:
        return frame
    try:
        return gso.complete_checksum(frame, 14)
    except Malformed:
        return frame
