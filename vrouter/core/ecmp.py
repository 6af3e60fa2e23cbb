"""Load balancing over a service address: a composite next hop whose members are the VMs that share
the address (Tungsten Fabric's ECMP composite next hop, as with active-active allowed address pairs).

Why the choice is made here, once per flow, and kept: a TCP connection must stay on the member that
answered its SYN. The slow path picks a member for a new flow (``choose``), the forward entry
records it and the proactive reverse entry is pinned to it (``pin``): the reverse entry matches the
member's reply (source = the service address) only when it comes from that member's VIF or tunnel
peer, so the reply returns through the entry the forward direction chose.

The hash is rendezvous (highest random weight) hashing: each member's weight is BLAKE2b of the
flow's 5-tuple and the member's name, and the heaviest member wins. Removing a member moves only
the flows it had (every other flow's winner is still there and still the heaviest), and adding one
takes only the flows it now wins; and the winner among a subset that contains the overall winner
is that winner. The last property lets the member's own vrouter agree with the sender without any
signalling: a flow that arrives from the fabric for a service picks among the members local to
the receiving vrouter, which is the member the sending vrouter chose (both have the same members).

Pure (a core module): plain next-hop dicts (the vrouter config's) in, a member's next hop out.
"""
from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from .fib import Nexthop

if TYPE_CHECKING:
    from .flowtable import FlowEntry

COMPOSITE = "composite"
_FIVE_TUPLE = struct.Struct("!BIIHH")


def weight(proto: int, src: int, dst: int, sport: int, dport: int, member: str) -> int:
    """A member's 64-bit rendezvous weight for one flow (same on every vrouter, every run)."""
    data = _FIVE_TUPLE.pack(proto, src, dst, sport, dport) + member.encode()
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


def pick(members: Sequence[Nexthop], proto: int, src: int, dst: int, sport: int, dport: int) -> Nexthop:
    """The member whose weight for this 5-tuple is highest (ties, never seen in practice, by name)."""
    return max(members, key=lambda m: (weight(proto, src, dst, sport, dport, m["member"]), m["member"]))


def origin(member: Nexthop) -> str:
    """Where packets from a member come from: its VIF's name, or the tunnel peer it sits behind."""
    return str(member["vif"] if member["type"] == "vif" else member["peer"])


def choose(nh: Nexthop, key: tuple[int, int, int, int, int], ingress: tuple[str, str] | None = None,
           reply: bool = False, keep: str | None = None) -> Nexthop:
    """The member of composite ``nh`` for a flow with 5-tuple ``key`` entering at ``ingress``
    ("vif" | "fabric", its VIF or peer; None when re-evaluated).

    ``keep``: the member the flow had, kept while it is still a member (re-evaluation after a config
    change: only a removed member's flows move). ``reply``: ``key`` is the reverse of a flow that a
    member started from the service address: that member, the one it came from, is the flow's.
    A flow from the fabric picks among this vrouter's own members (the sender chose one of them:
    module docstring); with none left it goes to the overall winner."""
    members: list[Nexthop] = nh["members"]
    for m in members:
        if m["member"] == keep or reply and ingress is not None and origin(m) == ingress[1]:
            return m
    return pick(candidates(nh, ingress), *key)


def candidates(nh: Nexthop, ingress: tuple[str, str] | None) -> list[Nexthop]:
    """The members of composite ``nh`` a new flow entering at ``ingress`` is hashed over: all, or
    from the fabric this vrouter's own (``choose``; ``testbed trace`` shows their weights)."""
    members: list[Nexthop] = nh["members"]
    if ingress is not None and ingress[0] == "fabric":
        return [m for m in members if m["type"] == "vif"] or members
    return members


def pin(forward: Any, reverse: Any) -> None:
    """The two EntrySpecs (core/slowpath.py) of a decision: both entries of a flow that goes to
    (or comes from) a member record it; the entry of the
    direction FROM the member is pinned to the member's origin (the data path drops, as
    ``wrong_member``, a packet that matches it from elsewhere)."""
    if reverse is None:
        return
    for to_member, from_member in ((forward, reverse), (reverse, forward)):
        nh = to_member["nexthop"]
        if nh is not None and "member" in nh:
            to_member["member"] = from_member["member"] = nh["member"]
            from_member["pin"] = origin(nh)
            return


def repin(entries: Iterable[FlowEntry]) -> None:
    """After a config change re-evaluated every entry (``SlowPath.reevaluate``), pinned entries follow
    the member their partner goes to now (none: not pinned any more)."""
    for e in entries:
        if e.pin is not None:
            nh = e.reverse.nexthop if e.reverse is not None else None
            if nh is not None and "member" in nh:
                e.member, e.pin = nh["member"], origin(nh)
            else:
                e.member = e.pin = None


def member_counters(flows: Iterable[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """Per member, from a flow listing (``Pipeline.flows``): the flows going to it, and the packets
    and bytes to it and from it (its pinned entries)."""
    out: dict[str, dict[str, int]] = {}
    for f in flows:
        member = f.get("member")
        if member is None:
            continue
        c = out.setdefault(member, dict.fromkeys(("flows", "packets_to", "bytes_to", "packets_from",
                                                  "bytes_from"), 0))
        if f.get("pin") is None:
            c["flows"] += 1
            c["packets_to"] += f["packets"]
            c["bytes_to"] += f["bytes"]
        else:
            c["packets_from"] += f["packets"]
            c["bytes_from"] += f["bytes"]
    return out
