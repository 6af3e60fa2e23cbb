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

Run-time changes (``change``: the RPC shell's one ``baremetal`` method, add | remove | list, the way
vnc_mirror.py does it): a host is a fabric node of the topology (its leaf and underlay address are
the fabric's, wired when the testbed starts), so ``add`` joins a host the fabric has and that is not
joined now (one removed earlier, possibly into another network), checked like a topology entry, and
``remove`` takes it out: its routes leave every vrouter, its flood entry every flood list. The model
keeps its hosts in a ``Hosts`` (a dict name -> BareMetal, plus the fabric's nodes); ``state`` and
``restore`` carry the joined set across a VNC restart.
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


class Hosts(dict):
    """The joined hosts, name -> BareMetal (what every other function here takes), and ``fabric``:
    every host the topology wired into the fabric, name -> {"leaf", "address"} (joined or not)."""

    def __init__(self, hosts=(), fabric=None):
        super().__init__(hosts)
        self.fabric: dict[str, dict[str, str]] = dict(fabric or {})


def device(host: BareMetal, networks) -> str:
    """The name of the host's VXLAN device: ``vxlan<VNI>`` (at most 13 characters: VNI < 2**24)."""
    return f"vxlan{networks[host.network].id}"


def _claimed(vms: dict, services: dict, hosts) -> tuple[dict, dict]:
    """(network, address) and (network, MAC) -> who has it, for the schema's uniqueness checks."""
    taken = {(v["network"], schema.parse_address(v["address"])): f"VM {n!r}" for n, v in vms.items()}
    taken.update({(s["network"], schema.parse_address(s["address"])): f"service {n!r}" for n, s in services.items()})
    macs = {(v["network"], v["mac"]): f"VM {n!r}" for n, v in vms.items()}
    for h in hosts:
        taken[h.network, h.overlay_address] = macs[h.network, h.mac] = f"bare-metal host {h.name!r}"
    return taken, macs


def parse(topo: dict, networks, vms: dict, services: dict, names: dict) -> Hosts:
    """The topology's ``baremetal:`` section (its fabric side was checked by the testbed), refused at
    its first problem; ``vms`` and ``services`` are the model's records, ``names`` every other name."""
    taken, macs = _claimed(vms, services, ())
    out = Hosts()
    for i, item in enumerate(schema.items(_FIRST, "baremetal", topo.get("baremetal"))):
        host = baremetal.host(_FIRST, f"baremetal[{i}]", item, networks, names, taken, macs)
        assert host is not None     # _FIRST raised otherwise
        out[host.name] = host
        out.fabric[host.name] = {"leaf": str(item["leaf"]), "address": int_to_ip(host.address)}
    return out


# ---- run-time changes (through VncModel._commit: refused whole, the servers touched returned)
OPS = ("add", "remove", "list")


def join(model, item, hosts: Hosts | None = None) -> BareMetal:
    """Check ``item`` (a topology entry: name, leaf, address, network, overlay_address[, mac]) as a host
    joining ``hosts`` (default the model's) now: the schema's rules against the model's VMs, services
    and other hosts, and the fabric's: a host the topology wired, on its leaf and address, not joined."""
    hosts = model._baremetal if hosts is None else hosts
    name = item.get("name") if isinstance(item, dict) else None
    where = f"baremetal[{name!r}]" if isinstance(name, str) else "baremetal"
    if not isinstance(item, dict):
        raise VncError(f"{where}: expected a mapping with {', '.join(baremetal.REQUIRED)}")
    if isinstance(name, str) and name not in hosts.fabric:
        wired = ", ".join(sorted(hosts.fabric)) or "none"
        raise VncError(f"{where}: no bare-metal host {name!r} in this testbed's fabric (a host is wired in when "
                       f"the testbed starts, from the topology's baremetal: section; wired here: {wired})")
    if name in hosts:
        raise VncError(f"{where}: bare-metal host {name!r} is joined to network {hosts[name].network!r} already "
                       f"(net baremetal rm {name} first)")
    names = {n: f"server {n!r}" for n in model._servers}
    names.update({n: f"switch {n!r}" for n in model._other_names})
    names.update({n: f"VM {n!r}" for n in model._vms})
    names.update({n: f"bare-metal host {n!r}" for n in hosts})
    taken, macs = _claimed(model._vms, model._services, hosts.values())
    host = baremetal.host(_FIRST, where, item, model._networks, names, taken, macs)
    assert host is not None     # _FIRST raised otherwise
    wired = hosts.fabric[host.name]
    for key, given in (("leaf", item["leaf"]), ("address", int_to_ip(host.address))):
        if given != wired[key]:
            raise VncError(f"{where}.{key}: {host.name} is wired to {key} {wired[key]} in the fabric, not {given!r}")
    return host


def change(model, op, args):
    """``add`` (a topology entry) or ``remove`` (a host's name); a Change."""
    hosts = model._baremetal
    if op == "add":
        host = join(model, args)
        return model._commit(lambda: hosts.__setitem__(host.name, host))
    if op != "remove":
        raise VncError(f"baremetal: unknown operation {op!r} (expected {', '.join(OPS)})")
    if not isinstance(args, str) or args not in hosts:
        state = "is not joined" if args in hosts.fabric else "is not a bare-metal host of this testbed"
        raise VncError(f"baremetal[{args!r}]: {args!r} {state}")
    return model._commit(lambda: hosts.pop(args))


def listing(model) -> dict:
    """The joined hosts as the dump has them, and the fabric's hosts that are not joined."""
    hosts = model._baremetal
    return {"hosts": describe(hosts, model.vms(), model._servers, model._networks),
            "unjoined": [{"name": n, **hosts.fabric[n]} for n in sorted(hosts.fabric) if n not in hosts]}


# ---- persistence
def state(hosts: Hosts) -> list[dict]:
    return [{**hosts[n].to_dict(), "leaf": hosts.fabric[n]["leaf"]} for n in sorted(hosts)]


def restore(model, saved) -> Hosts:
    """The saved joined hosts, checked against the (restored) model; None (a state saved before
    run-time hosts): the current ones."""
    current = model._baremetal
    if saved is None:
        return current
    out = Hosts(fabric=current.fabric)
    for item in saved:
        host = join(model, item, out)
        out[host.name] = host
    return out


def check_vm(hosts: Hosts, item: dict, where: str) -> None:
    """A VM added at run time may not take a bare-metal host's name (joined or only wired: a Mininet host
    has it), or a joined host's address or MAC in its network."""
    if item.get("name") in hosts.fabric and item.get("name") not in hosts:
        raise VncError(f"{where}.name: duplicate name {item['name']!r} (already used by bare-metal host "
                       f"{item['name']!r}, not joined)")
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
