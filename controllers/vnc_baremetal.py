"""The VNC's bare-metal hosts, pure: both sides' forwarding entries from the overlay state.

Why: a bare-metal host (vrouter/core/baremetal.py) runs no vrouter and no agent; it joins its virtual
network through a standard Linux VXLAN device. The controller programs both ends the way an EVPN or
hardware-VTEP controller does:
- the vrouters (``routes``): in the host's network's routing instance, the host's overlay address as a
  /32 whose next hop is a VXLAN tunnel to the host's underlay address, VNI = the network's id, inner
  destination MAC = the host's MAC. VXLAN whatever the topology's encapsulation (a Linux VTEP speaks
  nothing else; the vrouters receive every encapsulation anyway), and ``probe: false``: the host
  answers no path-repair probes, so its paths are never probed nor declared dead
  (vrouter/core/paths.py). The config's tunnel next hops make the host a peer whose packets are
  accepted (vrouter/core/config.py).
- the host (``entries``): head-end replication entries (``00:00:00:00:00:00`` -> every server with a
  VM of the network, and every other host of it), so its broadcasts (ARP) reach the vrouters, which
  answer for their VMs (vrouter/core/fabric_arp.py); one forwarding entry per VM MAC -> its server;
  and one permanent neighbour entry per VM address (what ARP suppression would give). The testbed
  applies them as differences inside the host's namespace (testbed/baremetal.py).
Only the host's own network reaches it: routing between networks (policies naming networks) does not
extend to bare-metal hosts, whose only route is their subnet.
"""
from __future__ import annotations

import ipaddress

from vrouter.core import baremetal, schema
from vrouter.core.baremetal import BareMetal
from vrouter.core.codec.ipv4 import int_to_ip
from vrouter.core.schema import Problems
from vrouter.io.control import VncError

FLOOD_MAC = "00:00:00:00:00:00"     # the Linux VXLAN fdb's "every unknown destination" entry
_FIRST = Problems(VncError)


def device(host: BareMetal, networks) -> str:
    """The name of the host's VXLAN device: ``vxlan<VNI>`` (at most 13 characters: VNI < 2**24)."""
    return f"vxlan{networks[host.network].id}"


def parse(topo: dict, networks, vms: dict, services: dict, names: dict) -> dict[str, BareMetal]:
    """The topology's ``baremetal:`` section (its fabric side was checked by the testbed), refused at
    its first problem; ``vms`` and ``services`` are the model's records, ``names`` every other name."""
    taken = {(v["network"], schema.parse_address(v["address"])): f"VM {n!r}" for n, v in vms.items()}
    taken.update({(s["network"], schema.parse_address(s["address"])): f"service {n!r}" for n, s in services.items()})
    macs = {(v["network"], v["mac"]): f"VM {n!r}" for n, v in vms.items()}
    out = {}
    for i, item in enumerate(schema.items(_FIRST, "baremetal", topo.get("baremetal"))):
        host = baremetal.host(_FIRST, f"baremetal[{i}]", item, networks, names, taken, macs)
        assert host is not None     # _FIRST raised otherwise
        out[host.name] = host
    return out


def check_vm(hosts: dict[str, BareMetal], item: dict, where: str) -> None:
    """A VM added at run time may not take a bare-metal host's name, or its address or MAC in its network."""
    for h in hosts.values():
        if item.get("name") == h.name:
            raise VncError(f"{where}.name: duplicate name {h.name!r} (already used by bare-metal host {h.name!r})")
        if item.get("network") != h.network:
            continue
        if schema.parse_address(item.get("address")) == h.overlay_address:
            raise VncError(f"{where}.address: {int_to_ip(h.overlay_address)} is already used by bare-metal host "
                           f"{h.name!r} in network {h.network!r}")
        mac = item.get("mac") or (schema.default_mac(item["name"]) if isinstance(item.get("name"), str) else None)
        if isinstance(mac, str) and mac.lower() == h.mac:
            raise VncError(f"{where}.mac: {h.mac} is already used by bare-metal host {h.name!r} in network "
                           f"{h.network!r}")


def nexthop(host: BareMetal, networks) -> dict:
    return {"type": "tunnel", "peer": int_to_ip(host.address), "label": networks[host.network].id,
            "encap": "vxlan", "mac": host.mac, "probe": False}


def vteps(hosts: dict[str, BareMetal], networks) -> dict[str, list[tuple[str, int]]]:
    """Per network, its hosts' (underlay address, VNI): flood endpoints of the vrouters
    (controllers/vnc_flood.py), so a VM's broadcast and multicast reach the hosts too."""
    out: dict[str, list[tuple[str, int]]] = {}
    for h in sorted(hosts.values(), key=lambda h: h.address):
        out.setdefault(h.network, []).append((int_to_ip(h.address), networks[h.network].id))
    return out


def routes(hosts: dict[str, BareMetal], present, networks) -> list[dict]:
    """A vrouter's routes to the hosts of the networks ``present`` on it."""
    return [{"network": h.network, "prefix": f"{int_to_ip(h.overlay_address)}/32", "nexthop": nexthop(h, networks)}
            for h in hosts.values() if h.network in present]


def entries(host: BareMetal, hosts: dict[str, BareMetal], vms: list[dict], servers: dict[str, str],
            networks) -> dict:
    """What the host's VXLAN device needs: ``fdb`` [[MAC, underlay destination]] (the flood entries
    first) and ``neigh`` [[overlay address, MAC]], sorted, from the VMs (model records) and the servers
    (name -> underlay address)."""
    members = [v for v in vms if v["network"] == host.network]
    others = [h for h in hosts.values() if h.network == host.network and h.name != host.name]
    ends = {servers[v["server"]] for v in members} | {int_to_ip(h.address) for h in others}
    by_ip = lambda ip: ipaddress.IPv4Address(ip)       # noqa: E731
    unicast = [[v["mac"], servers[v["server"]]] for v in members] + [[h.mac, int_to_ip(h.address)] for h in others]
    neigh = [[v["address"], v["mac"]] for v in members] + [[int_to_ip(h.overlay_address), h.mac] for h in others]
    return {"device": device(host, networks), "vni": networks[host.network].id,
            "fdb": [[FLOOD_MAC, e] for e in sorted(ends, key=by_ip)] + sorted(unicast),
            "neigh": sorted(neigh, key=lambda n: by_ip(n[0]))}


def describe(hosts: dict[str, BareMetal], vms: list[dict], servers: dict[str, str], networks) -> list[dict]:
    """Every host with its entries (the VNC's ``dump``: `testbed net baremetal list`, the testbed's sync)."""
    return [{**h.to_dict(), **entries(h, hosts, vms, servers, networks)} for h in sorted(hosts.values(),
                                                                                         key=lambda h: h.name)]
