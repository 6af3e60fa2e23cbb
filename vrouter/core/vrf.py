"""Routing instances: one per virtual network, each with its own FIB and policy.

A flow key starts with the instance id (the network's MPLS label / VNI), so two networks that use
the same addresses never share a route or a flow entry.
"""
from dataclasses import dataclass, field

from .config import VrouterConfig
from .fib import Fib
from .policy import CompiledPolicy


@dataclass
class RoutingInstance:
    id: int
    name: str
    fib: Fib = field(default_factory=Fib)
    policy: CompiledPolicy = field(default_factory=lambda: CompiledPolicy(None))


def build_instances(config: VrouterConfig) -> dict[int, RoutingInstance]:
    by_name: dict[str, RoutingInstance] = {}
    for net in config.networks:
        ri = RoutingInstance(net.id, net.name)
        ri.fib.add(net.gateway, 32, {"type": "receive"})
        by_name[net.name] = ri
    for vif in config.vifs:
        by_name[vif.network].fib.add(vif.ip, 32, {"type": "vif", "vif": vif.name})
    # Explicit routes come last so that they override the automatic ones.
    for route in config.routes:
        by_name[route.network].fib.add(route.prefix[0], route.prefix[1], route.nexthop)
    for policy in config.policies:
        by_name[policy.network].policy = CompiledPolicy(policy)
    return {ri.id: ri for ri in by_name.values()}
