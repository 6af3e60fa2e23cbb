"""Networks connected by policy: which they are, and the rule that their subnets do not overlap.

Part of the overlay schema (schema.py states its rules; this check is here only to keep that module
within its size): topology files, the VNC's run-time changes and the vrouter config call it after
their policies, with the same `Problems`, so the three refuse an overlapping connection in the same
words. Pure (a core module).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

from .schema import Network, Policy, Problems, inside, prefix_text

__all__ = ["connections"]


def connections(p: Problems, policies: Sequence[tuple[str, Policy]],
                networks: Mapping[str, Network | None]) -> dict[str, frozenset[str]]:
    """Network -> the networks it is connected to. Two networks are connected when each one's policy
    has an allow rule naming the other: both must consent, or one network could push its traffic
    into another, whose replies would find no route back. A network and the networks it connects to
    share one routing instance's addresses: none of their subnets may overlap (reported at the rule
    that names the other network; `networks` not given, e.g. not carried by a vrouter, are not
    checked). `policies`: (place, policy) pairs."""
    wants: dict[str, dict[str, str]] = {}      # network -> the networks it names -> the rule's place
    for where, pol in policies:
        for j, r in enumerate(pol.rules):
            if r.network is not None and r.action == "allow":
                wants.setdefault(pol.network, {}).setdefault(r.network, f"{where}.rules[{j}].network")
    linked = {a: frozenset(b for b in named if a in wants.get(b, {})) for a, named in wants.items()}
    linked = {a: bs for a, bs in linked.items() if bs}
    told: set[frozenset[str]] = set()
    for a in sorted(linked):
        group = [a, *sorted(linked[a])]
        for i, x in enumerate(group):
            for y in group[i + 1:]:
                clash = _overlap(networks.get(x), networks.get(y))
                if clash is None or frozenset((x, y)) in told:
                    continue
                told.add(frozenset((x, y)))
                via = "" if x == a else f" (both connect to {a!r})"
                p.add(wants[a][y], f"cannot connect networks {x!r} and {y!r}{via}: their subnets overlap "
                                   f"({clash}); connected networks share addresses in one routing instance")
    return linked


def _overlap(a: Network | None, b: Network | None) -> str | None:
    """'S1 and S2' for the first overlapping pair of subnets of two networks, else None."""
    for s in a.subnets if a and b else ():
        for t in b.subnets:  # type: ignore[union-attr]  # b is a Network when a's subnets are read
            if inside(s[0], t) or inside(t[0], s):
                return f"{prefix_text(s)} and {prefix_text(t)}"
    return None
