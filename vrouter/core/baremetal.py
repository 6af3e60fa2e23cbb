"""The overlay schema's bare-metal hosts: fabric nodes that run no vrouter and join one virtual network
through a standard VXLAN tunnel endpoint (a Linux `vxlan` device, a top-of-rack switch's VTEP).

Part of the overlay schema (vrouter/core/schema.py, at its size limit: this is its continuation, as
services.py is), used the same way by the topology files (testbed/topology.py, which also checks the
fabric side: the leaf and the underlay address) and by the VNC (controllers/vnc_baremetal.py, which
computes both sides' forwarding entries from what is parsed here).

The rules (docs/topology-format.md, "Bare-metal hosts", states them for users): a host's name follows
the name rules and is unique among all names; `address` is its underlay address; `network` a virtual
network; `overlay_address` a host address of that network's subnets (not the gateway, not a network or
broadcast address) that no VM, service or other bare-metal host of the network has; `mac` (optional,
default derived from the name like a VM's) a unicast MAC no VM or host of the network has.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any

from .codec.ipv4 import int_to_ip
from .floodschema import FloodConfig
from .schema import Network, Problems, address, default_mac, mac, mapping, name, reference, vm_address

BAREMETAL_KEYS = ("name", "leaf", "address", "network", "overlay_address", "mac")
REQUIRED = ("name", "leaf", "address", "network", "overlay_address")


@dataclass(frozen=True)
class BareMetal:
    name: str
    address: int            # underlay: the VXLAN tunnel endpoint the vrouters send to
    network: str
    overlay_address: int
    mac: str                # the VXLAN device's: the inner destination MAC of what is sent to the host

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "address": int_to_ip(self.address), "network": self.network,
                "overlay_address": int_to_ip(self.overlay_address), "mac": self.mac}


def host(p: Problems, where: str, item: object, networks: Mapping[str, Network | None],
         names: MutableMapping[str, str], taken: MutableMapping[tuple[str, int], str],
         macs: MutableMapping[tuple[str, str], str]) -> BareMetal | None:
    """One bare-metal host's overlay side. `networks` as for schema.vm; `names`: every name so far;
    `taken`: (network, address) -> who has it (VMs, services, hosts); `macs`: (network, MAC) -> who
    has it. The new host's address and MAC are added to both."""
    m = mapping(p, where, item, BAREMETAL_KEYS, REQUIRED)
    if m is None:
        return None
    own = name(p, f"{where}.name", m["name"], names) if "name" in m else None
    underlay = address(p, f"{where}.address", m["address"]) if "address" in m else None
    net_name = reference(p, f"{where}.network", m["network"], networks, "virtual network") \
        if "network" in m else None
    net = networks.get(net_name) if net_name is not None else None
    ip = vm_address(p, f"{where}.overlay_address", m["overlay_address"], net) \
        if net is not None and "overlay_address" in m else None
    if ip is not None and net is not None and (net.name, ip) in taken:
        p.add(f"{where}.overlay_address", f"{int_to_ip(ip)} is already used by {taken[net.name, ip]} "
                                          f"in network {net.name!r}")
        ip = None
    given = m.get("mac")
    hw = mac(p, f"{where}.mac", given) if given is not None else (default_mac(own) if own else None)
    if hw is not None and net is not None and (net.name, hw) in macs:
        p.add(f"{where}.mac", f"{hw} is already used by {macs[net.name, hw]} in network {net.name!r}")
        hw = None
    if own is None or underlay is None or net is None or ip is None or hw is None:
        return None
    taken[net.name, ip] = macs[net.name, hw] = f"bare-metal host {own!r}"
    return BareMetal(own, underlay, net.name, ip, hw)


def view(routes: Iterable[tuple[str, str, Mapping[str, Any]]], flood: FloodConfig | None,
         counters: Mapping[str, int]) -> dict[str, Any]:
    """The `baremetal` introspection op (`testbed vr SRV baremetal`): what this vrouter holds of the
    bare-metal hosts. ``routes``: (routing instance name, prefix text, next hop dict) of every route;
    a host's is the VXLAN tunnel next hop without probes (controllers/vnc_baremetal.py `nexthop`);
    ``flood``: the config's FloodConfig or None (a host is a flood endpoint of its network when its
    VTEP is one of the network's: the VNC puts every host of a network present here in its flood list,
    so "no" means flooding is off or the VNC did not); ``counters``: the pipeline's (its answers to
    ARP the hosts flood, core/fabric_arp.py)."""
    hosts = [{"network": net, "prefix": prefix, "vtep": nh["peer"], "vni": nh["label"], "mac": nh["mac"]}
             for net, prefix, nh in routes if nh.get("type") == "tunnel" and nh.get("probe") is False]
    floods = {(n.network, e.peer) for n in (flood.networks if flood is not None else ()) for e in n.endpoints}
    for h in hosts:
        h["flood_endpoint"] = (h["network"], h["vtep"]) in floods
    return {"hosts": sorted(hosts, key=lambda h: (h["network"], h["prefix"])),
            "fabric_arp_replies": counters.get("fabric_arp_replies", 0)}
