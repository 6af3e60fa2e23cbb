"""The VM pair a measurement runs between, chosen the same way by every bench and experiment.

Two VMs of one virtual network on different servers, under different leaves (so the traffic crosses
the spines and both vrouters), picked deterministically: the first such pair in the topology file's
order of VMs. Pure: a topology in, names out.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from testbed.topology import Topology, Vm


class PairError(ValueError):
    """The topology has no pair of the kind asked for (a one-line message)."""


@dataclass(frozen=True)
class VmPair:
    """A client VM and a server VM of one network, with their servers' underlay addresses."""

    client_vm: Vm
    server_vm: Vm
    client_ip: str
    server_ip: str
    cross_leaf: bool

    @property
    def client(self) -> str:
        """The client VM's server."""
        return self.client_vm.server

    @property
    def server(self) -> str:
        """The server VM's server."""
        return self.server_vm.server

    @property
    def servers(self) -> tuple[str, str]:
        return self.client, self.server

    @property
    def ends(self) -> dict[str, str]:
        """How reports and results name the pair: {"client": "vm@server", "server": "vm@server"}."""
        return {"client": f"{self.client_vm.name}@{self.client}", "server": f"{self.server_vm.name}@{self.server}"}


def vm_dict(vm: Vm) -> dict[str, str]:
    """A VM as results record it: name, network, server, address."""
    return {"name": vm.name, "network": vm.network, "server": vm.server, "address": vm.address}


def candidates(topology: Topology, network: str | None = None) -> Iterator[VmPair]:
    """Every ordered pair of VMs of one network (`network`, or any) on different servers, in file order."""
    address = {s.name: s.address for s in topology.servers}
    for a in topology.vms:
        for b in topology.vms:
            if a.network != b.network or a.server == b.server or network not in (None, a.network):
                continue
            yield VmPair(a, b, address[a.server], address[b.server],
                         topology.leaf_of(a.server) != topology.leaf_of(b.server))


def _shared_networks(topology: Topology, pair: VmPair) -> int:
    on = {(vm.network, vm.server) for vm in topology.vms}
    return sum((net.name, pair.client) in on and (net.name, pair.server) in on for net in topology.virtual_networks)


def pick_pair(topology: Topology, *, network: str | None = None, require_cross_leaf: bool = True,
              most_networks: bool = False) -> VmPair:
    """The first pair of `candidates` under different leaves.

    require_cross_leaf=False: a pair on two servers of one leaf if no leaves differ.
    most_networks=True: first the servers that share the most networks (see `same_servers`)."""
    best: tuple[tuple[int, bool], VmPair] | None = None
    for pair in candidates(topology, network):
        if require_cross_leaf and not pair.cross_leaf:
            continue
        score = (_shared_networks(topology, pair) if most_networks else 0, pair.cross_leaf)
        if best is None or score > best[0]:
            best = (score, pair)
    if best is None:
        where = f"network {network!r}" if network else "one virtual network"
        servers = "servers under two different leaves" if require_cross_leaf else "two different servers"
        raise PairError(f"{topology.source}: needs two VMs of {where} on {servers}")
    return best[1]


def same_servers(topology: Topology, pair: VmPair) -> list[VmPair]:
    """Per network (file order), its first VMs on `pair`'s client and server servers: traffic of
    several networks between the same two vrouters."""
    out = []
    for net in topology.virtual_networks:
        found = [p for p in candidates(topology, net.name) if p.servers == pair.servers]
        if found:
            out.append(found[0])
    return out
