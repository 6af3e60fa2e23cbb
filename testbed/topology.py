"""Topology files: load YAML, check every rule of docs/topology-format.md, return a Topology.

Validation collects every problem (never stops at the first) and reports each one as
`FILE: place.in.document: what is wrong`, so a user fixes a file in one pass.
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ENCAPSULATIONS = ("mplsoudp", "mplsogre", "vxlan")
# MPLS labels 0..15 are reserved; VNIs are 24 bits with 0 unused.
ID_RANGES = {"mplsoudp": (16, 1048575), "mplsogre": (16, 1048575), "vxlan": (1, 16777215)}
PROTOCOLS = ("any", "tcp", "udp", "icmp")
ROLES = ("spine", "leaf")
NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,31}$")
MAC_RE = re.compile(r"^([0-9a-fA-F]{2}:){5}[0-9a-fA-F]{2}$")

TOP_KEYS = {"name", "underlay", "switches", "servers", "links",
            "encapsulation", "virtual_networks", "vms", "policies"}
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


@dataclass(frozen=True)
class Vm:
    name: str
    network: str
    server: str
    address: str
    mac: str | None = None


@dataclass(frozen=True)
class Rule:
    action: str
    protocol: str = "any"
    src: str = "0.0.0.0/0"
    dst: str = "0.0.0.0/0"
    src_port: str | None = None
    dst_port: str | None = None


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
    encapsulation: str = "mplsoudp"
    virtual_networks: list[VirtualNetwork] = field(default_factory=list)
    vms: list[Vm] = field(default_factory=list)
    policies: list[Policy] = field(default_factory=list)
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


def _ipv4(value) -> ipaddress.IPv4Address | None:
    if not isinstance(value, str):
        return None
    try:
        return ipaddress.IPv4Address(value)
    except ValueError:
        return None


def _cidr(value) -> ipaddress.IPv4Network | None:
    if not isinstance(value, str) or "/" not in value:
        return None
    try:
        return ipaddress.IPv4Network(value, strict=True)
    except ValueError:
        return None


def parse_port_range(value) -> tuple[int, int] | None:
    """`22`, `"22"` or `"1000-2000"` -> (lo, hi); None if malformed or out of 0..65535."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        lo = hi = value
    elif isinstance(value, str) and re.fullmatch(r"\s*\d+\s*(-\s*\d+\s*)?", value):
        parts = [int(x) for x in value.split("-")]
        lo, hi = parts[0], parts[-1]
    else:
        return None
    if not (0 <= lo <= hi <= 65535):
        return None
    return lo, hi


class _Validator:
    def __init__(self, doc, source, default_name):
        self.doc = doc
        self.source = source
        self.default_name = default_name
        self.problems: list[str] = []

    def bad(self, where: str, msg: str) -> None:
        self.problems.append(f"{where}: {msg}")

    def _list(self, key: str) -> list:
        value = self.doc.get(key)
        if value is None:
            return []
        if not isinstance(value, list):
            self.bad(key, f"expected a list, got {type(value).__name__}")
            return []
        return value

    def _mapping(self, where: str, item, allowed: set, required: tuple) -> dict | None:
        if not isinstance(item, dict):
            self.bad(where, f"expected a mapping with keys {', '.join(sorted(required))}, "
                            f"got {item!r}")
            return None
        for key in item:
            if key not in allowed:
                self.bad(f"{where}.{key}", f"unknown key (expected one of: {', '.join(sorted(allowed))})")
        for key in required:
            if key not in item:
                self.bad(where, f"missing required key {key!r}")
        return item

    def _name(self, where: str, value, names: dict) -> str | None:
        if not isinstance(value, str) or not NAME_RE.match(value):
            self.bad(where, f"{value!r} is not a valid name (letter, then letters, digits, '_' or '-', "
                            f"at most 32 characters)")
            return None
        if value in names:
            self.bad(where, f"duplicate name {value!r} (already used by {names[value]})")
            return None
        names[value] = where
        return value

    def run(self) -> Topology:
        doc = self.doc
        if not isinstance(doc, dict):
            raise TopologyError(self.source, ["document: expected a mapping at the top level"])
        for key in doc:
            if key not in TOP_KEYS:
                self.bad(str(key), f"unknown key (expected one of: {', '.join(sorted(TOP_KEYS))})")
        for key in REQUIRED_TOP:
            if key not in doc:
                self.bad("document", f"missing required key {key!r}")

        name = doc.get("name", self.default_name)
        if not isinstance(name, str) or not NAME_RE.match(name):
            self.bad("name", f"{name!r} is not a valid name")
        underlay = _cidr(doc.get("underlay"))
        if "underlay" in doc and underlay is None:
            self.bad("underlay", f"{doc.get('underlay')!r} is not an IPv4 network in CIDR form "
                                 f"(like 10.0.0.0/16, host bits zero)")

        names: dict[str, str] = {}
        switches = self._switches(names)
        if "switches" in doc and isinstance(doc.get("switches"), list) and not any(
                isinstance(x, dict) and x.get("role") == "leaf" for x in doc["switches"]):
            self.bad("switches", "at least one leaf is needed (servers hang off leaves)")
        servers = self._servers(names, underlay)
        links = self._links(switches, servers)
        encap = self._encapsulation()
        networks = self._networks(encap)
        vms = self._vms(names, networks, servers)
        policies = self._policies(networks)

        if self.problems:
            raise TopologyError(self.source, self.problems)
        return Topology(name=name, underlay=str(underlay), switches=switches, servers=servers,
                        links=links, encapsulation=encap, virtual_networks=networks, vms=vms,
                        policies=policies, source=self.source, raw=doc)

    def _switches(self, names) -> list[Switch]:
        out = []
        for i, item in enumerate(self._list("switches")):
            where = f"switches[{i}]"
            m = self._mapping(where, item, {"name", "role"}, ("name", "role"))
            if m is None:
                continue
            name = self._name(f"{where}.name", m.get("name"), names) if "name" in m else None
            role = m.get("role")
            if "role" in m and role not in ROLES:
                self.bad(f"{where}.role", f"{role!r} is not a role (expected spine or leaf)")
                continue
            if name and role:
                out.append(Switch(name, role))
        return out

    def _servers(self, names, underlay) -> list[Server]:
        out = []
        seen: dict[str, str] = {}
        for i, item in enumerate(self._list("servers")):
            where = f"servers[{i}]"
            m = self._mapping(where, item, {"name", "address"}, ("name", "address"))
            if m is None:
                continue
            name = self._name(f"{where}.name", m.get("name"), names) if "name" in m else None
            if "address" not in m:
                continue
            addr = _ipv4(m["address"])
            if addr is None:
                self.bad(f"{where}.address", f"{m['address']!r} is not an IPv4 address")
                continue
            if underlay is not None:
                if addr not in underlay:
                    self.bad(f"{where}.address", f"{addr} is outside the underlay {underlay}")
                    continue
                if underlay.prefixlen < 31 and addr in (underlay.network_address,
                                                        underlay.broadcast_address):
                    self.bad(f"{where}.address",
                             f"{addr} is the network or broadcast address of {underlay}")
                    continue
            if str(addr) in seen:
                self.bad(f"{where}.address", f"duplicate address {addr} (already used by {seen[str(addr)]})")
                continue
            seen[str(addr)] = where
            if name:
                out.append(Server(name, str(addr)))
        return out

    def _links(self, switches, servers) -> list[tuple[str, str]]:
        # Declared names count even when another field of their entry is invalid, so one mistake
        # is reported once and not again by every link that mentions the node.
        roles = {}
        for item in self._list("switches"):
            if isinstance(item, dict) and isinstance(item.get("name"), str):
                roles.setdefault(item["name"], item.get("role") if item.get("role") in ROLES else "invalid")
        for item in self._list("servers"):
            if isinstance(item, dict) and isinstance(item.get("name"), str):
                roles.setdefault(item["name"], "server")
        out = []
        seen: dict[frozenset, str] = {}
        server_leaf: dict[str, list[str]] = {}
        for i, item in enumerate(self._list("links")):
            where = f"links[{i}]"
            if not (isinstance(item, list) and len(item) == 2):
                self.bad(where, f"expected a pair of node names like [leaf1, spine1], got {item!r}")
                continue
            ok = True
            for j, end in enumerate(item):
                if end not in roles:
                    self.bad(f"{where}[{j}]", f"{end!r} is not a switch or server of this topology")
                    ok = False
            if not ok:
                continue
            a, b = item
            if a == b:
                self.bad(where, f"link from {a!r} to itself")
                continue
            key = frozenset(item)
            if key in seen:
                self.bad(where, f"duplicate link {a}-{b} (already at {seen[key]})")
                continue
            seen[key] = where
            pair = {roles[a], roles[b]}
            if "invalid" in pair:
                continue
            if pair == {"leaf", "spine"}:
                pass
            elif pair == {"server", "leaf"}:
                srv = a if roles[a] == "server" else b
                server_leaf.setdefault(srv, []).append(a if srv == b else b)
            else:
                self.bad(where, f"{a} ({roles[a]}) - {b} ({roles[b]}): links must join a leaf to a "
                                f"spine or a server to a leaf")
                continue
            out.append((a, b))
        for srv in [n for n, r in roles.items() if r == "server"]:
            leaves = server_leaf.get(srv, [])
            if len(leaves) != 1:
                self.bad("links", f"server {srv!r} must link to exactly one leaf, "
                                  f"links to {len(leaves)}" + (f" ({', '.join(leaves)})" if leaves else ""))
        return out

    def _encapsulation(self) -> str:
        encap = self.doc.get("encapsulation", "mplsoudp")
        if encap not in ENCAPSULATIONS:
            self.bad("encapsulation", f"{encap!r} is not an encapsulation "
                                      f"(expected one of: {', '.join(ENCAPSULATIONS)})")
            return "mplsoudp"
        return encap

    def _networks(self, encap) -> list[VirtualNetwork]:
        out = []
        names: dict[str, str] = {}
        ids: dict[int, str] = {}
        lo, hi = ID_RANGES[encap]
        for i, item in enumerate(self._list("virtual_networks")):
            where = f"virtual_networks[{i}]"
            m = self._mapping(where, item, {"name", "id", "subnets", "gateway"}, ("name", "id", "subnets"))
            if m is None:
                continue
            name = self._name(f"{where}.name", m.get("name"), names) if "name" in m else None
            vid = m.get("id")
            if "id" in m:
                if not isinstance(vid, int) or isinstance(vid, bool) or not (lo <= vid <= hi):
                    kind = "a VNI" if encap == "vxlan" else "an MPLS label"
                    self.bad(f"{where}.id", f"{vid!r} is not {kind} in {lo}..{hi} (encapsulation {encap})")
                    vid = None
                elif vid in ids:
                    self.bad(f"{where}.id", f"duplicate id {vid} (already used by {ids[vid]})")
                    vid = None
                else:
                    ids[vid] = where
            subnets = []
            raw_subnets = m.get("subnets")
            if "subnets" in m:
                if not isinstance(raw_subnets, list) or not raw_subnets:
                    self.bad(f"{where}.subnets", f"expected a non-empty list of CIDRs, got {raw_subnets!r}")
                else:
                    for j, s in enumerate(raw_subnets):
                        net = _cidr(s)
                        if net is None:
                            self.bad(f"{where}.subnets[{j}]", f"{s!r} is not an IPv4 network in CIDR form "
                                                              f"(like 192.168.1.0/24, host bits zero)")
                        else:
                            subnets.append(net)
                    for j, a in enumerate(subnets):
                        for b in subnets[j + 1:]:
                            if a.overlaps(b):
                                self.bad(f"{where}.subnets", f"{a} overlaps {b}")
            gateway = None
            if "gateway" in m:
                gw = _ipv4(m["gateway"])
                if gw is None:
                    self.bad(f"{where}.gateway", f"{m['gateway']!r} is not an IPv4 address")
                elif subnets and not any(gw in s for s in subnets):
                    self.bad(f"{where}.gateway", f"{gw} is not inside the network's subnets")
                else:
                    gateway = str(gw)
            elif subnets:
                first = subnets[0]
                gateway = str(next(first.hosts(), first.network_address))
            if name and vid is not None and subnets and gateway:
                out.append(VirtualNetwork(name, vid, tuple(str(s) for s in subnets), gateway))
        return out

    def _vms(self, names, networks, servers) -> list[Vm]:
        out = []
        nets = {n.name: n for n in networks}
        declared_nets = {item.get("name") for item in self._list("virtual_networks") if isinstance(item, dict)}
        server_names = {s.name for s in servers}
        declared_servers = {item.get("name") for item in self._list("servers") if isinstance(item, dict)}
        addrs: dict[tuple[str, str], str] = {}
        macs: dict[str, str] = {}
        for i, item in enumerate(self._list("vms")):
            where = f"vms[{i}]"
            m = self._mapping(where, item, {"name", "network", "server", "address", "mac"},
                              ("name", "network", "server", "address"))
            if m is None:
                continue
            name = self._name(f"{where}.name", m.get("name"), names) if "name" in m else None
            net_name, srv = m.get("network"), m.get("server")
            net = nets.get(net_name)
            if "network" in m and net_name not in declared_nets:
                self.bad(f"{where}.network", f"{net_name!r} is not a virtual network of this topology")
            if "server" in m and srv not in server_names and srv not in declared_servers:
                self.bad(f"{where}.server", f"{srv!r} is not a server of this topology")
            addr = None
            if "address" in m:
                addr = _ipv4(m["address"])
                if addr is None:
                    self.bad(f"{where}.address", f"{m['address']!r} is not an IPv4 address")
                elif net is not None:
                    subnets = [ipaddress.IPv4Network(s) for s in net.subnets]
                    if not any(addr in s for s in subnets):
                        self.bad(f"{where}.address", f"{addr} is outside the subnets of network "
                                                     f"{net.name} ({', '.join(net.subnets)})")
                        addr = None
                    elif str(addr) == net.gateway:
                        self.bad(f"{where}.address", f"{addr} is the gateway of network {net.name}")
                        addr = None
                    elif any(s.prefixlen < 31 and addr in (s.network_address, s.broadcast_address)
                             for s in subnets if addr in s):
                        self.bad(f"{where}.address", f"{addr} is a network or broadcast address")
                        addr = None
                    else:
                        key = (net.name, str(addr))
                        if key in addrs:
                            self.bad(f"{where}.address", f"duplicate address {addr} in network {net.name} "
                                                         f"(already used by {addrs[key]})")
                            addr = None
                        else:
                            addrs[key] = where
            mac = m.get("mac")
            if "mac" in m:
                if not isinstance(mac, str) or not MAC_RE.match(mac):
                    self.bad(f"{where}.mac", f"{mac!r} is not a MAC address like 02:00:00:00:00:01")
                    mac = None
                elif int(mac[:2], 16) & 1:
                    self.bad(f"{where}.mac", f"{mac} is a multicast MAC address")
                    mac = None
                elif mac.lower() in macs:
                    self.bad(f"{where}.mac", f"duplicate MAC {mac} (already used by {macs[mac.lower()]})")
                    mac = None
                else:
                    macs[mac.lower()] = where
                    mac = mac.lower()
            if name and net is not None and srv in server_names and addr is not None:
                out.append(Vm(name, net.name, srv, str(addr), mac))
        return out

    def _policies(self, networks) -> list[Policy]:
        out = []
        declared_nets = {item.get("name") for item in self._list("virtual_networks") if isinstance(item, dict)}
        seen: dict[str, str] = {}
        for i, item in enumerate(self._list("policies")):
            where = f"policies[{i}]"
            m = self._mapping(where, item, {"network", "default", "rules"}, ("network",))
            if m is None:
                continue
            net = m.get("network")
            if "network" in m:
                if net not in declared_nets:
                    self.bad(f"{where}.network", f"{net!r} is not a virtual network of this topology")
                elif net in seen:
                    self.bad(f"{where}.network", f"network {net!r} already has a policy ({seen[net]})")
                else:
                    seen[net] = where
            default = m.get("default", "allow")
            if default not in ("allow", "deny"):
                self.bad(f"{where}.default", f"{default!r} is not allow or deny")
            rules_raw = m.get("rules", [])
            if rules_raw is None:
                rules_raw = []
            if not isinstance(rules_raw, list):
                self.bad(f"{where}.rules", f"expected a list of rules, got {type(rules_raw).__name__}")
                rules_raw = []
            rules = []
            for j, r in enumerate(rules_raw):
                rule = self._rule(f"{where}.rules[{j}]", r)
                if rule is not None:
                    rules.append(rule)
            if isinstance(net, str):
                out.append(Policy(net, default, tuple(rules)))
        return out

    def _rule(self, where, r) -> Rule | None:
        m = self._mapping(where, r, {"action", "protocol", "src", "dst", "src_port", "dst_port"}, ("action",))
        if m is None:
            return None
        ok = True
        action = m.get("action")
        if "action" in m and action not in ("allow", "deny"):
            self.bad(f"{where}.action", f"{action!r} is not allow or deny")
            ok = False
        proto = m.get("protocol", "any")
        if proto not in PROTOCOLS:
            self.bad(f"{where}.protocol", f"{proto!r} is not a protocol (expected one of: {', '.join(PROTOCOLS)})")
            ok = False
        for key in ("src", "dst"):
            if key in m and _cidr(m[key]) is None:
                self.bad(f"{where}.{key}", f"{m[key]!r} is not an IPv4 network in CIDR form "
                                           f"(like 10.1.0.0/16 or 10.1.2.3/32, host bits zero)")
                ok = False
        ports = {}
        for key in ("src_port", "dst_port"):
            if key not in m or m[key] is None:
                continue
            rng = parse_port_range(m[key])
            if rng is None:
                self.bad(f"{where}.{key}", f"{m[key]!r} is not a port or port range like 22 or '1000-2000' "
                                           f"(0..65535, low <= high)")
                ok = False
            elif proto not in ("tcp", "udp"):
                self.bad(f"{where}.{key}", f"ports need protocol tcp or udp, not {proto!r}")
                ok = False
            else:
                ports[key] = str(rng[0]) if rng[0] == rng[1] else f"{rng[0]}-{rng[1]}"
        if not ok:
            return None
        return Rule(action=action, protocol=proto, src=m.get("src", "0.0.0.0/0"),
                    dst=m.get("dst", "0.0.0.0/0"), src_port=ports.get("src_port"),
                    dst_port=ports.get("dst_port"))
