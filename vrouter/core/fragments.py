"""IP fragments of flows: the first fragment carries the ports, later ones only its IP id.

Why a module: the pipeline keys every packet by its ports, so it remembers (vrf, proto, src, dst,
IP id) -> ports from a datagram's first fragment for the later ones, in a bounded table
(``flow.fragment_capacity``) that forgets a datagram at its last fragment (MF clear) or after
``flow.fragment_timeout`` of silence. Pure (a core module).
"""
from typing import Any

from .codec.ipv4 import FLAG_MF
from .flowkey import Extracted


class Fragments:
    def __init__(self) -> None:
        # (vrf, proto, src, dst, IP id) -> [sport, dport, last seen]
        self._known: dict[tuple[int, int, int, int, int], list[Any]] = {}

    def __len__(self) -> int:
        return len(self._known)

    def ports(self, vrf: int, pkt: Extracted, now: float, capacity: int) -> tuple[int, int] | str:
        """A fragment's ports, or the drop reason (``fragment_table_full``, ``fragment_no_head``)."""
        proto, src, dst, sport, dport, ihl, tlen, ttl, csum, fw, ident, flags, _ = pkt
        fkey = (vrf, proto, src, dst, ident)
        if not fw & 0x1FFF:                       # first fragment: remember its ports
            if fkey not in self._known and len(self._known) >= capacity:
                return "fragment_table_full"
            self._known[fkey] = [sport, dport, now]
            return sport, dport
        known = self._known.get(fkey)
        if known is None:
            return "fragment_no_head"
        if fw & FLAG_MF:
            known[2] = now
        else:                                     # last fragment: the datagram is complete
            del self._known[fkey]
        return known[0], known[1]

    def expire(self, now: float, timeout: float) -> None:
        for fkey in [k for k, v in self._known.items() if now - v[2] > timeout]:
            del self._known[fkey]
