"""IP fragments' ports: the first fragment carries them, the later ones are keyed by what it left.

(vrf, proto, src, dst, IP id) -> [sport, dport, last seen], in a table bounded by
``flow.fragment_capacity``; the pipeline (vrouter/core/pipeline.py) asks it for every fragment and
ages it. A module of its own so the per-packet pipeline stays within its size.
"""
from typing import Any

from .codec.ipv4 import FLAG_MF
from .flowkey import Extracted

Fragments = dict[tuple[int, int, int, int, int], list[Any]]


def fragment_ports(frags: Fragments, capacity: int, vrf: int, pkt: Extracted,
                   now: float) -> tuple[int, int] | str:
    """The ports of fragment ``pkt`` (the first one's are remembered), or the drop reason."""
    proto, src, dst, sport, dport, ihl, tlen, ttl, csum, fw, ident, flags, _ = pkt
    fkey = (vrf, proto, src, dst, ident)
    if not fw & 0x1FFF:                       # first fragment: remember its ports
        if fkey not in frags and len(frags) >= capacity:
            return "fragment_table_full"
        frags[fkey] = [sport, dport, now]
        return sport, dport
    known = frags.get(fkey)
    if known is None:
        return "fragment_no_head"
    if fw & FLAG_MF:
        known[2] = now
    else:                                     # last fragment: the datagram is complete
        del frags[fkey]
    return known[0], known[1]
