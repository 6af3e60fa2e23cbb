"""Forwarding information base: longest-prefix match over IPv4 prefixes.

One dict per prefix length, probed from the longest length present: at most 33 dict lookups and
usually a handful. Lookups only happen on the slow path (the flow entry caches the result).
"""
from typing import Any, TypeAlias

# A normalised next hop from the configuration: {"type": "vif" | "tunnel" | "discard" | "receive", plus
# "vif" for a VIF, or "peer", "label", "encap", "mac" for a tunnel}; plain values, msgpack-safe.
Nexthop: TypeAlias = dict[str, Any]


class Fib:
    def __init__(self) -> None:
        self._by_len: dict[int, dict[int, Nexthop]] = {}
        self._lengths: list[int] = []   # present prefix lengths, longest first

    def add(self, net: int, plen: int, nexthop: Nexthop) -> None:
        table = self._by_len.get(plen)
        if table is None:
            table = self._by_len[plen] = {}
            self._lengths = sorted(self._by_len, reverse=True)
        table[net] = nexthop

    def lookup(self, addr: int) -> Nexthop | None:
        """The next hop of the longest matching prefix, or None."""
        m = self.match(addr)
        return m[2] if m is not None else None

    def match(self, addr: int) -> tuple[int, int, Nexthop] | None:
        """The longest matching prefix (network, length, next hop), or None: what ``lookup`` decides
        on, with the prefix that decided it (``testbed trace`` names it)."""
        for plen in self._lengths:
            net = addr & ((0xFFFFFFFF << (32 - plen)) & 0xFFFFFFFF)
            nh = self._by_len[plen].get(net)
            if nh is not None:
                return net, plen, nh
        return None

    def routes(self) -> list[tuple[int, int, Nexthop]]:
        return [(net, plen, nh) for plen in self._lengths for net, nh in sorted(self._by_len[plen].items())]

    def __len__(self) -> int:
        return sum(len(t) for t in self._by_len.values())
