"""Ordered policy rules of one virtual network: first match wins, else the network's default.

The slow path evaluates a flow and its reverse separately with the same rules, so a rule can allow
one direction and deny the other even though both entries are installed together. A rule naming
another network matches only traffic with one end in that network's subnets (connected networks
never overlap, schema.connections); a network this vrouter does not carry has no subnets here, so
such a rule matches nothing (no traffic to it reaches this vrouter's instance anyway).
"""
from collections.abc import Mapping
from typing import TypeAlias

from .codec.ipv4 import mask
from .config import Policy
from .schema import Prefix

_ANY_PORTS = (0, 65535)
# (protocol or None for any, source net, source mask, destination net, destination mask, source port
# range, destination port range, allow, the other network's (net, mask) pairs or None for any traffic)
_Rule: TypeAlias = tuple[int | None, int, int, int, int, tuple[int, int], tuple[int, int], bool,
                         tuple[tuple[int, int], ...] | None]


class CompiledPolicy:
    def __init__(self, policy: Policy | None, subnets: Mapping[str, tuple[Prefix, ...]] | None = None) -> None:
        """``subnets``: the networks a rule may name -> their subnets."""
        self.default_allow = policy is None or policy.default == "allow"
        self._rules: list[_Rule] = []
        for r in (policy.rules if policy else ()):
            (snet, slen), (dnet, dlen) = r.src, r.dst
            other = None if r.network is None else \
                tuple((n, mask(plen)) for n, plen in (subnets or {}).get(r.network, ()))
            self._rules.append((r.protocol, snet, mask(slen), dnet, mask(dlen),
                                r.src_port or _ANY_PORTS, r.dst_port or _ANY_PORTS, r.action == "allow", other))

    def evaluate(self, proto: int, src: int, dst: int, sport: int, dport: int) -> tuple[bool, int]:
        """(allowed, index of the matching rule or -1 for the default)."""
        for i, (rproto, snet, smask, dnet, dmask, sports, dports, allow, other) in enumerate(self._rules):
            if rproto is not None and rproto != proto:
                continue
            if src & smask != snet or dst & dmask != dnet:
                continue
            if other is not None and not any(src & m == n or dst & m == n for n, m in other):
                continue
            if rproto in (6, 17) and not (sports[0] <= sport <= sports[1] and dports[0] <= dport <= dports[1]):
                continue
            return allow, i
        return self.default_allow, -1
