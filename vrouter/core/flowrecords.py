"""Flow records: one record per flow pair when it ends, for analysis after (or during) a run.

Why: the flow table forgets a pair the moment it goes, and the counters (``aged``, ``evictions``,
dropstats) say how many went but not which, how big, or why. A record keeps what the pair knew:
network, 5-tuple (the forward direction is the entry first seen), both directions' packets and
bytes, first and last packet (the injected clock; the shell converts to wall time), the decision
(allow / deny / drop / nat / held) with the policy rule or drop reason of each direction, the VM
interface that owns it, and why it ended (``END_REASONS``).

Cost: nothing on the hit path. ``FlowTable.remove_pair`` calls ``FlowRecords.ended`` (one attribute
test when records are off) before it removes the pair; a record is one small dict appended to a
bounded deque (``KEPT``): when the shell does not drain it in time the oldest is dropped and
counted (``lost``). Admission refusals (a new flow refused by the VM's or the network's limit, the
held limits or a full table) never get an entry: they are counted per (network, VM interface,
reason) and handed out as one aggregate record per key at each ``drain`` (the shell's tick), so a
flood of refused flows costs a dict increment each, not a record each.

Packets and bytes are the pipeline's: a TSO super-frame or a GRO merge counts as one packet and
its IPv4 total length as its bytes (docs/vrouter-core.md, "Flow records").
"""
from __future__ import annotations

from collections import deque
from typing import Any

from .codec.ipv4 import int_to_ip
from .flowtable import DROP, HOLD, NAT, PROTO_NAMES, TCP_CLOSED, TCP_CLOSING, FlowEntry, FlowTable, Quota

KEPT = 65536        # records waiting for the shell; a tick's worth even at a high flow churn

# Why a pair ended. "aged" given by the ageing pass is refined by the pair's state (``_aged``).
END_REASONS = {
    "idle_timeout": "both directions idle longer than flow.idle_timeout",
    "unreplied_timeout": "a direction never saw a packet and the pair was idle flow.unreplied_timeout",
    "tcp_closed": "TCP teardown (both FINs acknowledged, or an accepted RST), after flow.closed_linger",
    "tcp_close_timeout": "TCP close started (FIN both ways) but never finished within flow.close_timeout",
    "hold_timeout": "the decision never came for the held entry (flow.hold_timeout)",
    "setup_queue_stale": "the punt waited in the setup queue longer than flow.hold_timeout",
    "evicted": "oldest unreplied pair evicted to make room in a full table",
    "flush": "removed by a configuration change (network or NAT binding gone) or a flow-table reset",
    "shutdown": "still in the table when the vrouter stopped",
    "removed": "removed for another reason",
}
REFUSED = "refused"     # the kind of an aggregate record of admission refusals
DECISIONS = ("allow", "deny", "drop", "nat", "held", REFUSED)


def decision(e: FlowEntry) -> str:
    """What the pair's entry does: allow (forward), deny (policy), drop (another reason), nat, held."""
    if e.kind == HOLD:
        return "held"
    if e.kind == DROP:
        return "deny" if e.reason == "policy_deny" else "drop"
    return "nat" if e.kind == NAT else "allow"


def _aged(f: FlowEntry, r: FlowEntry | None, table: FlowTable) -> str:
    """Which timeout the ageing pass applied (the order of FlowTable.expired's tests)."""
    if f.kind == HOLD:
        return "hold_timeout"
    tcp = f.tcp | (r.tcp if r is not None else 0)
    if tcp & TCP_CLOSED:
        return "tcp_closed"
    if tcp & TCP_CLOSING:
        return "tcp_close_timeout"
    return "unreplied_timeout" if table.listed(f) else "idle_timeout"


class FlowRecords:
    """The bounded queue of ended pairs and the refusal aggregates of one flow table."""

    def __init__(self, kept: int = KEPT) -> None:
        self.queue: deque[dict[str, Any]] = deque(maxlen=kept)
        self.records = self.lost = self.refusals = 0
        self._refused: dict[tuple[str, str, str], list[float]] = {}    # key -> [count, first, last]

    def ended(self, table: FlowTable, entry: FlowEntry, why: str) -> None:
        """A pair is about to be removed: its record (entries not in the table any more are skipped)."""
        entries = table.entries
        pair = [e for e in (entry, entry.reverse) if e is not None and entries.get(e.key) is e]
        if not pair:
            return
        # Forward: the entry first seen (the reactive mode's two "forward" entries: the older one).
        pair.sort(key=lambda e: (e.created, e.role != "forward"))
        f = pair[0]
        r = pair[1] if len(pair) > 1 else None
        if why == "aged":
            why = _aged(f, r, table)
        vrf, proto, src, dst, sport, dport = f.key
        q = self.queue
        if len(q) == q.maxlen:
            self.lost += 1
        self.records += 1
        q.append({
            "kind": "flow", "network": f.net.name, "vrf": vrf, "proto": PROTO_NAMES.get(proto, str(proto)),
            "src": int_to_ip(src), "dst": int_to_ip(dst), "sport": sport, "dport": dport, "vif": f.owner.name,
            "packets": f.packets, "bytes": f.bytes, "held_packets": len(f.held),
            "rpackets": r.packets if r is not None else 0, "rbytes": r.bytes if r is not None else 0,
            "start": min(e.created for e in pair), "end": max(e.last_used for e in pair),
            "decision": decision(f), "rule": f.rule, "reason": f.reason,
            "rdecision": decision(r) if r is not None else None, "rrule": r.rule if r is not None else None,
            "rreason": r.reason if r is not None else None,
            "tcp_state": f.tcp_state(), "end_reason": why,
        })

    def refused(self, net: Quota, owner: Quota, reason: str, now: float) -> None:
        """A new flow refused at admission: counted under (network, VM interface, reason)."""
        self.refusals += 1
        key = (net.name, owner.name, reason)
        agg = self._refused.get(key)
        if agg is None:
            self._refused[key] = [1, now, now]
        else:
            agg[0] += 1
            agg[2] = now

    def drain(self) -> list[dict[str, Any]]:
        """Everything waiting: the ended pairs, oldest first, then one aggregate per refusal key."""
        q = self.queue
        out = list(q)
        q.clear()
        for (network, vif, reason), (count, first, last) in self._refused.items():
            out.append({"kind": REFUSED, "network": network, "vif": vif, "decision": REFUSED, "reason": reason,
                        "flows": int(count), "start": first, "end": last, "end_reason": REFUSED})
        self._refused.clear()
        return out

    def end_all(self, table: FlowTable, why: str) -> None:
        """A record for every pair still in the table (the vrouter stops, or its table is reset)."""
        seen: set[int] = set()
        for e in list(table.entries.values()):
            if id(e) not in seen:
                seen.add(id(e))
                if e.reverse is not None:
                    seen.add(id(e.reverse))
                self.ended(table, e, why)

    def stats(self) -> dict[str, Any]:
        return {"enabled": True, "records": self.records, "lost": self.lost, "queued": len(self.queue),
                "kept": self.queue.maxlen, "refusals": self.refusals, "refusal_keys": len(self._refused)}


def configured(current: FlowRecords | None, on: bool) -> FlowRecords | None:
    """The table's recorder for a (new) configuration: kept if records stay on, None when off."""
    if not on:
        return None
    return current if current is not None else FlowRecords()


def off_stats() -> dict[str, Any]:
    return {"enabled": False, "records": 0, "lost": 0, "queued": 0, "kept": KEPT, "refusals": 0,
            "refusal_keys": 0}
