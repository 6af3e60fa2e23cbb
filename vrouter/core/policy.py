"""Ordered policy rules of one virtual network: first match wins, else the network's default.

The slow path evaluates a flow and its reverse separately with the same rules, so a rule can allow
one direction and deny the other even though both entries are installed together.
"""
from typing import TypeAlias

from .codec.ipv4 import mask
from .config import Policy

_ANY_PORTS = (0, 65535)
# (protocol or None for any, source net, source mask, destination net, destination mask, source port
# range, destination port range, allow)
_Rule: TypeAlias = tuple[int | None, int, int, int, int, tuple[int, int], tuple[int, int], bool]


class CompiledPolicy:
    def __init__(self, policy: Policy | None) -> None:
        self.default_allow = policy is None or policy.default == "allow"
        self._rules: list[_Rule] = []
        for r in (policy.rules if policy else ()):
            (snet, slen), (dnet, dlen) = r.src, r.dst
            self._rules.append((r.protocol, snet, mask(slen), dnet, mask(dlen),
                                r.src_port or _ANY_PORTS, r.dst_port or _ANY_PORTS, r.action == "allow"))

    def evaluate(self, proto: int, src: int, dst: int, sport: int, dport: int) -> tuple[bool, int]:
        """(allowed, index of the matching rule or -1 for the default)."""
        for i, (rproto, snet, smask, dnet, dmask, sports, dports, allow) in enumerate(self._rules):
            if rproto is not None and rproto != proto:
                continue
            if src & smask != snet or dst & dmask != dnet:
                continue
            if rproto in (6, 17) and not (sports[0] <= sport <= sports[1] and dports[0] <= dport <= dports[1]):
                continue
            return allow, i
        return self.default_allow, -1
