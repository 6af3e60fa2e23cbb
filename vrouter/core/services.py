"""The overlay schema's services: an address shared by member VMs and load-balanced over them.

Part of the overlay schema (vrouter/core/schema.py, at its size limit: this is its continuation),
used the same way by the three entry points: topology files, the VNC's run-time changes and the
vrouter config (whose composite next hops name the members). A service is Tungsten Fabric's
shared-address ECMP, as with active-active allowed address pairs: its address is routed to a
composite next hop over its members (vrouter/core/ecmp.py picks one per flow).

The rules (docs/topology-format.md states them for users): a service's name is unique among
services; its address is a host address of its network's subnets, not the gateway, not a VM's
and not another service's in that network; its members are one or more distinct VMs of that network.
"""
from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass

from .codec.ipv4 import int_to_ip
from .schema import Network, Problems, Vm, mapping, name, reference, vm_address

SERVICE_KEYS = ("name", "network", "address", "members")


@dataclass(frozen=True)
class Service:
    name: str
    network: str
    address: int
    members: tuple[str, ...]    # VM names, in the order given

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "network": self.network, "address": int_to_ip(self.address),
                "members": list(self.members)}


def service(p: Problems, where: str, item: object, networks: Mapping[str, Network | None],
            vms: Mapping[str, Vm], names: MutableMapping[str, str],
            taken: MutableMapping[tuple[str, int], str]) -> Service | None:
    """One service. `networks` as for schema.vm; `vms`: the declared VMs by name; `names`: the
    services declared so far; `taken`: (network, address) -> the VM or service that has it (the
    new service's address is added)."""
    m = mapping(p, where, item, SERVICE_KEYS, SERVICE_KEYS)
    if m is None:
        return None
    svc = name(p, f"{where}.name", m["name"], names) if "name" in m else None
    net_name = reference(p, f"{where}.network", m["network"], networks, "virtual network") \
        if "network" in m else None
    net = networks.get(net_name) if net_name is not None else None
    ip = vm_address(p, f"{where}.address", m["address"], net) if net is not None and "address" in m else None
    if ip is not None and net is not None and (net.name, ip) in taken:
        p.add(f"{where}.address", f"{int_to_ip(ip)} is already used by {taken[net.name, ip]} "
                                  f"in network {net.name!r}")
        ip = None
    members = _members(p, f"{where}.members", m["members"], vms, net_name) if "members" in m else None
    if svc is None or net is None or ip is None or members is None:
        return None
    taken[net.name, ip] = f"service {svc!r}"
    return Service(svc, net.name, ip, members)


def _members(p: Problems, where: str, value: object, vms: Mapping[str, Vm],
             network: str | None) -> tuple[str, ...] | None:
    if not isinstance(value, list) or not value:
        p.add(where, f"expected a non-empty list of VM names, got {value!r}")
        return None
    ok = True
    for j, member in enumerate(value):
        problem = None
        if not isinstance(member, str) or member not in vms:
            problem = f"unknown VM {member!r}"
        elif network is not None and vms[member].network != network:
            problem = f"VM {member!r} is in network {vms[member].network!r}, not {network!r}"
        elif value.index(member) != j:
            problem = f"duplicate member {member!r}"
        if problem is not None:
            p.add(f"{where}[{j}]", problem)
            ok = False
    return tuple(value) if ok else None
