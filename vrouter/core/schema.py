"""The overlay schema: the rules of virtual networks, VMs, policies and the flow mode, written once.

Three entry points check the overlay: topology files (testbed/topology.py lists every problem of a
file at once), the VNC's run-time changes (controllers/vnc_model.py refuses a change at its first
problem) and the vrouter config (vrouter/core/config.py, likewise). Each check here reports to a
`Problems`, which either collects or raises at the first, so the three give the same verdict in the
same words. A problem is one line, `place: what is wrong`, the place written like
`virtual_networks[1].id` or `policies[0].rules[2].protocol`.

The rules settled here (docs/topology-format.md states them for users):
- a network id is the MPLS label or the VXLAN VNI on the wire: 16..1048575 for the MPLS
  encapsulations (RFC 3032 reserves 0..15), 1..16777215 for VXLAN (VNI 0 is not used);
- subnets may overlap between networks (tenant address spaces are independent), not inside one;
- a VM's address is unique in its network, and a MAC is unique in its network and among the VMs of
  one server (a server's tools, e.g. the replay of a capture, tell its VIFs apart by source MAC);
- a rule's protocol is any, icmp, tcp, udp (any case) or an IP protocol number 0..255; ports only
  with tcp or udp (6 or 17);
- a rule may name another network (`network`): it then matches only traffic between the two, and
  two networks whose policies each have an allow rule naming the other are connected (their routes
  leak into each other's routing instances); a network and every network it connects to may not
  overlap, since one routing instance then holds all their addresses (core/links.py);
- the flow settings (a topology's `flow:` section, the VNC's, a vrouter config's `flow`) are the
  names of FLOW_KEYS with their kinds; a VM's or a network's `flow_limit` is an entry count >= 1.

Pure (a core module): plain values in, normalised values or problems out.
"""
from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Collection, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any

from .codec.ipv4 import IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, int_to_ip, ip_to_int, mask
from .codec.mpls import MAX_LABEL
from .codec.outer import ENCAPS, MPLSOUDP_PORT, VXLAN_PORT
from .codec.vxlan import MAX_VNI

__all__ = [
    "ACTIONS", "ANY_PREFIX", "DEFAULT_ENCAP", "ENCAPS", "FLOW_FRACTIONS", "FLOW_INTS", "FLOW_KEYS",
    "FLOW_MODES", "FLOW_RATES", "FLOW_SECONDS", "ID_RANGES", "MAC_RE", "MAX_FLOW_INT", "MAX_LABEL",
    "MAX_VNI", "MIN_LABEL", "MIN_VNI", "MPLSOUDP_PORT", "NAME_RE", "NETWORK_KEYS", "POLICY_KEYS",
    "PORT_PROTOCOLS", "PROTOCOLS", "RULE_KEYS", "VM_KEYS", "VXLAN_PORT",
    "Network", "Policy", "PortRange", "Prefix", "Problems", "Rule", "Vm", "VmIndex",
    "address", "choice", "default_mac", "encapsulation", "flow_limit", "flow_mode", "flow_settings",
    "inside", "items", "mac",
    "mapping", "name", "network", "network_id", "no_unknown", "parse_address", "parse_cidr", "policy",
    "port_range", "prefix", "prefix_text", "protocol", "protocol_text", "reference", "rule", "vm",
    "vm_address",
]

MIN_LABEL = 16          # RFC 3032 reserves labels 0..15
MIN_VNI = 1             # VNI 0 is left unused, so every network id is a valid label or VNI > 0
ID_RANGES: dict[str, tuple[int, int]] = {
    e: (MIN_VNI, MAX_VNI) if e == "vxlan" else (MIN_LABEL, MAX_LABEL) for e in ENCAPS}
DEFAULT_ENCAP = "mplsoudp"
FLOW_MODES = ("proactive", "reactive")
ACTIONS = ("allow", "deny")
# Names a policy may give a protocol; every other protocol is given by its number.
PROTOCOLS: dict[str, int | None] = {"any": None, "icmp": IPPROTO_ICMP, "tcp": IPPROTO_TCP,
                                    "udp": IPPROTO_UDP}
PORT_PROTOCOLS = (IPPROTO_TCP, IPPROTO_UDP)
NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,31}")
MAC_RE = re.compile(r"[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}")
_PORTS_RE = re.compile(r"\s*(\d{1,5})\s*(?:-\s*(\d{1,5})\s*)?")
ANY_PREFIX = "0.0.0.0/0"

NETWORK_KEYS = ("name", "id", "subnets", "gateway", "flow_limit")
VM_KEYS = ("name", "network", "server", "address", "mac", "flow_limit")
POLICY_KEYS = ("network", "default", "rules")
RULE_KEYS = ("action", "protocol", "src", "dst", "src_port", "dst_port", "network")

# Flow settings by kind (the defaults are vrouter/core/config.py FlowSettings'): integers with
# their minimum, positive seconds, non-negative rates, fractions in (0, 1].
MAX_FLOW_INT = 1 << 24
FLOW_INTS = {"capacity": 1, "hold_queue": 0, "fragment_capacity": 1, "vm_flow_limit": 1,
             "network_flow_limit": 1, "held_limit": 1, "vm_held_limit": 1, "burst_tokens": 1}
FLOW_SECONDS = ("idle_timeout", "hold_timeout", "close_timeout", "closed_linger", "fragment_timeout",
                "unreplied_timeout")
FLOW_RATES = ("setup_rate",)
FLOW_FRACTIONS = ("resume_fraction",)
FLOW_SWITCHES = ("records",)     # true | false (core/flowrecords.py)
FLOW_KEYS = ("mode", *FLOW_INTS, *FLOW_SECONDS, *FLOW_RATES, *FLOW_FRACTIONS, *FLOW_SWITCHES)

Prefix = tuple[int, int]        # (network address, prefix length)
PortRange = tuple[int, int]     # (low, high), inclusive


class Problems:
    """Where the checks report: collects every problem (`lines`), or raises `raise_as(line)` at the
    first when given an exception class, for callers that refuse a change or a config whole.

    A collecting caller refuses the whole document if any line was added: a check may still return
    an item it reported something about (an unknown key, overlapping subnets) so that the checks
    that depend on it (its VMs' addresses) run too and the user sees every problem at once."""

    def __init__(self, raise_as: Callable[[str], Exception] | None = None) -> None:
        self.raise_as = raise_as
        self.lines: list[str] = []

    def add(self, where: str, message: str) -> None:
        line = f"{where}: {message}"
        if self.raise_as is not None:
            raise self.raise_as(line)
        self.lines.append(line)


# ---- plain fields: each returns the normalised value, or None after reporting the problem

def _expected(choices: Sequence[str]) -> str:
    return choices[0] if len(choices) == 1 else f"{', '.join(choices[:-1])} or {choices[-1]}"


def no_unknown(p: Problems, where: str, item: Mapping[Any, object], allowed: Collection[str]) -> None:
    """Every key of `item` is one of `allowed`; an unknown one is reported at its own place."""
    for key in item:
        if key not in allowed:
            place = f"{where}.{key}" if where else str(key)
            p.add(place, f"unknown key (expected one of: {', '.join(sorted(allowed))})")


def mapping(p: Problems, where: str, item: object, allowed: Collection[str],
            required: Sequence[str] = ()) -> dict[Any, Any] | None:
    """`item` as a dict with no unknown key and every required one, or None if it is no mapping."""
    if not isinstance(item, dict):
        keys = f" with keys {', '.join(sorted(required))}" if required else ""
        p.add(where, f"expected a mapping{keys}, got {item!r}")
        return None
    no_unknown(p, where, item, allowed)
    for key in required:
        if key not in item:
            p.add(where, f"missing required key {key!r}")
    return item


def items(p: Problems, where: str, value: object) -> list[Any]:
    """A list section; absent (None) is empty."""
    if value is None:
        return []
    if not isinstance(value, list):
        p.add(where, f"expected a list, got {type(value).__name__}")
        return []
    return value


def choice(p: Problems, where: str, value: object, choices: Sequence[str], what: str) -> str | None:
    if not isinstance(value, str) or value not in choices:
        p.add(where, f"{value!r} is not {what} (expected {_expected(choices)})")
        return None
    return value


def name(p: Problems, where: str, value: object, names: MutableMapping[str, str] | None = None,
         owner: str | None = None) -> str | None:
    """A name, registered in `names` (name -> its owner, for the duplicate message) if given."""
    if not isinstance(value, str) or not NAME_RE.fullmatch(value):
        p.add(where, f"{value!r} is not a valid name (letter, then letters, digits, '_' or '-', "
                     f"at most 32 characters)")
        return None
    if names is not None:
        if value in names:
            p.add(where, f"duplicate name {value!r} (already used by {names[value]})")
            return None
        names[value] = owner or where
    return value


def reference(p: Problems, where: str, value: object, known: Collection[str], what: str) -> str | None:
    """The name of something declared elsewhere (a network, a server)."""
    if not isinstance(value, str) or value not in known:
        p.add(where, f"unknown {what} {value!r}")
        return None
    return value


def parse_address(value: object) -> int | None:
    """Dotted-quad IPv4 address in its canonical form (no leading zeros) -> int, else None."""
    if not isinstance(value, str):
        return None
    try:
        ip = ip_to_int(value)
    except ValueError:
        return None
    return ip if int_to_ip(ip) == value else None


def address(p: Problems, where: str, value: object) -> int | None:
    ip = parse_address(value)
    if ip is None:
        p.add(where, f"{value!r} is not an IPv4 address")
    return ip


def parse_cidr(value: object) -> Prefix | None:
    """'192.168.1.0/24' -> (network, length), host bits zero; else None."""
    if not isinstance(value, str) or value.count("/") != 1:
        return None
    addr, _, length = value.partition("/")
    ip = parse_address(addr)
    if ip is None or not length.isdigit() or str(int(length)) != length or int(length) > 32:
        return None
    plen = int(length)
    return (ip, plen) if ip & mask(plen) == ip else None


def prefix(p: Problems, where: str, value: object, like: str = "192.168.1.0/24") -> Prefix | None:
    net = parse_cidr(value)
    if net is None:
        p.add(where, f"{value!r} is not an IPv4 network in CIDR form (like {like}, host bits zero)")
    return net


def prefix_text(net: Prefix) -> str:
    return f"{int_to_ip(net[0])}/{net[1]}"


def inside(ip: int, net: Prefix) -> bool:
    return ip & mask(net[1]) == net[0]


def mac(p: Problems, where: str, value: object) -> str | None:
    """A unicast MAC address, in lower case."""
    if not isinstance(value, str) or not MAC_RE.fullmatch(value):
        p.add(where, f"{value!r} is not a MAC address like 02:00:00:00:00:01")
        return None
    if int(value[:2], 16) & 1:
        p.add(where, f"{value} is a multicast MAC address")
        return None
    return value.lower()


def default_mac(vm_name: str) -> str:
    """The MAC of a VM that names none: deterministic, locally administered, unicast."""
    digest = hashlib.sha256(vm_name.encode()).digest()
    return "02:" + ":".join(f"{b:02x}" for b in digest[:5])


def port_range(p: Problems, where: str, value: object) -> PortRange | None:
    """22, '22' or '1000-2000' -> (low, high) within 0..65535."""
    lo = hi = -1
    if isinstance(value, int) and not isinstance(value, bool):
        lo = hi = value
    elif isinstance(value, str) and (m := _PORTS_RE.fullmatch(value)):
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
    if not 0 <= lo <= hi <= 65535:
        p.add(where, f"{value!r} is not a port or port range like 22 or '1000-2000' "
                     f"(0..65535, low <= high)")
        return None
    return lo, hi


def protocol(p: Problems, where: str, value: object) -> tuple[bool, int | None]:
    """(valid, IP protocol number or None for any): a name of PROTOCOLS in any case, or 0..255."""
    if isinstance(value, str) and value.lower() in PROTOCOLS:
        return True, PROTOCOLS[value.lower()]
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 255:
        return True, value
    p.add(where, f"{value!r} is not a protocol (expected {', '.join(PROTOCOLS)} "
                 f"or an IP protocol number 0..255, e.g. 47 for GRE)")
    return False, None


def protocol_text(number: int | None) -> str | int:
    """The way configs write a protocol: its name if it has one, else its number."""
    if number is None:
        return "any"
    return next((n for n, v in PROTOCOLS.items() if v == number), number)


def encapsulation(p: Problems, where: str, value: object) -> str | None:
    return choice(p, where, value, ENCAPS, "an encapsulation")


def flow_mode(p: Problems, where: str, value: object) -> str | None:
    return choice(p, where, value, FLOW_MODES, "a flow mode")


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _flow_problem(key: str, value: object) -> str | None:
    """What is wrong with one flow setting other than the mode, or None."""
    if key in FLOW_INTS:
        lo = FLOW_INTS[key]
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= MAX_FLOW_INT:
            return f"expected an integer in {lo}..{MAX_FLOW_INT}, got {value!r}"
    elif key in FLOW_SECONDS:
        if not _number(value) or value <= 0:  # type: ignore[operator]  # a number by then
            return f"expected a positive number of seconds, got {value!r}"
    elif key in FLOW_SWITCHES:
        return None if isinstance(value, bool) else f"expected true or false, got {value!r}"
    elif key in FLOW_RATES:
        if not _number(value) or value < 0:  # type: ignore[operator]
            return f"expected a rate >= 0 per second (0 = no cap), got {value!r}"
    elif not _number(value) or not 0 < value <= 1:  # type: ignore[operator]
        return f"expected a fraction in (0, 1], got {value!r}"
    return None


def flow_settings(p: Problems, where: str, item: object) -> dict[str, Any] | None:
    """The flow settings given in `item` (absent ones are left to the defaults), normalised:
    seconds, rates and fractions as floats."""
    m = mapping(p, where, item, FLOW_KEYS)
    if m is None:
        return None
    out: dict[str, Any] = {}
    for key, value in m.items():
        if key == "mode":
            out[key] = flow_mode(p, f"{where}.mode", value)
        elif key in FLOW_KEYS:
            problem = _flow_problem(key, value)
            if problem is not None:
                p.add(f"{where}.{key}", problem)
            out[key] = value if key in FLOW_INTS or key in FLOW_SWITCHES or problem is not None else float(value)
    return out


def flow_limit(p: Problems, where: str, value: object) -> int | None:
    """A VM's or a network's own flow-entry limit (None: it follows the default)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_FLOW_INT:
        p.add(where, f"expected a flow-entry limit in 1..{MAX_FLOW_INT} (or null for the default), "
                     f"got {value!r}")
        return None
    return value


def network_id(p: Problems, where: str, value: object, encap: str) -> int | None:
    """A network id (or a tunnel's label) in the range of the encapsulation that carries it."""
    lo, hi = ID_RANGES[encap]
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        kind = "a VNI" if encap == "vxlan" else "an MPLS label"
        p.add(where, f"{value!r} is not {kind} in {lo}..{hi} (encapsulation {encap})")
        return None
    return value


# ---- virtual networks

@dataclass(frozen=True)
class Network:
    name: str
    id: int
    subnets: tuple[Prefix, ...]
    gateway: int
    flow_limit: int | None = None       # its own flow-entry limit; None: the vrouter's default

    def contains(self, ip: int) -> bool:
        return any(inside(ip, s) for s in self.subnets)

    def subnet_texts(self) -> list[str]:
        return [prefix_text(s) for s in self.subnets]


def _subnets(p: Problems, where: str, value: object) -> list[Prefix]:
    if not isinstance(value, list) or not value:
        p.add(where, f"expected a non-empty list of CIDRs, got {value!r}")
        return []
    nets = [prefix(p, f"{where}[{j}]", s) for j, s in enumerate(value)]
    good = [n for n in nets if n is not None]
    for j, a in enumerate(good):
        for b in good[j + 1:]:
            if inside(a[0], b) or inside(b[0], a):
                p.add(where, f"{prefix_text(a)} overlaps {prefix_text(b)}")
    return good if len(good) == len(nets) else []


def _gateway(p: Problems, where: str, value: object, subnets: list[Prefix]) -> int | None:
    if value is None:       # the first host address of the first subnet
        net, plen = subnets[0]
        return net if plen >= 31 else net + 1
    gw = address(p, where, value)
    if gw is not None and not any(inside(gw, s) for s in subnets):
        p.add(where, f"{int_to_ip(gw)} is not inside the network's subnets")
        return None
    return gw


def network(p: Problems, where: str, item: object, encap: str, names: MutableMapping[str, str],
            ids: MutableMapping[int, str]) -> Network | None:
    """One virtual network; `names` and `ids` hold those already declared (value: their place)."""
    m = mapping(p, where, item, NETWORK_KEYS, ("name", "id", "subnets"))
    if m is None:
        return None
    net_name = name(p, f"{where}.name", m["name"], names) if "name" in m else None
    vid = network_id(p, f"{where}.id", m["id"], encap) if "id" in m else None
    if vid is not None:
        if vid in ids:
            p.add(f"{where}.id", f"duplicate id {vid} (already used by {ids[vid]})")
            vid = None
        else:
            ids[vid] = where
    subnets = _subnets(p, f"{where}.subnets", m["subnets"]) if "subnets" in m else []
    gateway = _gateway(p, f"{where}.gateway", m.get("gateway"), subnets) if subnets else None
    limit = flow_limit(p, f"{where}.flow_limit", m.get("flow_limit"))
    if net_name is None or vid is None or gateway is None or (limit is None and m.get("flow_limit") is not None):
        return None
    return Network(net_name, vid, tuple(subnets), gateway, limit)


# ---- VMs

@dataclass(frozen=True)
class Vm:
    name: str
    network: str
    server: str
    address: int
    mac: str                # as given, else default_mac(name)
    flow_limit: int | None = None


def vm_address(p: Problems, where: str, value: object, net: Network) -> int | None:
    """A VM's address: inside its network, neither the gateway nor a network/broadcast address."""
    ip = address(p, where, value)
    if ip is None:
        return None
    problem = None
    if not net.contains(ip):
        problem = (f"{int_to_ip(ip)} is outside the subnets of network {net.name!r} "
                   f"({', '.join(net.subnet_texts())})")
    elif ip == net.gateway:
        problem = f"{int_to_ip(ip)} is the gateway of network {net.name!r}"
    elif any(inside(ip, s) and s[1] < 31 and ip in (s[0], s[0] | ~mask(s[1]) & 0xFFFFFFFF)
             for s in net.subnets):
        problem = f"{int_to_ip(ip)} is a network or broadcast address"
    if problem:
        p.add(where, problem)
        return None
    return ip


def vm(p: Problems, where: str, item: object, networks: Mapping[str, Network | None],
       servers: Collection[str], names: MutableMapping[str, str], owner: str | None = None) -> Vm | None:
    """One VM. `networks` maps every declared network to itself, or to None if it is invalid
    (its problem is reported already: nothing more is said about its VMs' addresses)."""
    m = mapping(p, where, item, VM_KEYS, ("name", "network", "server", "address"))
    if m is None:
        return None
    vm_name = name(p, f"{where}.name", m["name"], names, owner) if "name" in m else None
    net_name = reference(p, f"{where}.network", m["network"], networks, "virtual network") \
        if "network" in m else None
    server = reference(p, f"{where}.server", m["server"], servers, "server") if "server" in m else None
    net = networks.get(net_name) if net_name is not None else None
    ip = None
    if "address" in m:
        ip = vm_address(p, f"{where}.address", m["address"], net) if net else address(
            p, f"{where}.address", m["address"])
    vm_mac = mac(p, f"{where}.mac", m["mac"]) if m.get("mac") is not None else None
    limit = flow_limit(p, f"{where}.flow_limit", m.get("flow_limit"))
    if vm_name is None or net is None or server is None or ip is None:
        return None
    if m.get("mac") is not None and vm_mac is None or m.get("flow_limit") is not None and limit is None:
        return None
    return Vm(vm_name, net.name, server, ip, vm_mac or default_mac(vm_name), limit)


class VmIndex:
    """Addresses and MACs in use: an address is unique in its network, a MAC in its network and on
    its server (see the module's docstring)."""

    def __init__(self) -> None:
        self._addresses: dict[tuple[str, int], str] = {}
        self._macs: dict[tuple[str, str, str], str] = {}

    def claim(self, p: Problems, where: str, vm: Vm, owner: str,
              fields: tuple[str, str] = ("address", "mac")) -> bool:
        """Take `vm`'s address and MAC for `owner` (named in later duplicate messages)."""
        key = (vm.network, vm.address)
        if key in self._addresses:
            p.add(f"{where}.{fields[0]}", f"duplicate address {int_to_ip(vm.address)} in network "
                                          f"{vm.network!r} (already used by {self._addresses[key]})")
            return False
        scopes = (("in network", vm.network), ("on server", vm.server))
        for scope, scope_name in scopes:
            if (scope, scope_name, vm.mac) in self._macs:
                p.add(f"{where}.{fields[1]}", f"duplicate MAC {vm.mac} {scope} {scope_name!r} "
                                              f"(already used by {self._macs[scope, scope_name, vm.mac]})")
                return False
        self._addresses[key] = owner
        for scope, scope_name in scopes:
            self._macs[scope, scope_name, vm.mac] = owner
        return True


# ---- policies

@dataclass(frozen=True)
class Rule:
    action: str                         # "allow" | "deny"
    protocol: int | None                # IP protocol number, None = any
    src: Prefix
    dst: Prefix
    src_port: PortRange | None
    dst_port: PortRange | None
    network: str | None = None          # the other network: only traffic between the two matches

    def to_dict(self) -> dict[str, object]:
        """The rule as the vrouter config writes it (names, CIDR strings, '22' or 'lo-hi')."""
        def ports(r: PortRange | None) -> str | None:
            return None if r is None else str(r[0]) if r[0] == r[1] else f"{r[0]}-{r[1]}"
        return {"action": self.action, "protocol": protocol_text(self.protocol),
                "src": prefix_text(self.src), "dst": prefix_text(self.dst),
                "src_port": ports(self.src_port), "dst_port": ports(self.dst_port),
                **({"network": self.network} if self.network else {})}


@dataclass(frozen=True)
class Policy:
    network: str
    default: str                        # "allow" | "deny"
    rules: tuple[Rule, ...]

    def to_dict(self) -> dict[str, object]:
        return {"network": self.network, "default": self.default,
                "rules": [r.to_dict() for r in self.rules]}


def rule(p: Problems, where: str, item: object, own: str | None = None,
         named: Collection[str] | None = None) -> Rule | None:
    """One rule of network `own`'s policy; a `network` it names must be one of `named` (None: any
    valid name, for a vrouter that carries only part of the overlay)."""
    m = mapping(p, where, item, RULE_KEYS, ("action",))
    if m is None:
        return None
    other = None
    if m.get("network") is not None:
        place = f"{where}.network"
        other = name(p, place, m["network"]) if named is None else \
            reference(p, place, m["network"], named, "virtual network")
        if other is not None and other == own:
            p.add(place, f"a rule names another network, not its own ({own!r}): src and dst select "
                         f"traffic inside it")
            other = None
        if other is None:
            return None
    action = choice(p, f"{where}.action", m["action"], ACTIONS, "an action") if "action" in m else None
    known, proto = protocol(p, f"{where}.protocol", m.get("protocol", "any"))
    ok = known
    src = prefix(p, f"{where}.src", m.get("src", ANY_PREFIX), "10.1.0.0/16 or 10.1.2.3/32")
    dst = prefix(p, f"{where}.dst", m.get("dst", ANY_PREFIX), "10.1.0.0/16 or 10.1.2.3/32")
    ports: dict[str, PortRange | None] = {}
    for key in ("src_port", "dst_port"):
        if m.get(key) is None:
            ports[key] = None
            continue
        ports[key] = port_range(p, f"{where}.{key}", m[key])
        if ports[key] is None:
            ok = False
        elif known and proto not in PORT_PROTOCOLS:
            p.add(f"{where}.{key}", f"ports need protocol tcp or udp, not {m.get('protocol', 'any')!r}")
            ok = False
    if action is None or not ok or src is None or dst is None:
        return None
    return Rule(action, proto, src, dst, ports["src_port"], ports["dst_port"], other)


def policy(p: Problems, where: str, item: object, networks: Collection[str],
           seen: MutableMapping[str, str], partial: bool = False) -> Policy | None:
    """One network's policy; `seen` holds the networks that have one already (value: its place).
    `partial`: the overlay seen by one vrouter, whose rules may name networks it does not carry."""
    m = mapping(p, where, item, POLICY_KEYS, ("network",))
    if m is None:
        return None
    net = reference(p, f"{where}.network", m["network"], networks, "virtual network") \
        if "network" in m else None
    if net is not None:
        if net in seen:
            p.add(f"{where}.network", f"network {net!r} already has a policy ({seen[net]})")
            net = None
        else:
            seen[net] = where
    default = choice(p, f"{where}.default", m.get("default", "allow"), ACTIONS, "a policy default")
    raw = m.get("rules")
    if raw is not None and not isinstance(raw, list):
        p.add(f"{where}.rules", f"expected a list of rules, got {type(raw).__name__}")
        return None
    rules = [rule(p, f"{where}.rules[{j}]", r, net, None if partial else networks)
             for j, r in enumerate(raw or [])]
    if net is None or default is None or any(r is None for r in rules):
        return None
    return Policy(net, default, tuple(r for r in rules if r is not None))

