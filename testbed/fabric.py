"""Fabric description: the topology turned into concrete names, DPIDs, port numbers and MACs.

The same description builds the Mininet network and is written to `<rundir>/fabric.json` for the
controller, so both sides agree on which port leads where without any discovery protocol.
Root-namespace names (bridges, switch-side veths, host veths while Mininet creates them) are global:
they all start with `<prefix>-` so scoped cleanup can find them, and stay within IFNAMSIZ (15).
"""
from __future__ import annotations

import ipaddress
import json
import re
from pathlib import Path

from testbed import baremetal, gateway
from testbed.rundir import write_json
from testbed.topology import Topology

PREFIX_RE = re.compile(r"^[a-z][a-z0-9]{0,5}$")
IFNAMSIZ = 15
# DPIDs say the role in the high byte so `ovs-ofctl` output is readable: 0x5... spine, 0x1... leaf.
DPID_BASE = {"spine": 0x5000, "leaf": 0x1000}


class FabricError(ValueError):
    pass


def check_prefix(prefix: str) -> str:
    if not isinstance(prefix, str) or not PREFIX_RE.match(prefix):
        raise FabricError(f"prefix {prefix!r} must be 1-6 lowercase letters/digits starting with a letter "
                          f"(it starts every interface name, which Linux limits to 15 characters)")
    return prefix


def server_mac(address: str) -> str:
    """Locally administered unicast MAC carrying the IPv4 address: unique because addresses are."""
    b = ipaddress.IPv4Address(address).packed
    return "02:00:" + ":".join(f"{x:02x}" for x in b)


def switch_mac(dpid: int) -> str:
    return "02:fe:" + ":".join(f"{(dpid >> s) & 0xff:02x}" for s in (24, 16, 8, 0))


def describe(topo: Topology, prefix: str) -> dict:
    check_prefix(prefix)
    switches = {}
    counters = {"spine": 0, "leaf": 0}
    for sw in topo.switches:
        counters[sw.role] += 1
        idx = counters[sw.role]
        bridge = f"{prefix}-{sw.role[0]}{idx}"
        switches[sw.name] = {"name": sw.name, "role": sw.role, "bridge": bridge,
                             "dpid": DPID_BASE[sw.role] + idx, "ports": {}}
    servers = {}
    for i, srv in enumerate(topo.servers, 1):
        servers[srv.name] = {"name": srv.name, "ip": srv.address, "mac": server_mac(srv.address),
                             "intf": f"{prefix}-h{i}", "leaf": None, "leaf_port": None}
    next_port = {name: 1 for name in switches}
    links = []
    for a, b in topo.links:
        if a in servers or b in servers:
            srv, leaf = (a, b) if a in servers else (b, a)
            port = next_port[leaf]
            next_port[leaf] += 1
            servers[srv]["leaf"] = leaf
            servers[srv]["leaf_port"] = port
            switches[leaf]["ports"][str(port)] = {"kind": "server", "peer": srv,
                                                  "intf": f"{switches[leaf]['bridge']}p{port}"}
            links.append({"a": leaf, "a_port": port, "b": srv, "b_port": 0})
            continue
        pa, pb = next_port[a], next_port[b]
        next_port[a] += 1
        next_port[b] += 1
        switches[a]["ports"][str(pa)] = {"kind": "fabric", "peer": b, "peer_port": pb,
                                         "intf": f"{switches[a]['bridge']}p{pa}"}
        switches[b]["ports"][str(pb)] = {"kind": "fabric", "peer": a, "peer_port": pa,
                                         "intf": f"{switches[b]['bridge']}p{pb}"}
        links.append({"a": a, "a_port": pa, "b": b, "b_port": pb})
    gw = None
    if topo.gateway is not None:        # on its leaf like a server (testbed/gateway.py)
        leaf = switches[topo.gateway.leaf]
        port = next_port[leaf["name"]]
        next_port[leaf["name"]] += 1        # a bare-metal host on the same leaf takes the next port
        leaf["ports"][str(port)] = {"kind": "server", "peer": topo.gateway.name, "intf": f"{leaf['bridge']}p{port}"}
        gw = gateway.describe(topo.gateway, prefix, port, server_mac(topo.gateway.address))
        gw["leaf_intf"] = leaf["ports"][str(port)]["intf"]
    bms = []
    for i, host in enumerate(topo.baremetal, 1):     # on its leaf like a server (testbed/baremetal.py)
        leaf = switches[host.leaf]
        port = next_port[leaf["name"]]
        next_port[leaf["name"]] += 1
        leaf["ports"][str(port)] = {"kind": "server", "peer": host.name, "intf": f"{leaf['bridge']}p{port}"}
        intf = leaf["ports"][str(port)]["intf"]
        bms.append(baremetal.describe(host, i, prefix, port, intf, server_mac(host.address)))
    for sw in switches.values():
        sw["mac"] = switch_mac(sw["dpid"])
        for p in sw["ports"].values():
            if len(p["intf"]) > IFNAMSIZ:
                raise FabricError(f"interface name {p['intf']!r} is longer than {IFNAMSIZ} characters: "
                                  f"use a shorter prefix or fewer ports per switch")
    return {"prefix": prefix, "topology": topo.name, "underlay": topo.underlay,
            "switches": list(switches.values()), "servers": list(servers.values()), "links": links,
            **({"gateway": gw} if gw is not None else {}), **({"baremetal": bms} if bms else {})}


def write(desc: dict, path: Path) -> None:
    write_json(Path(path), desc)


def read(path: Path) -> dict:
    return json.loads(Path(path).read_text())
