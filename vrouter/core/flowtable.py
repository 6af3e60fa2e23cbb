"""Flow table: entries keyed by (routing instance, proto, src, dst, sport, dport).

Behaviour, stated and tested:
- Capacity counts every entry (held, forward, reverse). A new flow that finds the table full first
  evicts the OLDEST unreplied pair (below), and only when there is none is it dropped and counted
  (``flow_table_full``). A pair whose two entries both saw packets is never evicted to make room,
  nor is a held entry; an entry and its partner always go in one step. If the proactive reverse
  entry does not fit, the forward entry is still installed and ``stats()['reverse_not_installed']``
  counts it (the reply will then miss like in reactive mode).
- Unreplied pairs: a decided pair whose entries have not BOTH seen a packet (a proactive reverse
  never used, one-packet UDP, an unanswered SYN, a reactive forward entry alone) is listed in
  insertion order, so the oldest is found in O(1); it leaves the list when the missing direction
  sees its first packet. Listed pairs age after ``unreplied_timeout`` of idleness.
- Owners: every entry is charged to an owner (a VM interface, or "fabric") and to its network, each
  a ``Quota`` with a limit; counts change on insert and remove only (no scans).
- Ageing: a pair goes when BOTH directions have been idle longer than ``idle_timeout`` (a one-way
  UDP stream keeps its reverse). Held entries whose decision never came go after ``hold_timeout``.
- TCP: RST, or BOTH FINs acknowledged (sequence numbers checked, so the two last ACKs of a
  simultaneous close both hit), marks both directions closed at once; a closed pair lingers for
  ``closed_linger`` (2 s) so that late ACKs and retransmitted FINs still take the fast path instead
  of opening a new flow through the slow path (as Tungsten Fabric evicts closed flows later, not at
  the packet), then goes at the next ageing pass. A SYN that hits a closed pair starts a new flow.
  A closing pair that never completes goes after ``close_timeout``.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Final, Literal, TypeAlias

from .actions import Drop
from .codec.ipv4 import int_to_ip
from .codec.l4 import TCP_ACK, TCP_FIN, TCP_SYN
from .fib import Nexthop
from .flowkey import FlowKey
from .paths import PortCell

# Entry kinds. HOLD is 0 so that ``if entry.kind`` tells a decided entry from a held one.
HOLD, TO_VIF, TO_TUNNEL, DROP, NAT = 0, 1, 2, 3, 4    # NAT: translated on its way (core/nat.py)
KIND_NAMES = {HOLD: "hold", TO_VIF: "forward", TO_TUNNEL: "forward", DROP: "drop", NAT: "nat"}

TCP_CLOSING = 0x100    # both directions sent a FIN
TCP_FIN_ACKED = 0x200  # this direction's FIN was acknowledged by the other side
TCP_PEER_FIN = 0x400   # the other direction sent a FIN: ACKs in this direction may complete the close
TCP_CLOSED = 0x800     # both FINs acknowledged, or RST: the pair lingers briefly, then goes
PROTO_NAMES = {1: "icmp", 6: "tcp", 17: "udp"}
WSCALE_UNKNOWN, WSCALE_NONE = -2, -1
FABRIC_OWNER = "fabric"   # owner of flows that neither come from nor go to a local VM interface

# A packet held while its flow waits for the decision, kept as the pipeline replays it at install:
# (HELD_VIF, VIF name, frame), (HELD_FABRIC, outer source address, encapsulation, payload) or
# (HELD_EXTERNAL, "", IPv4 packet from the external port).
HELD_VIF: Final = 0
HELD_FABRIC: Final = 1
HELD_EXTERNAL: Final = 2
Held: TypeAlias = tuple[Literal[0], str, bytes] | tuple[Literal[1], str, str, bytes] | tuple[Literal[2], str, bytes]
Headers: TypeAlias = bytes     # (FlowEntry has a ``bytes`` counter: inside it the name is taken)


class FlowEntry:
    """Everything the hit path needs is cached here when the decision is installed."""
    __slots__ = ("key", "kind", "reason", "drop", "vif", "peer", "encap", "path", "prefix", "reverse",
                 "packets", "bytes", "tcp", "fin_seq", "created", "last_used", "held", "role", "nexthop",
                 "rule", "owner", "net", "charge", "tw", "wscale", "nat", "member", "pin", "mirror")
    # The decision sets vif (TO_VIF), peer and encap (TO_TUNNEL), reason and drop (DROP); they are None
    # otherwise, but typed as set because the hit path reads each only for its kind. prefix: the bytes
    # that go before the inner IPv4 packet. path: where a tunnel entry's outer source port is read
    # (core/paths.py: its path slot, moved to a live port when its path dies, or its fixed entropy port).
    key: FlowKey
    kind: int
    reason: str
    drop: Drop
    vif: str
    peer: str
    encap: str
    path: PortCell
    prefix: bytes
    reverse: FlowEntry | None
    packets: int
    bytes: int
    tcp: int
    fin_seq: int
    created: float
    last_used: float
    held: list[Held]
    role: str
    nexthop: Nexthop | None
    rule: int | None
    # Accounting: the owner's and the network's quotas this entry is charged to, and how many
    # entries it counts for (a held proactive flow counts two: its reverse entry is reserved).
    owner: Quota
    net: Quota
    charge: int
    # TCP tracking, for the RFC 5961 check of a RST: this direction's last segment's headers, from
    # the IPv4 header to the TCP window (parsed only when a RST needs them); the window scale from
    # its SYN (WSCALE_UNKNOWN before a SYN was seen, WSCALE_NONE for a SYN without the option).
    tw: Headers | None
    wscale: int
    nat: Any        # a NAT entry's translation (core/nat.py Rewrite), else None
    # A service's flow (core/ecmp.py): the member VM it goes to or comes from; the entry of the
    # direction from the member is pinned to where the member's packets come from (VIF or peer).
    member: str | None
    pin: str | None
    mirror: Any     # the mirror sessions copying this entry's packets (core/mirror.py), else None

    def __init__(self, key: FlowKey, now: float) -> None:
        self.key = key
        self.kind = HOLD
        self.reason = self.drop = self.vif = self.peer = self.encap = self.reverse = None  # type: ignore[assignment]
        self.path = None  # type: ignore[assignment]
        self.nexthop = self.rule = self.member = self.pin = self.mirror = None
        self.prefix = b""
        self.packets = self.bytes = self.tcp = 0
        self.fin_seq = -1     # sequence number that acknowledges this direction's FIN
        self.created = self.last_used = now
        self.held = []
        self.role = "hold"    # "forward" | "reverse" once installed
        self.charge = 0
        self.tw = None
        self.wscale = WSCALE_UNKNOWN
        self.nat = None

    def tcp_state(self) -> str | None:
        if self.key[1] != 6:
            return None
        t = self.tcp
        if t & TCP_CLOSED:
            return "closed"
        if t & TCP_CLOSING:
            return "closing"
        if t & TCP_FIN:
            return "fin"
        if t & TCP_ACK:
            return "established"
        if t & TCP_SYN:
            return "syn"
        return "none"

    def describe(self, index: int, now: float) -> dict[str, Any]:
        vrf, proto, src, dst, sport, dport = self.key
        return {
            "index": index, "vrf": vrf, "proto": PROTO_NAMES.get(proto, str(proto)), "src": int_to_ip(src),
            "dst": int_to_ip(dst), "sport": sport, "dport": dport, "role": self.role,
            "action": KIND_NAMES[self.kind], "reason": self.reason, "nexthop": self.nexthop, "rule": self.rule,
            "has_reverse": self.reverse is not None, "packets": self.packets, "bytes": self.bytes,
            "tcp_state": self.tcp_state(), "idle": round(now - self.last_used, 6), "held": len(self.held),
            "entropy_sport": self.path.port if self.path is not None else None, "owner": self.owner.name,
            "nat": self.nat.describe() if self.nat is not None else None,
            "member": self.member, "pin": self.pin,
        }


class Quota:
    """What one owner (VM interface) or one network holds against its limit, with hysteresis: once
    refused it stays refused until it is back under ``resume`` (resume_fraction * limit)."""
    __slots__ = ("name", "entries", "held", "limit", "resume", "blocked", "refused")

    def __init__(self, name: str, limit: int, fraction: float) -> None:
        self.name = name
        self.entries = self.held = self.refused = 0
        self.blocked = False
        self.limit, self.resume = limit, limit * fraction

    def set_limit(self, limit: int, fraction: float) -> None:
        self.limit, self.resume = limit, limit * fraction
        self.release()

    def admit(self, need: int) -> bool:
        """Room for ``need`` more entries? A refusal is counted and blocks the quota."""
        if self.blocked and self.entries < self.resume:
            self.blocked = False
        if self.blocked or self.entries + need > self.limit:
            self.blocked = True
            self.refused += 1
            return False
        return True

    def release(self) -> None:
        if self.blocked and self.entries < self.resume:
            self.blocked = False

    def describe(self) -> dict[str, Any]:
        return {"entries": self.entries, "limit": self.limit, "held": self.held, "blocked": self.blocked,
                "refused": self.refused}


class FlowTable:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.entries: dict[FlowKey, FlowEntry] = {}
        # Unreplied pairs, oldest first, each under the key of one of its entries.
        self.unreplied: OrderedDict[FlowKey, FlowEntry] = OrderedDict()
        self.held = 0
        self.evictions = 0
        # Flow records: a core/flowrecords.py FlowRecords (which imports this module), None when off.
        self.records: Any = None

    def __len__(self) -> int:
        return len(self.entries)

    def full(self) -> bool:
        return len(self.entries) >= self.capacity

    def insert(self, e: FlowEntry, owner: Quota, net: Quota, charge: int = 1) -> None:
        """Add ``e`` charged ``charge`` entries to its owner and network (0: it takes a reservation
        its caller already moved off another entry)."""
        self.entries[e.key] = e
        e.owner, e.net, e.charge = owner, net, charge
        owner.entries += charge
        net.entries += charge
        if not e.kind:
            self.held += 1
            owner.held += 1

    def decided(self, e: FlowEntry) -> None:
        """A held entry is getting its decision."""
        self.held -= 1
        e.owner.held -= 1

    def uncharge(self, e: FlowEntry, n: int) -> None:
        e.charge -= n
        for q in (e.owner, e.net):
            q.entries -= n
            q.release()

    def remove_pair(self, entry: FlowEntry, why: str = "removed") -> int:
        """Remove an entry and its reverse; returns how many entries went. ``why``: the record's end
        reason (core/flowrecords.py END_REASONS; "aged" is refined there by the pair's state)."""
        if self.records is not None:
            self.records.ended(self, entry, why)
        entries = self.entries
        removed = 0
        for e in (entry, entry.reverse):
            if e is not None and entries.get(e.key) is e:
                del entries[e.key]
                self.unreplied.pop(e.key, None)
                if e.path is not None:      # its path slot counts one flow less
                    e.path.flows -= 1
                    e.path = None  # type: ignore[assignment]
                if not e.kind:
                    self.decided(e)
                if e.nat is not None:       # its SNAT port goes back
                    e.nat.release()
                self.uncharge(e, e.charge)
                removed += 1
        if entry.reverse is not None:
            entry.reverse.reverse = None
        entry.reverse = None
        return removed

    def refused(self, net: Quota, owner: Quota, reason: str, now: float) -> None:
        """A new flow refused at admission (no entry): the records count it per network, owner, reason."""
        if self.records is not None:
            self.records.refused(net, owner, reason, now)

    # ---- unreplied pairs
    def listed(self, e: FlowEntry) -> bool:
        un = self.unreplied
        return e.key in un or (e.reverse is not None and e.reverse.key in un)

    def classify(self, e: FlowEntry) -> None:
        """(Re)list a decided entry's pair unless both of its entries have seen a packet."""
        r = e.reverse
        un = self.unreplied
        if r is not None and r.packets and e.packets:
            self.replied(e)
        elif not (e.key in un or (r is not None and r.key in un)):
            un[e.key] = e

    def replied(self, e: FlowEntry) -> None:
        un = self.unreplied
        un.pop(e.key, None)
        if e.reverse is not None:
            un.pop(e.reverse.key, None)

    def evict(self) -> int:
        """Remove the oldest unreplied pair to make room; returns the entries removed (0: none)."""
        un = self.unreplied
        while un:
            key, e = un.popitem(last=False)
            if self.entries.get(key) is e:
                removed = self.remove_pair(e, "evicted")
                self.evictions += removed
                return removed
        return 0

    def expired(self, now: float, idle: float, hold: float, close: float, linger: float = 0.0,
                unreplied: float | None = None) -> list[FlowEntry]:
        """Entries due for removal (held ones and pairs are returned whole)."""
        out: list[FlowEntry]
        seen: set[int]
        out, seen = [], set()
        un = self.unreplied
        quiet = idle if unreplied is None else min(idle, unreplied)
        for e in self.entries.values():
            if id(e) in seen:
                continue
            if e.kind == HOLD:
                due = now - e.created > hold
            elif e.tcp & TCP_CLOSED:
                due = now - e.last_used > linger
            elif e.tcp & TCP_CLOSING:
                due = now - e.last_used > close
            else:
                r = e.reverse
                last = e.last_used if r is None or r.last_used < e.last_used else r.last_used
                due = now - last > (quiet if e.key in un or (r is not None and r.key in un) else idle)
            if due:
                out.append(e)
                seen.add(id(e))
                if e.reverse is not None:
                    seen.add(id(e.reverse))
        return out
