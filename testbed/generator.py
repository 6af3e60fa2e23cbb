"""Leaf-spine topology generator: parameters in, a topology document (dict / YAML) out, so a
researcher gets a large scenario (fabric and overlay) in one command (`testbed gen`).

Leaf i gets the underlay block 10.0.i.0/24 of 10.0.0.0/16 and its servers the hosts .1, .2, ...,
so an address says which leaf a server hangs off (handy when reading captures).
The overlay (`overlay()`): network k is `net<k>` with id 100*k (a valid MPLS label and VNI) and
the subnet 10.k.0.0/16 (gateway 10.k.0.1); VM j of network k on server srv<i> is `net<k>-srv<i>-<j>`
at 10.k.i.j while there are at most 255 servers and 254 VMs per server and network, so an address
says where its VM runs; bigger shapes number the VMs in order from 10.k.0.2 on.
"""
from __future__ import annotations

import ipaddress

import yaml

from vrouter.core.schema import DEFAULT_ENCAP, ENCAPS

MAX_LEAVES = 255
MAX_SERVERS_PER_LEAF = 254
MAX_SPINES = 64
MAX_NETWORKS = 255          # network k's subnet is 10.k.0.0/16
NETWORK_ID_STEP = 100       # network k's id: 100, 200, ... (as in topologies/default.yaml)
SUBNET_HOSTS = (1 << 16) - 3   # a /16's hosts less its gateway: the most VMs one network can hold
READABLE_SERVERS, READABLE_VMS = 255, 254   # up to these, VM j of srv<i> is 10.k.i.j
MAX_VMS = 1 << 16           # VMs in all: each is a namespace and a shell, far more would not come up


class GeneratorError(ValueError):
    pass


def _check_range(label: str, value: object, lo: int, hi: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise GeneratorError(f"{label} must be an integer in {lo}..{hi}, got {value!r}")


def leaf_spine(spines: int, leaves: int, servers_per_leaf: int, name: str | None = None) -> dict:
    """Topology document for a full-mesh leaf-spine fabric (every leaf links to every spine)."""
    for label, value, lo, hi in (("spines", spines, 1, MAX_SPINES), ("leaves", leaves, 1, MAX_LEAVES),
                                 ("servers per leaf", servers_per_leaf, 1, MAX_SERVERS_PER_LEAF)):
        _check_range(label, value, lo, hi)
    doc = {
        "name": name or f"ls{spines}x{leaves}x{servers_per_leaf}",
        "underlay": "10.0.0.0/16",
        "switches": [{"name": f"spine{s}", "role": "spine"} for s in range(1, spines + 1)]
        + [{"name": f"leaf{leaf}", "role": "leaf"} for leaf in range(1, leaves + 1)],
        "servers": [],
        "links": [],
    }
    for leaf in range(1, leaves + 1):
        for s in range(1, spines + 1):
            doc["links"].append([f"leaf{leaf}", f"spine{s}"])
    n = 0
    for leaf in range(1, leaves + 1):
        for k in range(1, servers_per_leaf + 1):
            n += 1
            doc["servers"].append({"name": f"srv{n}", "address": f"10.0.{leaf}.{k}"})
            doc["links"].append([f"srv{n}", f"leaf{leaf}"])
    return doc


def overlay(doc: dict, networks: int, vms_per_server: int = 1, encapsulation: str | None = None) -> dict:
    """`doc` (a leaf_spine document) with `networks` virtual networks and, on every server,
    `vms_per_server` VMs of each network (plan: the module's docstring)."""
    _check_range("networks", networks, 1, MAX_NETWORKS)
    _check_range("VMs per server", vms_per_server, 1, SUBNET_HOSTS)
    if encapsulation is not None and encapsulation not in ENCAPS:
        raise GeneratorError(f"encapsulation must be one of {', '.join(ENCAPS)}, got {encapsulation!r}")
    servers = [s["name"] for s in doc["servers"]]
    per_network = vms_per_server * len(servers)
    if per_network > SUBNET_HOSTS:
        raise GeneratorError(f"{vms_per_server} VMs per server on {len(servers)} servers is {per_network} VMs "
                             f"per network: more than the {SUBNET_HOSTS} addresses of its /16 subnet")
    total = networks * per_network
    if total > MAX_VMS:
        raise GeneratorError(f"{networks} networks x {vms_per_server} VMs per server x {len(servers)} servers "
                             f"is {total} VMs: more than the {MAX_VMS} the generator makes")
    readable = len(servers) <= READABLE_SERVERS and vms_per_server <= READABLE_VMS
    out = dict(doc, encapsulation=encapsulation or DEFAULT_ENCAP, virtual_networks=[], vms=[])
    for k in range(1, networks + 1):
        subnet = ipaddress.IPv4Network(f"10.{k}.0.0/16")
        base = int(subnet.network_address)
        net = f"net{k}"
        out["virtual_networks"].append({"name": net, "id": NETWORK_ID_STEP * k, "subnets": [str(subnet)]})
        for i, server in enumerate(servers, 1):
            for j in range(1, vms_per_server + 1):
                offset = (i << 8) + j if readable else 1 + (i - 1) * vms_per_server + j
                out["vms"].append({"name": f"{net}-{server}-{j}", "network": net, "server": server,
                                   "address": str(ipaddress.IPv4Address(base + offset))})
    return out


class _FlowListDumper(yaml.SafeDumper):
    """Block style for the document, flow style for small leaves ({name:..}, [a, b]): one line each."""


def _flat(value) -> bool:
    return not isinstance(value, (dict, list))


def _represent_dict(dumper, data):
    flow = all(_flat(v) or (isinstance(v, list) and all(map(_flat, v))) for v in data.values())
    return dumper.represent_mapping("tag:yaml.org,2002:map", data.items(), flow_style=flow)


def _represent_list(dumper, data):
    flow = all(map(_flat, data))
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_FlowListDumper.add_representer(dict, _represent_dict)
_FlowListDumper.add_representer(list, _represent_list)


def to_yaml(doc: dict) -> str:
    return yaml.dump(doc, Dumper=_FlowListDumper, sort_keys=False, width=120)
