"""The gateway of a topology: a router on a leaf that fronts an external network ("the internet").

Why: traffic to destinations outside every virtual network leaves the vrouters without a tunnel, as
plain IP (floating IPs, source NAT: vrouter/core/nat.py); something on the fabric has to route it to
external hosts and route the floating and SNAT addresses back to the right server. This module
checks the topology's `gateway:` section (with the fabric: its leaf and underlay address), and
builds it in Mininet: a Linux router host on the leaf (like a server: an underlay address the fabric
routes and answers ARP for), with one link per external host. The gateway routes the external
network itself, each server's SNAT address and each floating IP to its server's underlay address
(`routes`); `testbed net floating-ip` changes the latter at run time (`set_floating_route`).
Servers send what leaves toward the gateway's underlay address (their default route, set here).
"""
from __future__ import annotations

from dataclasses import dataclass

from vrouter.core import natschema, schema
from vrouter.core.codec.ipv4 import int_to_ip
from vrouter.core.schema import Problems

GATEWAY_KEYS = ("name", "leaf", "address", "external", "floating", "hosts")
HOST_KEYS = ("name", "address")
DEFAULT_NAME = "gateway"


@dataclass(frozen=True)
class ExternalHost:
    name: str
    address: str


@dataclass(frozen=True)
class Gateway:
    name: str
    leaf: str
    address: str            # on the underlay
    external: str           # the external network's CIDR; the gateway holds its first address
    floating: str           # floating IPs and the servers' SNAT addresses (natschema)
    hosts: tuple[ExternalHost, ...]

    @property
    def external_address(self) -> str:
        return int_to_ip(schema.parse_cidr(self.external)[0] + 1)     # type: ignore[index]


def check(p: Problems, item: object, names: dict[str, str], leaves: set[str], underlay: schema.Prefix | None,
          servers: dict[int, str], n_servers: int) -> Gateway | None:
    """The `gateway:` section, every problem reported at its place."""
    m = schema.mapping(p, "gateway", item, GATEWAY_KEYS, ("leaf", "address", "external", "floating"))
    if m is None:
        return None
    name = schema.name(p, "gateway.name", m.get("name", DEFAULT_NAME), names)
    leaf = m.get("leaf")
    if "leaf" in m and leaf not in leaves:
        p.add("gateway.leaf", f"{leaf!r} is not a leaf of this topology")
    addr = schema.address(p, "gateway.address", m["address"]) if "address" in m else None
    if addr is not None and underlay is not None and not schema.inside(addr, underlay):
        p.add("gateway.address", f"{int_to_ip(addr)} is outside the underlay {schema.prefix_text(underlay)}")
    elif addr is not None and addr in servers:
        p.add("gateway.address", f"{int_to_ip(addr)} is the address of server {servers[addr]!r}")
    external = schema.prefix(p, "gateway.external", m["external"], "203.0.113.0/24") if "external" in m else None
    if external is not None and external[1] > 30:
        p.add("gateway.external", "needs room for the gateway and a host (a /30 or larger)")
    floating = natschema.floating_range(p, "gateway.floating", m["floating"], n_servers) \
        if "floating" in m else None
    if floating and external and (schema.inside(floating[0], external) or schema.inside(external[0], floating)):
        p.add("gateway.floating", "overlaps the external network")
    hosts = _hosts(p, m.get("hosts"), names, external)
    if not (name and leaf in leaves and addr is not None and external and floating) or hosts is None:
        return None
    return Gateway(name, leaf, int_to_ip(addr), schema.prefix_text(external), schema.prefix_text(floating),
                   tuple(hosts))


def _hosts(p: Problems, value: object, names: dict[str, str],
           external: schema.Prefix | None) -> list[ExternalHost] | None:
    out = []
    seen: dict[int, str] = {}
    ok = True
    for i, item in enumerate(schema.items(p, "gateway.hosts", value)):
        where = f"gateway.hosts[{i}]"
        m = schema.mapping(p, where, item, HOST_KEYS, HOST_KEYS)
        if m is None or not all(k in m for k in HOST_KEYS):
            ok = False
            continue
        name = schema.name(p, f"{where}.name", m["name"], names)
        addr = schema.address(p, f"{where}.address", m["address"])
        if addr is not None and external is not None:
            net, plen = external
            if not schema.inside(addr, external):
                p.add(f"{where}.address", f"{int_to_ip(addr)} is outside the external network")
                addr = None
            elif addr in (net, net + 1, net | ~schema.mask(plen) & 0xFFFFFFFF):
                p.add(f"{where}.address", f"{int_to_ip(addr)} is the network's own, the gateway's or broadcast")
                addr = None
            elif addr in seen:
                p.add(f"{where}.address", f"duplicate address (already used by {seen[addr]})")
                addr = None
        if name is None or addr is None:
            ok = False
            continue
        seen[addr] = name
        out.append(ExternalHost(name, int_to_ip(addr)))
    return out if ok else None


def snat_addresses(gw: Gateway, servers: list[str]) -> dict[str, str]:
    """Each server's SNAT address, in topology order (natschema.snat_address)."""
    floating = schema.parse_cidr(gw.floating)
    assert floating is not None
    return {s: int_to_ip(natschema.snat_address(floating, i)) for i, s in enumerate(servers, 1)}


def describe(gw: Gateway, prefix: str, leaf_port: int, mac: str) -> dict:
    """The gateway's part of the fabric description (testbed/fabric.py): shaped like a server's, so
    the fabric routes and answers ARP for it the same way."""
    return {"name": gw.name, "ip": gw.address, "mac": mac, "intf": f"{prefix}-g0",
            "leaf": gw.leaf, "leaf_port": leaf_port, "external": gw.external, "floating": gw.floating,
            "external_address": gw.external_address,
            "hosts": [{"name": h.name, "address": h.address, "intf": f"{prefix}-x{i}", "host_intf": f"{prefix}-i{i}"}
                      for i, h in enumerate(gw.hosts, 1)]}


def build(net, desc: dict, plen: int, nodes: dict) -> None:
    """Add the gateway and its external hosts to a Mininet network being built (testbed/network.py)."""
    gw = desc["gateway"]
    nodes[gw["name"]] = net.addHost(gw["name"], ip=f"{gw['ip']}/{plen}", mac=gw["mac"])
    net.addLink(nodes[gw["name"]], nodes[gw["leaf"]], port1=0, port2=gw["leaf_port"], intfName1=gw["intf"],
                intfName2=gw["leaf_intf"])
    ext_plen = gw["external"].split("/")[1]
    for h in gw["hosts"]:
        nodes[h["name"]] = net.addHost(h["name"], ip=f"{h['address']}/{ext_plen}")
        net.addLink(nodes[h["name"]], nodes[gw["name"]], intfName1=h["host_intf"], intfName2=h["intf"])


def configure(net, desc: dict, floating_routes: dict[str, str]) -> None:
    """After the network started: the gateway routes, the external hosts' default route, the servers'
    default route toward the gateway. ``floating_routes``: floating or SNAT address -> server address."""
    gw = desc["gateway"]
    node = net[gw["name"]]
    node.cmd("sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.disable_ipv6=1")
    node.cmd(f"ethtool -K {gw['intf']} tx off >/dev/null 2>&1")
    for h in gw["hosts"]:
        node.cmd(f"ip addr add {gw['external_address']}/32 dev {h['intf']}; ip link set {h['intf']} up; "
                 f"ip route add {h['address']}/32 dev {h['intf']}; ethtool -K {h['intf']} tx off >/dev/null 2>&1")
        host = net[h["name"]]
        host.cmd(f"ethtool -K {h['host_intf']} tx off >/dev/null 2>&1; "
                 f"ip route add default via {gw['external_address']} dev {h['host_intf']} onlink; "
                 "sysctl -qw net.ipv6.conf.all.disable_ipv6=1")
    for address, server in floating_routes.items():
        set_floating_route(node, address, server)
    for srv in desc["servers"]:
        net[srv["name"]].cmd(f"sysctl -qw net.ipv4.ip_forward=1; ip route replace default via {gw['ip']}")


def sync_routes(run, floating: str, routes: dict[str, str]) -> None:
    """Make the gateway's /32 routes inside the floating range exactly ``routes`` (address -> server);
    ``run(shell command) -> output`` runs in the gateway's namespace (`testbed net floating-ip`)."""
    pfx = schema.parse_cidr(floating)
    assert pfx is not None
    for line in run("ip route show").splitlines():
        dst = line.split()[0] if line.strip() else ""
        ip = schema.parse_address(dst)
        if ip is not None and schema.inside(ip, pfx) and dst not in routes:
            run(f"ip route del {dst}/32")
    for address, server in routes.items():
        run(f"ip route replace {address}/32 via {server}")


def set_floating_route(node, address: str, server: str | None) -> str:
    """Route a floating (or SNAT) address to a server's underlay address, or remove it (None)."""
    if server is None:
        return node.cmd(f"ip route del {address}/32 2>&1")
    return node.cmd(f"ip route replace {address}/32 via {server} 2>&1")
