"""The forwarding pipeline: ``(interface, packet bytes, now) -> actions``.

Hit path (what the per-core forwarder runs for almost every packet): one ``struct.unpack_from`` of
the outer label/VNI plus the inner 5-tuple, one dict lookup, a TTL rewrite with an incremental
checksum, one bytes join with the encapsulation cached in the flow entry, one action; for TCP also
a copy of the segment's headers into the entry (tcpstate.py checks a later RST against them).
ICMP echoes (pings) of established flows take it too: their key has the echo id where ports are.
Anything unusual (IP options, fragments, other ICMP, ARP, held flows, misses, bad input) falls through to
the slow parser, which validates everything and turns every problem into a named, counted drop.

Merged GRO deliveries come as a head (tunnel, IPv4, TCP headers) and a ``tail`` (their data): a hit
on an entry to a VM, or a drop, is decided on the head and returns a ToVifParts that the shell writes
in one writev; anything else (a miss, whose held packet keeps every byte, transit, bad input) joins
them and takes the one-buffer path. Only the flow entry knows which, so the choice is made here.

TTL: the vrouter that receives a packet from a VM is the routing hop and decrements the inner TTL;
one that delivers it from the fabric to a VM does not (the VM sees its gateway once); one that routes
it from the fabric back into the fabric does, so a routing loop between vrouters ends.

IP fragments: the first fragment carries the ports and is keyed like any packet; (vrf, proto, src,
dst, IP id) -> ports is then kept in a bounded table for the later fragments; a non-first fragment
whose head was not seen is dropped (``fragment_no_head``); the last one (MF clear) forgets it.

A miss admits the new flow (``admission.py``: per-VM and per-network limits, held limits; the
table makes room by evicting its oldest unreplied pair), creates the HOLD entry and queues the punt
request in the setup queue; the shell takes the requests with ``take_punts`` when its channel to
the agent can carry them. No action is returned for a punt.
"""
import struct
from typing import Any

from . import drops as _drops
from . import ecmp, fabric_arp, flood, flowrecords, local, tcpstate
from .actions import Action, Drop, PuntRequest, ToTunnel, ToVif, ToVifParts, punt_request
from .admission import Admission, Waiting
from .codec import ethernet, gre, mpls, outer, vxlan
from .codec.errors import Malformed
from .codec.ipv4 import FLAG_MF, int_to_ip
from .codec.l4 import ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST, TCP_FIN, TCP_RST, TCP_SYN
from .config import VROUTER_MAC, VrouterConfig
from .encap import VifState, encap_prefix
from .fib import Nexthop
from .flowkey import Extracted, FlowKey, entropy_port, extract, key_hash, reverse
from .flowtable import (
    DROP,
    HELD_FABRIC,
    HELD_VIF,
    HOLD,
    NAT,
    TCP_PEER_FIN,
    TO_TUNNEL,
    TO_VIF,
    FlowEntry,
    FlowTable,
    Held,
)
from .fragments import Fragments
from .mirror import Mirror
from .nat import Nat
from .paths import PROBED, Fixed, Paths, PortCell, is_message
from .slowpath import Decision, EntrySpec, SlowPath, entry_kind
from .vrf import build_instances

# One unpack per packet on the hit path: outer label/VNI (if any) + inner IPv4 + ports.
_FROM_VIF = struct.Struct("!12xHBxHxxHBBHIIHH").unpack_from          # Ethernet + IPv4 + ports
_FROM_MPLSOUDP = struct.Struct("!IBxHxxHBBHIIHH").unpack_from         # label + IPv4 + ports
_FROM_MPLSOGRE = struct.Struct("!IIBxHxxHBBHIIHH").unpack_from        # GRE + label + IPv4 + ports
_FROM_VXLAN = struct.Struct("!II12xHBxHxxHBBHIIHH").unpack_from       # VXLAN + Ethernet + IPv4 + ports
# An ICMP echo request's / reply's first 16 bits (type, code 0), where TCP and UDP have the source port.
_ECHO_WORDS = frozenset((ICMP_ECHO_REQUEST << 8, ICMP_ECHO_REPLY << 8))
_TTL_PROTO_CSUM = struct.Struct("!BBH").pack
_JOIN = b"".join
_TCP_UNUSUAL = TCP_FIN | TCP_RST | TCP_PEER_FIN     # a segment tcpstate.segment must see (one global)
_STRUCT_ERROR = struct.error

_ETH_IP = b"\x08\x00"
_GRE_MPLS_WORD = 0x8847
class Pipeline:
    def __init__(self, config: VrouterConfig, paths: Paths | None = None) -> None:
        """``paths``: the path slots tunnel entries take their outer source port from (path repair,
        core/paths.py); None: every flow keeps its own entropy port and path messages are ignored."""
        self.paths = paths
        self._fixed: dict[int, Fixed] = {}      # entropy port -> its cell (no repair), shared by its flows
        self.table = FlowTable(config.flow.capacity)
        self._flows = self.table.entries
        self._admission = Admission(self.table, config.flow)
        self.nat = Nat(self.table, self._lookup, self._drop)    # floating IPs, source NAT (core/nat.py)
        self._queue = self._admission.queue
        self._frags = Fragments()
        self._drops = _drops.new_counters()
        self._drop_actions = {r: Drop(r) for r in _drops.REASONS}
        self.hits = 0
        self._count = dict.fromkeys(("misses", "punts", "held", "installs", "entries_installed",
                                     "reverse_not_installed", "late_decisions", "aged", "unreplied_aged",
                                     "tcp_teardowns", "tcp_rst_out_of_window", "arp_replies",
                                     "icmp_replies", "path_messages", "path_messages_ignored", "fabric_arp_replies"), 0)
        self._evaluator = SlowPath(config)
        self.config = config
        self.mirror = Mirror()                  # mirror sessions: marks at install, copies on hits
        self.flood: flood.Flood | None = None   # flooding (core/flood.py), made by apply_config
        self.apply_config(config)

    # ---------------------------------------------------------------- configuration
    def apply_config(self, config: VrouterConfig) -> None:
        """Install a new configuration; every decided flow entry is re-evaluated against it."""
        self.config = config
        self._settings = config.flow
        self.table.capacity = config.flow.capacity
        self.table.records = flowrecords.configured(self.table.records, config.flow.records)
        self._vrfs = build_instances(config)
        vrf_of = {n.name: n.id for n in config.networks}
        self._vifs = {v.name: VifState(v, vrf_of[v.network]) for v in config.vifs}
        self._labels = {n.id: n.id for n in config.networks}
        self._peers = frozenset(config.peers)
        self._underlay = config.underlay_ip
        self._admission.configure(config)
        self.flood = flood.configured(self.flood, config, self._vifs, self._drop)
        self._prefixes: dict[tuple[str, int, str | None], bytes] = {}
        self._evaluator.apply_config(config)
        self.nat.configure(config, {n: v.eth for n, v in self._vifs.items()})    # NAT pairs kept or removed
        self.mirror.configure(config, self._vifs)   # before the re-evaluation below re-marks every entry
        for e in list(self._flows.values()):
            if self._flows.get(e.key) is not e:
                continue
            vrf = self._vrfs.get(e.key[0])
            if vrf is None:
                self._drops["flow_torn_down"] += len(e.held)
                self.table.remove_pair(e, "flush")
            elif e.kind != HOLD and e.nat is None:
                self._set_action(e, self._evaluator.reevaluate(vrf, e))
        ecmp.repin(self._flows.values())

    # ---------------------------------------------------------------- hit paths
    def from_vif(self, vif_name: str, frame: bytes, now: float, at: int = 0) -> list[Action]:
        """An Ethernet frame read from the TAP of VM interface ``vif_name``, starting at ``at`` in
        ``frame``: the shell's TAP read keeps its virtio_net_hdr in front, the hit path reads the
        frame in place and only the slow path copies it out (a 64 KB copy per super-frame less)."""
        vif = self._vifs.get(vif_name)
        if vif is None:
            return self._drop("invalid_vif")
        try:
            et, vihl, tlen, fw, ttl, proto, csum, src, dst, sp, dp = _FROM_VIF(frame, at)
        except _STRUCT_ERROR:
            return self._vif_slow(vif, frame[at:], now)
        if et == 0x0800 and vihl == 0x45 and not fw & 0x3FFF and (src == vif.ip or src in vif.services):
            off = at + 14
            if proto == 6 or proto == 17:
                e = self._flows.get((vif.vrf, proto, src, dst, sp, dp))
                if e is not None and e.kind and (40 if proto == 6 else 28) <= tlen <= len(frame) - off and \
                        (e.pin is None or e.pin == vif_name):
                    return self._hit(e, frame, off, tlen, ttl, proto, csum, False, now, off + 20 if proto == 6 else 0)
            elif proto == 1 and sp in _ECHO_WORDS and 28 <= tlen <= len(frame) - off:
                ident = frame[off + 24] << 8 | frame[off + 25]      # an echo is keyed by its id as both ports
                e = self._flows.get((vif.vrf, 1, src, dst, ident, ident))
                if e is not None and e.kind and (e.pin is None or e.pin == vif_name):
                    return self._hit(e, frame, off, tlen, ttl, proto, csum, False, now, 0)
        return self._vif_slow(vif, frame[at:] if at else frame, now)

    def from_fabric(self, outer_src: str, encap: str, payload: bytes, now: float,
                    tail: bytes | None = None) -> list[Action]:
        """A tunnel payload received from underlay address ``outer_src`` (see docs/vrouter-core-api.md);
        ``tail``: the data of a merged GRO delivery whose head ``payload`` is (module docstring)."""
        if outer_src not in self._peers:
            return self._drop("invalid_source")
        try:
            if encap == "mplsoudp":
                word, vihl, tlen, fw, ttl, proto, csum, src, dst, sp, dp = _FROM_MPLSOUDP(payload)
                off = 4
                ok = word & 0x100
                vrf = self._labels.get(word >> 12)
            elif encap == "vxlan":
                flags, word, et, vihl, tlen, fw, ttl, proto, csum, src, dst, sp, dp = _FROM_VXLAN(payload)
                off = 22
                ok = flags & 0x08000000 and et == 0x0800
                vrf = self._labels.get(word >> 8)
            elif encap == "mplsogre":
                g, word, vihl, tlen, fw, ttl, proto, csum, src, dst, sp, dp = _FROM_MPLSOGRE(payload)
                off = 8
                ok = g == _GRE_MPLS_WORD and word & 0x100
                vrf = self._labels.get(word >> 12)
            else:
                return self._drop("unknown_encap")
        except _STRUCT_ERROR:
            return self._fabric_slow(outer_src, encap, payload, now) if tail is None else \
                self.from_fabric(outer_src, encap, payload + tail, now)
        if ok and vrf is not None and vihl == 0x45 and not fw & 0x3FFF:
            if proto == 6 or proto == 17:
                e = self._flows.get((vrf, proto, src, dst, sp, dp))
                if e is not None and e.kind and tail is None and (e.pin is None or e.pin == outer_src) and \
                        (40 if proto == 6 else 28) <= tlen <= len(payload) - off:
                    return self._hit(e, payload, off, tlen, ttl, proto, csum, True, now, off + 20 if proto == 6 else 0)
                if e is not None and tail is not None and (e.kind == TO_VIF or e.kind == DROP) and proto == 6 \
                        and len(payload) >= off + 40 and tlen == len(payload) - off + len(tail) and \
                        (e.pin is None or e.pin == outer_src) and e.mirror is None:
                    # On the head: every field _hit reads lies in it, tlen is the whole packet's, and the
                    # ToVif frame it builds (Ethernet + payload[off:]) is completed by the tail.
                    (a,) = actions = self._hit(e, payload, off, tlen, ttl, 6, csum, True, now, off + 20)
                    return [ToVifParts(a.vif, a.frame, tail)] if type(a) is ToVif else actions
            elif proto == 1 and tail is None and sp in _ECHO_WORDS and 28 <= tlen <= len(payload) - off:
                ident = payload[off + 24] << 8 | payload[off + 25]
                e = self._flows.get((vrf, 1, src, dst, ident, ident))
                if e is not None and e.kind and (e.pin is None or e.pin == outer_src):
                    return self._hit(e, payload, off, tlen, ttl, proto, csum, True, now, 0)
        return self._fabric_slow(outer_src, encap, payload, now) if tail is None else \
            self.from_fabric(outer_src, encap, payload + tail, now)

    def _hit(self, e: FlowEntry, buf: bytes, off: int, tlen: int, ttl: int, proto: int, csum: int, fabric: bool,
             now: float, l4: int) -> list[Action]:
        """``l4``: where the TCP header starts (0: not TCP, or a fragment without the whole header)."""
        self.hits += 1
        n = e.packets
        e.packets = n + 1
        e.bytes += tlen
        e.last_used = now
        if not n:
            self._first_packet(e, buf, l4)
        kind = e.kind
        if kind == DROP:
            self._drops[e.reason] += 1
            return [e.drop]
        if l4:
            t = e.tcp | buf[l4 + 13]
            e.tcp = t
            if t & _TCP_UNUSUAL:
                tcpstate.segment(e, buf, off, l4, tlen, self._count)
            e.tw = buf[off:l4 + 16]         # for a later RST's window check: one small copy, no parse
        if kind == NAT:
            return self.nat.hit(e, buf, off, tlen, ttl)
        if not fabric or kind == TO_TUNNEL:
            if ttl <= 1:
                self._drops["ttl_expired"] += 1
                return [self._drop_actions["ttl_expired"]]
            c = csum + 0x100
            # One join: a single copy of the packet instead of three concatenations.
            out = _JOIN((e.prefix, buf[off:off + 8], _TTL_PROTO_CSUM(ttl - 1, proto, (c & 0xFFFF) + (c >> 16)),
                         buf[off + 12:off + tlen]))
        else:
            out = e.prefix + buf[off:off + tlen]
        if e.mirror is not None:            # copies of the original packet (core/mirror.py)
            self.mirror.copy(e, buf, off, tlen, fabric, out, now)
        if kind == TO_TUNNEL:
            return [ToTunnel(e.peer, e.encap, e.path.port, out)]
        return [ToVif(e.vif, out)]

    def _first_packet(self, e: FlowEntry, buf: bytes, l4: int) -> None:
        """An entry's first packet: its pair is replied once both directions have seen one; a
        SYN's window-scale option is read here (options are parsed on SYNs only)."""
        r = e.reverse
        if r is not None and r.packets:
            self.table.replied(e)
        if l4 and buf[l4 + 13] & TCP_SYN:
            e.wscale = tcpstate.window_scale(buf, l4)

    # ---------------------------------------------------------------- slow parsing
    def _vif_slow(self, vif: VifState, frame: bytes, now: float) -> list[Action]:
        if len(frame) < 14:
            return self._drop("malformed")
        if self.flood is not None and (out := self.flood.from_vif(vif, frame, now, self._vrfs)) is not None:
            return out
        et = frame[12] << 8 | frame[13]
        if et == ethernet.ETH_P_ARP:
            return self._arp(vif, frame)
        if et != ethernet.ETH_P_IP:
            return self._drop("not_ip")
        try:
            pkt = extract(frame, 14)
        except Malformed:
            return self._drop("malformed")
        if pkt[1] != vif.ip and pkt[1] not in vif.services:
            return self._drop("spoofed_source")
        vrf = self._vrfs[vif.vrf]
        nh = vrf.fib.lookup(pkt[2])
        if nh is not None and nh["type"] == "receive":
            return self._receive(vif, frame, pkt)
        return self._lookup(vif.vrf, frame, 14, pkt, False, now, (HELD_VIF, vif.name, frame),
                            ("vif", vif.name))

    def _fabric_slow(self, outer_src: str, encap: str, payload: bytes, now: float) -> list[Action]:
        if is_message(encap, payload):      # path repair's probes and answers: before any routing instance
            if self.paths is None:
                self._count["path_messages_ignored"] += 1
            else:
                self._count["path_messages"] += 1
                self.paths.receive(outer_src, encap, payload, now)
            return []
        if self.flood is not None and (out := self.flood.from_fabric(outer_src, encap, payload, now,
                                                                      self._vrfs)) is not None:
            return out
        try:
            if encap == "vxlan":
                vni = vxlan.parse(payload, 0)
                vrf = self._labels.get(vni)
                if vrf is None:
                    return self._drop("unknown_label")
                et = ethernet.parse(payload, 8).ethertype
                if et == ethernet.ETH_P_ARP:    # flooded by a bare-metal host (core/fabric_arp.py)
                    return fabric_arp.answer(payload, vrf, outer_src, self._vifs.values(), self._count, self._drops)
                if et != ethernet.ETH_P_IP:
                    return self._drop("not_ip")
                off = 8 + ethernet.ETH_HLEN
            else:
                off = 0
                if encap == "mplsogre":
                    g = gre.parse(payload, 0)
                    if g.proto != ethernet.ETH_P_MPLS:
                        return self._drop("unknown_encap")
                    off = g.header_length
                stack, off = mpls.parse_stack(payload, off)
                # The top label selects the routing instance; deeper labels carry nothing for us.
                vrf = self._labels.get(stack[0].label)
                if vrf is None:
                    return self._drop("unknown_label")
            pkt = extract(payload, off)
        except Malformed:
            return self._drop("malformed")
        nh = self._vrfs[vrf].fib.lookup(pkt[2])
        if nh is not None and nh["type"] == "receive":
            return self._drop("receive_unsupported")
        return self._lookup(vrf, payload, off, pkt, True, now, (HELD_FABRIC, outer_src, encap, payload),
                            ("fabric", outer_src))

    def _lookup(self, vrf: int, buf: bytes, off: int, pkt: Extracted, fabric: bool, now: float, held: Held,
                ingress: tuple[str, str]) -> list[Action]:
        proto, src, dst, sport, dport, ihl, tlen, ttl, csum, fw, ident, flags, _ = pkt
        if fw & (FLAG_MF | 0x1FFF):
            ports = self._frags.ports(vrf, pkt, now, self._settings.fragment_capacity)
            if isinstance(ports, str):
                return self._drop(ports)
            sport, dport = ports
        key = (vrf, proto, src, dst, sport, dport)
        e = self._flows.get(key)
        if e is not None and e.pin is not None and e.pin != ingress[1]:
            return self._drop("wrong_member")
        if e is not None and e.kind:
            whole = proto == 6 and not fw & (FLAG_MF | 0x1FFF)
            return self._hit(e, buf, off, tlen, ttl, proto, csum, fabric, now, off + ihl if whole else 0)
        if e is not None:
            if len(e.held) > self._settings.hold_queue:
                return self._drop("hold_queue_full")
            e.held.append(held)
            self._count["held"] += 1
            return []
        return self._admit(key, held, ingress, flags, tlen, now)

    def _admit(self, key: FlowKey, held: Held, ingress: tuple[str, str], flags: int, tlen: int,
               now: float) -> list[Action]:
        """A new flow: admission (limits, then room in the table), its HOLD entry, its queued punt."""
        self._count["misses"] += 1
        adm = self._admission
        owner = adm.owner_of(key, ingress)
        net = adm.networks[key[0]]
        need = 2 if self._settings.mode == "proactive" else 1     # a proactive pair is two entries
        reason = adm.refuse(owner, net, need)
        if reason is None and self.table.full() and not self.table.evict():
            reason = "flow_table_full"
        if reason is not None:
            self.table.refused(net, owner, reason, now)     # flow records: counted, no entry
            return self._drop(reason)
        e = FlowEntry(key, now)
        e.held.append(held)
        self.table.insert(e, owner, net, need)
        self._count["punts"] += 1
        self._queue.push(owner.name, (punt_request(key, ingress, owner.name, flags, tlen), e), now)
        return []

    # ---------------------------------------------------------------- the setup queue
    def take_punts(self, now: float, limit: int | None = None) -> list[PuntRequest]:
        """Punt requests for the agent, at most ``limit``: one per owner in turn, paced by the token
        bucket (``flow.setup_rate``). Requests queued longer than ``hold_timeout`` are dropped with
        their held entries (``setup_queue_stale``); requests whose entry went meanwhile are skipped."""
        queue = self._queue
        if not len(queue):
            return []                       # the common case after most batches
        ready, stale = queue.take(now, limit, self._waiting)
        for item in stale:
            if self._waiting(item):
                e = item[1]
                self._drops["setup_queue_stale"] += len(e.held)
                self.table.remove_pair(e, "setup_queue_stale")
        return [request for request, _ in ready]

    def _waiting(self, item: Waiting) -> bool:
        e = item[1]
        return not e.kind and self._flows.get(e.key) is e

    def punts_waiting(self) -> int:
        return len(self._queue)

    def punt_wait(self, now: float) -> float | None:
        """Seconds until ``take_punts`` has a request to give (0: now), None while none waits."""
        return self._queue.wait(now)

    # ---------------------------------------------------------------- local answers (core/local.py)
    def _arp(self, vif: VifState, frame: bytes) -> list[Action]:
        reply = local.arp_reply(frame, vif.ip, self._vrfs[vif.vrf].fib)
        if isinstance(reply, str):
            return self._drop(reply)
        self._count["arp_replies"] += 1
        return [ToVif(vif.name, reply)]

    def _receive(self, vif: VifState, frame: bytes, pkt: Extracted) -> list[Action]:
        reply = local.echo_reply(frame, pkt, vif.eth)
        if isinstance(reply, str):
            return self._drop(reply)
        self._count["icmp_replies"] += 1
        return [ToVif(vif.name, reply)]

    # ---------------------------------------------------------------- decisions from the agent
    def install(self, decision: Decision, now: float) -> list[Action]:
        """Apply a ``SlowPath.decide`` result: reverse entry first, then the forward entry pointing
        at it. Returns the actions for the packets that were held while the flow waited. A decision
        whose held entry is gone (timed out, stale, torn down) or decided already is ignored
        (``late_decisions``): its packets are gone, and the flow's next packet asks again."""
        vrf = decision["vrf"]
        if vrf not in self._vrfs:
            return []
        fwd = decision["forward"]
        f = self._flows.get((vrf, *fwd["key"]))  # type: ignore[arg-type]  # spec keys have 5 ints
        if f is None or f.kind:
            self._count["late_decisions"] += 1
            return []
        self._count["installs"] += 1
        decision = self.nat.bind(decision)     # type: ignore[arg-type,assignment]  # a SNAT port
        fwd = decision["forward"]
        released: list[Held] = []
        rev_spec = decision.get("reverse")
        r = self._write(decision.get("rvrf", vrf), rev_spec, now, released, f) if rev_spec else None
        if rev_spec and r is None:
            self._count["reverse_not_installed"] += 1
        self._decide(f, fwd, "forward", now, released)
        if r is None:
            r = self._flows.get((decision.get("rvrf", vrf), *reverse(f.key)[1:]))
            if r is not None and not r.kind:
                r = None
        if r is not None:
            old = r.reverse
            if old is not None and old is not f:
                old.reverse = None
                self.table.classify(old)
            f.reverse, r.reverse = r, f
        self.table.classify(f)
        actions: list[Action] = []
        for item in released:
            if item[0] == HELD_VIF:
                actions.extend(self.from_vif(item[1], item[2], now))
            elif item[0] == HELD_FABRIC:
                actions.extend(self.from_fabric(item[1], item[2], item[3], now))
            else:
                actions.extend(self.nat.from_external(item[2], now))
        return actions

    def _write(self, vrf: int, spec: EntrySpec, now: float, released: list[Held], f: FlowEntry) -> FlowEntry | None:
        """The reverse entry of forward entry ``f``, charged to f's owner (taking f's reservation)."""
        key: FlowKey = (spec.get("vrf", vrf), *spec["key"])  # type: ignore[assignment]  # 5 ints
        e = self._flows.get(key)
        if e is not None:
            self._decide(e, spec, "reverse", now, released)
            return e
        if self.table.full() and not self.table.evict():
            return None
        e = FlowEntry(key, now)
        e.role = "reverse"
        self._set_action(e, spec)
        reserved = f.charge > 1
        if reserved:
            f.charge -= 1
        self.table.insert(e, f.owner, f.net, 0 if reserved else 1)
        if reserved:
            e.charge = 1
        self._count["entries_installed"] += 1
        return e

    def _decide(self, e: FlowEntry, spec: EntrySpec, role: str, now: float, released: list[Held]) -> None:
        """Write the decision into an existing entry (a held one releases its packets)."""
        if e.kind == HOLD:
            self.table.decided(e)
            e.last_used = now
            released.extend(e.held)
            e.held = []
        if e.charge > 1:                    # a reservation for a reverse entry no longer needed
            self.table.uncharge(e, e.charge - 1)
        e.role = role
        self._set_action(e, spec)
        self._count["entries_installed"] += 1

    def _set_action(self, e: FlowEntry, spec: EntrySpec) -> None:
        if e.path is not None:              # re-evaluated: its path (if still a tunnel) is taken again below
            e.path.flows -= 1
            e.path = None  # type: ignore[assignment]  # set again for a tunnel entry
        if self.nat.set_entry(e, spec):     # type: ignore[arg-type]  # a NAT entry (core/nat.py)
            return
        e.nexthop, e.rule, e.member, e.pin = spec.get("nexthop"), spec.get("rule"), spec.get("member"), spec.get("pin")
        kind, reason = entry_kind(spec, self._vifs)
        nh: Nexthop = spec["nexthop"]  # type: ignore[assignment]  # the forwarding kinds have their next hop
        if kind == TO_VIF:
            e.kind, e.vif, e.prefix = TO_VIF, nh["vif"], self._vifs[nh["vif"]].eth
        elif kind == TO_TUNNEL:
            e.kind, e.peer, e.encap = TO_TUNNEL, nh["peer"], nh["encap"]
            e.path = self._port_cell(nh["peer"], nh["encap"], e.key, nh.get("probe", True))
            pkey = (nh["encap"], nh["label"], nh.get("mac"))
            prefix = self._prefixes.get(pkey)
            if prefix is None:              # one per tunnel next hop of the config: built once
                prefix = self._prefixes[pkey] = encap_prefix(
                    nh["encap"], nh["label"], ethernet.mac_to_bytes(nh["mac"]) if nh.get("mac") else VROUTER_MAC)
            e.prefix = prefix
        if reason is not None:
            e.kind, e.reason, e.drop = DROP, reason, self._drop_actions[reason]
        else:
            e.reason = e.drop = None  # type: ignore[assignment]  # not a DROP entry (any more)
        e.mirror = self.mirror.mark(e)

    def _port_cell(self, peer: str, encap: str, key: FlowKey, probe: bool = True) -> PortCell:
        """Where a tunnel entry's outer source port comes from: a path slot (chosen by the flow's hash,
        repaired when its path dies), or, without path repair, a UDP port or a probed peer (a bare-metal
        host answers no probes), the flow's own entropy port."""
        if self.paths is not None and encap in PROBED and probe:
            return self.paths.acquire(peer, encap, key_hash(*key))
        port = entropy_port(key)
        cell = self._fixed.get(port)
        if cell is None:
            cell = self._fixed[port] = Fixed(port)
        cell.flows += 1
        return cell

    # ---------------------------------------------------------------- housekeeping and introspection
    def expire(self, now: float) -> int:
        """Idle ageing, lost decisions, unfinished TCP closes, stale fragments; returns entries removed."""
        s = self._settings
        removed = 0
        table = self.table
        for e in table.expired(now, s.idle_timeout, s.hold_timeout, s.close_timeout, s.closed_linger,
                               s.unreplied_timeout):
            self._drops["hold_timeout"] += len(e.held)
            unreplied = table.listed(e)
            n = table.remove_pair(e, "aged")
            removed += n
            if unreplied:
                self._count["unreplied_aged"] += n
        self._count["aged"] += removed
        self._frags.expire(now, s.fragment_timeout)
        return removed

    def from_fabric_frame(self, frame: bytes, now: float) -> list[Action]:
        """A whole outer Ethernet/IPv4/UDP|GRE frame (offline replay)."""
        try:
            o = outer.parse_fabric_frame(frame)
        except Malformed:
            return self._drop("malformed")
        if o is None:
            return self._drop("unknown_encap")
        if int_to_ip(o.dst) != self._underlay:
            return self._drop("wrong_destination")
        return self.from_fabric(int_to_ip(o.src), o.encap, bytes(frame[o.payload_offset:o.end]), now)

    def flows(self, now: float | None = None) -> list[dict[str, Any]]:
        entries = list(self._flows.values())
        if now is None:
            now = max((e.last_used for e in entries), default=0.0)
        index = {id(e): i for i, e in enumerate(entries)}
        out = []
        for i, e in enumerate(entries):
            d = e.describe(i, now)
            d["reverse_index"] = index.get(id(e.reverse))
            out.append(d)
        return out

    def drop_stats(self) -> dict[str, int]:
        return dict(self._drops)

    def stats(self) -> dict[str, Any]:
        return {"server": self.config.server, "mode": self._settings.mode, "capacity": self.table.capacity,
                "entries": len(self._flows), "held_flows": self.table.held, "fragments": len(self._frags),
                "hits": self.hits, **self._count, "evictions": self.table.evictions,
                "punts_queued": len(self._queue), "drops": sum(self._drops.values())}

    def pressure(self, now: float) -> dict[str, Any]:
        """The flow table under pressure (``flow -r``): sizes, limits, per-VM and per-network counts
        (docs/vrouter-core-api.md); plain values."""
        c = self._count
        return {**self._admission.pressure(now), "unreplied_aged": c["unreplied_aged"],
                "installs": c["installs"], "entries_installed": c["entries_installed"]}

    def _drop(self, reason: str) -> list[Action]:
        self._drops[reason] += 1
        return [self._drop_actions[reason]]
