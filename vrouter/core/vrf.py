"""Routing instances: one per virtual network, each with its own FIB and policy.

A flow key starts with the instance id (the network's MPLS label / VNI), so two networks that use
the same addresses never share a route or a flow entry. A network connected to others by policy
(schema.connections) holds their routes too; `network_of` tells which network an address of such a
route belongs to: the routing instance where that address's own traffic is keyed (the reverse
entry's, docs/vrouter-core.md "Routing between networks").
"""
from dataclasses import dataclass, field

from .config import VrouterConfig
from .fib import Fib
from .natschema import DEFAULT_NETWORK, DEFAULT_VRF
from .policy import CompiledPolicy
from .schema import Network


@dataclass
class RoutingInstance:
    id: int
    name: str
    fib: Fib = field(default_factory=Fib)
    policy: CompiledPolicy = field(default_factory=lambda: CompiledPolicy(None))
    connected: tuple[Network, ...] = ()     # the networks connected to this one that this vrouter carries

    def network_of(self, addr: int) -> Network | None:
        """The connected network whose subnets hold ``addr`` (None: this network's own, or no one's)."""
        return next((n for n in self.connected if n.contains(addr)), None)


def build_instances(config: VrouterConfig) -> dict[int, RoutingInstance]:
    by_name: dict[str, RoutingInstance] = {}
    nets = {n.name: n for n in config.networks}
    for net in config.networks:
        links = config.connected.get(net.name, ())
        ri = RoutingInstance(net.id, net.name, connected=tuple(nets[n] for n in sorted(links) if n in nets))
        ri.fib.add(net.gateway, 32, {"type": "receive"})
        by_name[net.name] = ri
    for vif in config.vifs:
        by_name[vif.network].fib.add(vif.ip, 32, {"type": "vif", "vif": vif.name})
    # Explicit routes come last so that they override the automatic ones.
    for route in config.routes:
        by_name[route.network].fib.add(route.prefix[0], route.prefix[1], route.nexthop)
    for policy in config.policies:
        by_name[policy.network].policy = CompiledPolicy(policy, {n: nets[n].subnets for n in nets})
    instances = {ri.id: ri for ri in by_name.values()}
    if config.nat is not None:
        instances[DEFAULT_VRF] = _default_network(config, by_name)
    return instances


def _default_network(config: VrouterConfig, by_name: dict[str, RoutingInstance]) -> RoutingInstance:
    """The default network (the seed's default forwarding table, core/nat.py): floating IPs and the
    SNAT address are the ways in, everything else goes out to the gateway. A network whose VMs may
    leave (source NAT, or a VM with a floating IP) gets a default route toward it, below its own."""
    nat = config.nat
    assert nat is not None
    default = RoutingInstance(DEFAULT_VRF, DEFAULT_NETWORK)
    default.fib.add(0, 0, {"type": "external"})
    if nat.snat_address is not None:
        default.fib.add(nat.snat_address, 32, {"type": "snat"})
    vifs = {v.name: v for v in config.vifs}
    leaving = set(nat.snat_networks)
    for f in nat.floating_ips:
        default.fib.add(f.address, 32, {"type": "floating", "vif": f.vm})
        leaving.add(vifs[f.vm].network)
    for name in leaving:
        if not any(plen == 0 for _, plen, _ in by_name[name].fib.routes()):     # an explicit one wins
            by_name[name].fib.add(0, 0, {"type": "external"})
    return default
