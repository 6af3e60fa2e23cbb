"""Topology files: load YAML, check every rule of docs/topology-format.md, return a Topology.

Validation collects every problem (never stops at the first) and reports each one as
`FILE: place.in.document: what is wrong`, so a user fixes a file in one pass. The fabric (underlay,
switches, servers, links) is checked here; the overlay (encapsulation, virtual networks, VMs,
policies) by the overlay schema (vrouter/core/schema.py), the same checks the VNC applies to
run-time changes and the vrouter to its config.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from testbed import baremetal as baremetal_section
from testbed import gateway as gateway_section
from testbed.gateway import Gateway
from vrouter.core import floodschema, links, mirrorschema, natschema, schema, services
from vrouter.core.codec.ipv4 import int_to_ip, mask
from vrouter.core.schema import DEFAULT_ENCAP, Problems

ROLES = ("spine", "leaf")

TOP_KEYS = {"name", "underlay", "switches", "servers", "links",
            "encapsulation", "virtual_networks", "vms", "policies", "services", "flow", "gateway", "floating_ips",
            "snat", "baremetal", "flood", "mirrors"}
REQUIRED_TOP = ("underlay", "switches", "servers", "links")


class TopologyError(Exception):
    """Every problem found in one topology document."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        super().__init__("\n".join(f"{source}: {p}" for p in problems))


@dataclass(frozen=True)
class Switch:
    name: str
    role: str


@dataclass(frozen=True)
class Server:
    name: str
    address: str


@dataclass(frozen=True)
class VirtualNetwork:
    name: str
    id: int
    subnets: tuple[str, ...]
    gateway: str
    flow_limit: int | None = None


@dataclass(frozen=True)
class Vm:
    name: str
    network: str
    server: str
    address: str
    mac: str | None = None
    flow_limit: int | None = None


@dataclass(frozen=True)
class Rule:
    action: str
    protocol: str | int = "any"      # a name of schema.PROTOCOLS or an IP protocol number
    src: str = "0.0.0.0/0"
    dst: str = "0.0.0.0/0"
    src_port: str | None = None
    dst_port: str | None = None
    network: str | None = None      # the other network: the rule matches traffic between the two


@dataclass(frozen=True)
class Policy:
    network: str
    default: str
    rules: tuple[Rule, ...]


@dataclass
class Topology:
    name: str
    underlay: str
    switches: list[Switch]
    servers: list[Server]
    links: list[tuple[str, str]]
    encapsulation: str = DEFAULT_ENCAP
    virtual_networks: list[VirtualNetwork] = field(default_factory=list)
    vms: list[Vm] = field(default_factory=list)
    policies: list[Policy] = field(default_factory=list)
    services: list[services.Service] = field(default_factory=list)   # load-balanced addresses
    flow: dict[str, Any] = field(default_factory=dict)      # the vrouters' flow settings given here
    gateway: Gateway | None = None                          # the external side (testbed/gateway.py)
    floating_ips: dict[str, str] = field(default_factory=dict)  # VM -> floating IP
    snat: list[str] = field(default_factory=list)           # networks with source NAT
    baremetal: list[baremetal_section.BareMetalHost] = field(default_factory=list)   # hosts without a vrouter
    source: str = "<memory>"
    raw: dict = field(default_factory=dict)

    @property
    def spines(self) -> list[Switch]:
        return [s for s in self.switches if s.role == "spine"]

    @property
    def leaves(self) -> list[Switch]:
        return [s for s in self.switches if s.role == "leaf"]

    def leaf_of(self, server: str) -> str:
        leaves = {s.name for s in self.leaves}
        for a, b in self.links:
            if a == server and b in leaves:
                return b
            if b == server and a in leaves:
                return a
        raise KeyError(server)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.raw, sort_keys=False)


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that reports duplicate mapping keys instead of silently keeping the last one."""

    duplicates: list[str]


def _construct_mapping(loader, node, deep=False):
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            loader.duplicates.append(
                f"line {key_node.start_mark.line + 1}: duplicate key {key!r}")
        seen.add(key)
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def parse_yaml(text: str, source: str):
    loader = _UniqueKeyLoader(text)
    loader.duplicates = []
    try:
        doc = loader.get_single_data()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1} column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise TopologyError(source, [f"{where}YAML syntax error: {problem}"]) from None
    finally:
        loader.dispose()
    if loader.duplicates:
        raise TopologyError(source, loader.duplicates)
    return doc


def load(path: str | Path) -> Topology:
    """Read and validate a topology file; raises TopologyError listing every problem."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise TopologyError(str(path), [f"cannot read file: {exc.strerror}"]) from None
    doc = parse_yaml(text, str(path))
    return from_dict(doc, source=str(path), default_name=p.stem)


def from_dict(doc, source: str = "<memory>", default_name: str = "topology") -> Topology:
    return _Validator(doc, source, default_name).run()


class _Validator:
    def __init__(self, doc: Any, source: str, default_name: str) -> None:
        self.doc = doc
        self.source = source
        self.default_name = default_name
        self.p = Problems()
        # Every declared network, valid or not (None): a VM or policy naming an invalid one is not
        # reported again as naming an unknown network.
        self.networks: dict[str, schema.Network | None] = {}

    def bad(self, where: str, msg: str) -> None:
        self.p.add(where, msg)

    def _list(self, key: str) -> list[Any]:
        return schema.items(self.p, key, self.doc.get(key))

    def _mapping(self, where: str, item: Any, allowed: set[str] | tuple[str, ...],
                 required: tuple[str, ...]) -> dict[Any, Any] | None:
        return schema.mapping(self.p, where, item, allowed, required)

    def _declared(self, key: str) -> list[str]:
        """Names of a section's entries, even of entries with another invalid field."""
        return [item["name"] for item in self._list(key)
                if isinstance(item, dict) and isinstance(item.get("name"), str)]

    def run(self) -> Topology:
        doc = self.doc
        if not isinstance(doc, dict):
            raise TopologyError(self.source, ["document: expected a mapping at the top level"])
        schema.no_unknown(self.p, "", doc, TOP_KEYS)
        for key in REQUIRED_TOP:
            if key not in doc:
                self.bad("document", f"missing required key {key!r}")

        name = doc.get("name", self.default_name)
        if not isinstance(name, str) or not schema.NAME_RE.fullmatch(name):
            self.bad("name", f"{name!r} is not a valid name")
        underlay = schema.prefix(self.p, "underlay", doc["underlay"], "10.0.0.0/16") \
            if "underlay" in doc else None

        names: dict[str, str] = {}
        switches = self._switches(names)
        if "switches" in doc and isinstance(doc.get("switches"), list) and not any(
                isinstance(x, dict) and x.get("role") == "leaf" for x in doc["switches"]):
            self.bad("switches", "at least one leaf is needed (servers hang off leaves)")
        servers = self._servers(names, underlay)
        links = self._links()
        encap = schema.encapsulation(self.p, "encapsulation", doc.get("encapsulation", DEFAULT_ENCAP))
        networks = self._networks(encap or DEFAULT_ENCAP)
        vms = self._vms(names)
        policies = self._policies()
        svcs = self._services(vms)
        self._mirrors(vms)
        flow = schema.flow_settings(self.p, "flow", doc["flow"]) if "flow" in doc else {}
        gw, fips, snat = self._nat(names, underlay, vms)
        bms = self._baremetal(names, underlay, vms, svcs, gw)
        if "flood" in doc:      # the storm limit (vrouter/core/floodschema.py); the VNC reads it from raw
            floodschema.settings(self.p, "flood", doc["flood"])

        if self.p.lines:
            raise TopologyError(self.source, self.p.lines)
        assert underlay is not None and encap is not None     # else a problem was reported
        return Topology(name=name, underlay=schema.prefix_text(underlay), switches=switches,
                        servers=servers, links=links, encapsulation=encap, virtual_networks=networks,
                        vms=vms, policies=policies, services=svcs, flow=flow or {}, gateway=gw, floating_ips=fips,
                        snat=snat, baremetal=bms, source=self.source, raw=doc)

    def _nat(self, names: dict[str, str], underlay: schema.Prefix | None,
             vms: list[Vm]) -> tuple[Gateway | None, dict[str, str], list[str]]:
        """The gateway (fabric side, testbed/gateway.py), floating IPs and source NAT (natschema)."""
        doc = self.doc
        if "gateway" not in doc:
            for key in ("floating_ips", "snat"):
                if key in doc:
                    self.bad(key, "needs a gateway section (the way out of the virtual networks)")
            return None, {}, []
        leaves = {s["name"] for s in self._list("switches") if isinstance(s, dict) and s.get("role") == "leaf"}
        servers = self._declared("servers")
        addresses = {schema.parse_address(s.get("address")): s.get("name") for s in self._list("servers")
                     if isinstance(s, dict)}
        gw = gateway_section.check(self.p, doc["gateway"], names, leaves, underlay, addresses, len(servers))
        if gw is None:
            return None, {}, []
        floating = schema.parse_cidr(gw.floating)
        assert floating is not None
        snat = {natschema.snat_address(floating, i): s for i, s in enumerate(servers, 1)}
        fips = natschema.floating_ips(self.p, "floating_ips", doc.get("floating_ips"), [vm.name for vm in vms],
                                      floating, snat)
        nets = natschema.snat_networks(self.p, "snat", doc.get("snat"), list(self.networks))
        return gw, {f.vm: int_to_ip(f.address) for f in fips}, nets

    def _baremetal(self, names: dict[str, str], underlay: schema.Prefix | None, vms: list[Vm],
                   svcs: list[services.Service], gw: Gateway | None) -> list[baremetal_section.BareMetalHost]:
        """Bare-metal hosts (testbed/baremetal.py): their overlay side is the schema's, their fabric side
        (leaf, underlay address: no server's or the gateway's) checked there."""
        leaves = {s["name"] for s in self._list("switches") if isinstance(s, dict) and s.get("role") == "leaf"}
        addresses = {schema.parse_address(s.get("address")): f"server {s.get('name')!r}"
                     for s in self._list("servers") if isinstance(s, dict)}
        if gw is not None:
            addresses[schema.parse_address(gw.address)] = f"gateway {gw.name!r}"
        taken = {(v.network, schema.parse_address(v.address)): f"VM {v.name!r}" for v in vms}
        taken.update({(s.network, s.address): f"service {s.name!r}" for s in svcs})
        macs = {(v.network, v.mac or schema.default_mac(v.name)): f"VM {v.name!r}" for v in vms}
        return baremetal_section.check(self.p, self.doc.get("baremetal"), self.networks, names, leaves, underlay,
                                       addresses, taken, macs)

    def _switches(self, names: dict[str, str]) -> list[Switch]:
        out = []
        for i, item in enumerate(self._list("switches")):
            where = f"switches[{i}]"
            m = self._mapping(where, item, ("name", "role"), ("name", "role"))
            if m is None:
                continue
            name = schema.name(self.p, f"{where}.name", m["name"], names) if "name" in m else None
            role = schema.choice(self.p, f"{where}.role", m["role"], ROLES, "a role") if "role" in m else None
            if name and role:
                out.append(Switch(name, role))
        return out

    def _servers(self, names: dict[str, str], underlay: schema.Prefix | None) -> list[Server]:
        out = []
        seen: dict[int, str] = {}
        for i, item in enumerate(self._list("servers")):
            where = f"servers[{i}]"
            m = self._mapping(where, item, ("name", "address"), ("name", "address"))
            if m is None:
                continue
            name = schema.name(self.p, f"{where}.name", m["name"], names) if "name" in m else None
            addr = schema.address(self.p, f"{where}.address", m["address"]) if "address" in m else None
            if addr is None:
                continue
            text = int_to_ip(addr)
            if underlay is not None:
                net, plen = underlay
                if not schema.inside(addr, underlay):
                    self.bad(f"{where}.address", f"{text} is outside the underlay {schema.prefix_text(underlay)}")
                    continue
                if plen < 31 and addr in (net, net | ~mask(plen) & 0xFFFFFFFF):
                    self.bad(f"{where}.address",
                             f"{text} is the network or broadcast address of {schema.prefix_text(underlay)}")
                    continue
            if addr in seen:
                self.bad(f"{where}.address", f"duplicate address {text} (already used by {seen[addr]})")
                continue
            seen[addr] = where
            if name:
                out.append(Server(name, text))
        return out

    def _links(self) -> list[tuple[str, str]]:
        # Declared names count even when another field of their entry is invalid, so one mistake
        # is reported once and not again by every link that mentions the node.
        roles: dict[str, str] = {}
        for item in self._list("switches"):
            if isinstance(item, dict) and isinstance(item.get("name"), str):
                roles.setdefault(item["name"], item.get("role") if item.get("role") in ROLES else "invalid")
        for srv in self._declared("servers"):
            roles.setdefault(srv, "server")
        out = []
        seen: dict[frozenset[str], str] = {}
        server_leaf: dict[str, list[str]] = {}
        for i, item in enumerate(self._list("links")):
            pair = self._link(f"links[{i}]", item, roles, seen)
            if pair is None:
                continue
            a, b = pair
            if roles[a] == "server" or roles[b] == "server":
                srv, leaf = (a, b) if roles[a] == "server" else (b, a)
                server_leaf.setdefault(srv, []).append(leaf)
            out.append(pair)
        for srv in [n for n, r in roles.items() if r == "server"]:
            leaves = server_leaf.get(srv, [])
            if len(leaves) != 1:
                self.bad("links", f"server {srv!r} must link to exactly one leaf, "
                                  f"links to {len(leaves)}" + (f" ({', '.join(leaves)})" if leaves else ""))
        return out

    def _link(self, where: str, item: Any, roles: dict[str, str],
              seen: dict[frozenset[str], str]) -> tuple[str, str] | None:
        """One valid leaf-spine or server-leaf link, or None (reported, or between invalid nodes)."""
        if not (isinstance(item, list) and len(item) == 2):
            self.bad(where, f"expected a pair of node names like [leaf1, spine1], got {item!r}")
            return None
        ok = True
        for j, end in enumerate(item):
            if not isinstance(end, str) or end not in roles:
                self.bad(f"{where}[{j}]", f"{end!r} is not a switch or server of this topology")
                ok = False
        if not ok:
            return None
        a, b = item
        if a == b:
            self.bad(where, f"link from {a!r} to itself")
            return None
        key = frozenset(item)
        if key in seen:
            self.bad(where, f"duplicate link {a}-{b} (already at {seen[key]})")
            return None
        seen[key] = where
        pair = {roles[a], roles[b]}
        if "invalid" in pair:
            return None
        if pair not in ({"leaf", "spine"}, {"server", "leaf"}):
            self.bad(where, f"{a} ({roles[a]}) - {b} ({roles[b]}): links must join a leaf to a "
                            f"spine or a server to a leaf")
            return None
        return a, b

    # ---- the overlay: every check is the schema's
    def _networks(self, encap: str) -> list[VirtualNetwork]:
        out = []
        names: dict[str, str] = {}
        ids: dict[int, str] = {}
        for i, item in enumerate(self._list("virtual_networks")):
            net = schema.network(self.p, f"virtual_networks[{i}]", item, encap, names, ids)
            if isinstance(item, dict) and isinstance(item.get("name"), str):
                self.networks.setdefault(item["name"], net)
            if net is not None:
                out.append(VirtualNetwork(net.name, net.id, tuple(net.subnet_texts()), int_to_ip(net.gateway),
                                          net.flow_limit))
        return out

    def _vms(self, names: dict[str, str]) -> list[Vm]:
        out = []
        servers = set(self._declared("servers"))
        index = schema.VmIndex()
        for i, item in enumerate(self._list("vms")):
            where = f"vms[{i}]"
            vm = schema.vm(self.p, where, item, self.networks, servers, names)
            if vm is not None and index.claim(self.p, where, vm, where):
                given = vm.mac if item.get("mac") is not None else None
                out.append(Vm(vm.name, vm.network, vm.server, int_to_ip(vm.address), given, vm.flow_limit))
        return out

    def _services(self, vms: list[Vm]) -> list[services.Service]:
        declared = {v.name: schema.Vm(v.name, v.network, v.server, schema.parse_address(v.address) or 0, "")
                    for v in vms}
        taken = {(v.network, schema.parse_address(v.address) or 0): f"VM {v.name!r}" for v in vms}
        names: dict[str, str] = {}
        out = []
        for i, item in enumerate(self._list("services")):
            svc = services.service(self.p, f"services[{i}]", item, self.networks, declared, names, taken)
            if svc is not None:
                out.append(svc)
        return out

    def _mirrors(self, vms: list[Vm]) -> None:
        """Mirror sessions (vrouter/core/mirrorschema.py): checked here, kept by the VNC."""
        declared = {v.name: schema.Vm(v.name, v.network, v.server, 0, "") for v in vms}
        names: dict[str, str] = {}
        for i, item in enumerate(self._list("mirrors")):
            mirrorschema.session(self.p, f"mirrors[{i}]", item, self.networks, declared, names)

    def _policies(self) -> list[Policy]:
        out = []
        seen: dict[str, str] = {}
        parsed = []
        for i, item in enumerate(self._list("policies")):
            pol = schema.policy(self.p, f"policies[{i}]", item, self.networks, seen)
            if pol is not None:
                parsed.append((f"policies[{i}]", pol))
                rules = tuple(Rule(**r.to_dict()) for r in pol.rules)
                out.append(Policy(pol.network, pol.default, rules))
        links.connections(self.p, parsed, self.networks)
        return out
