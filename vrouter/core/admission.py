"""Admission of new flows: who owns one, whether its owner, its network and the table may take it,
and the queue its punt waits in before it goes to the agent.

Why: the flow table and the agent are shared by every VM of a server. Without limits one VM that
opens flows as fast as it can fills the table (measured here: a 65,536-entry table full in ~10 s)
and every other VM's new connections fail; Tungsten Fabric answers with a per-VM share of the table
(``max_vm_flows``, blocked until back under 90%), a global held-flow limit and a token bucket in
front of the agent. This module holds the same protections for the pipeline, all O(1) per new
flow: the counts live in ``Quota`` objects the flow table updates on insert and remove.

Owners (docs/vrouter-core.md): a flow that enters from a VM is charged to that VM's interface; a
flow from the fabric to the VM interface its destination address belongs to (the receiving side is
protected too); anything else to ``FABRIC_OWNER``. Both entries of a pair go to the owner of the
flow's first packet, so what one VM opens is never charged to another. The network is the entry's
routing instance. Refusals, in order: ``vm_flow_limit``, ``vm_held_limit``, ``network_flow_limit``,
``held_limit``; each is a named drop of the packet, and nothing else of the owner is touched.
"""
from __future__ import annotations

from typing import Any

from .actions import PuntRequest
from .config import FlowSettings, VrouterConfig
from .flowtable import FABRIC_OWNER, FlowEntry, FlowTable, Quota
from .natschema import DEFAULT_NETWORK, DEFAULT_VRF
from .setupqueue import SetupQueue

Waiting = tuple[PuntRequest, FlowEntry]     # a punt request and the held entry it decides


class Admission:
    def __init__(self, table: FlowTable, settings: FlowSettings) -> None:
        self.table = table
        self.settings = settings
        self.owners: dict[str, Quota] = {}
        self.networks: dict[int, Quota] = {}
        self._by_address: dict[tuple[int, int], Quota] = {}    # (vrf, VIF address) -> its owner
        self._vif_names: frozenset[str] = frozenset()
        self._net_ids: frozenset[int] = frozenset()
        self.queue: SetupQueue[Waiting] = SetupQueue(settings.setup_rate, settings.burst_tokens,
                                                     settings.hold_timeout)

    def configure(self, config: VrouterConfig) -> None:
        """Limits from a (new) configuration; counts, blocks and refusals carry over."""
        s = self.settings = config.flow
        frac = s.resume_fraction
        vrf_of = {n.name: n.id for n in config.networks}
        for v in config.vifs:
            self._quota(self.owners, v.name, v.name).set_limit(v.flow_limit or s.vm_flow_limit, frac)
        vif_names = frozenset(v.name for v in config.vifs)
        for name, q in self.owners.items():
            if name not in vif_names:             # "fabric", or a VIF that went: the default
                q.set_limit(s.vm_flow_limit, frac)
        self._quota(self.owners, FABRIC_OWNER, FABRIC_OWNER).set_limit(s.vm_flow_limit, frac)
        for n in config.networks:
            q = self._quota(self.networks, n.id, n.name)
            q.name = n.name
            q.set_limit(n.flow_limit or s.network_flow_limit, frac)
        self._by_address = {(vrf_of[v.network], v.ip): self.owners[v.name] for v in config.vifs}
        if config.nat is not None:          # a flow from outside to a floating IP is its VM's
            self._by_address.update({(DEFAULT_VRF, f.address): self.owners[f.vm] for f in config.nat.floating_ips})
            self._quota(self.networks, DEFAULT_VRF, DEFAULT_NETWORK).set_limit(s.network_flow_limit, frac)
            vrf_of[DEFAULT_NETWORK] = DEFAULT_VRF
        self._vif_names = vif_names
        self._net_ids = frozenset(vrf_of.values())
        self.queue.configure(s.setup_rate, s.burst_tokens, s.hold_timeout)

    def _quota(self, where: dict[Any, Quota], key: Any, name: str) -> Quota:
        q = where.get(key)
        if q is None:
            q = where[key] = Quota(name, self.settings.vm_flow_limit, self.settings.resume_fraction)
        return q

    # ---- owners
    def owner_of(self, key: tuple[int, ...], ingress: tuple[str, str]) -> Quota:
        """Owner of a new flow ``key`` (vrf, proto, src, dst, ...) entering at ``ingress`` (kind, port):
        the VIF it came from, else as ``of_key`` tells for a packet from the fabric."""
        return self.owners[ingress[1]] if ingress[0] == "vif" else self.of_key(key[0], key[2], key[3], True)

    def of_key(self, vrf: int, src: int, dst: int, fabric: bool) -> Quota:
        """Owner of a flow entering from the fabric (``fabric``) or, without a packet to tell, of
        an entry by its key: the local VIF that sends it, else the one it goes to, else "fabric"."""
        by = self._by_address
        q = None if fabric else by.get((vrf, src))
        if q is None:
            q = by.get((vrf, dst))
        return q if q is not None else self.owners[FABRIC_OWNER]

    # ---- admission
    def refuse(self, owner: Quota, net: Quota, need: int) -> str | None:
        """The drop reason that refuses a new flow of ``need`` entries, or None to admit it."""
        s = self.settings
        if not (owner.blocked or net.blocked or owner.entries + need > owner.limit or owner.held >= s.vm_held_limit
                or net.entries + need > net.limit or self.table.held >= s.held_limit):
            return None                     # the common case, in one test
        if not owner.admit(need):
            return "vm_flow_limit"
        if owner.held >= s.vm_held_limit:
            owner.refused += 1
            return "vm_held_limit"
        if not net.admit(need):
            return "network_flow_limit"
        if self.table.held >= s.held_limit:
            return "held_limit"
        return None

    # ---- introspection
    def pressure(self, now: float) -> dict[str, Any]:
        t, s = self.table, self.settings
        owners = {name: q.describe() for name, q in sorted(self.owners.items())
                  if q.entries or name in self._vif_names or name == FABRIC_OWNER}
        nets = {q.name: {k: v for k, v in q.describe().items() if k != "held"}
                for vrf, q in sorted(self.networks.items(), key=lambda item: item[1].name)
                if q.entries or vrf in self._net_ids}
        return {"entries": len(t), "capacity": t.capacity, "held": t.held, "held_limit": s.held_limit,
                "unreplied": len(t.unreplied), "evictions": t.evictions, "punts_queued": len(self.queue),
                "tokens": self.queue.tokens(now), "setup_rate": s.setup_rate, "burst_tokens": s.burst_tokens,
                "vms": owners, "networks": nets}
