"""vrouter configuration: validated once, then read by the pipeline and the slow path.

``VrouterConfig.from_dict`` accepts the plain dict documented in docs/vrouter-core-api.md (what the
agent receives from the controller, or a YAML file for replay) and raises :class:`ConfigError` with a
one-line message naming the offending field. The overlay items (networks, the VIFs' addresses and
MACs, policies, the flow mode) follow the overlay schema (``schema``), the rules topology files and
the VNC's run-time changes follow too; this module adds what only a vrouter has: its underlay
address, routes and next hops, peers and flow table settings. A service (vrouter/core/ecmp.py) is a
route to a composite next hop whose members are VIF or tunnel next hops, each named by its member
VM; a VIF that is a member lists the service addresses it may send from (``services``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, TypeVar

from . import floodschema, links, mirrorschema, natschema, schema
from .codec.ethernet import mac_to_bytes, mac_to_str
from .codec.ipv4 import int_to_ip
from .schema import DEFAULT_ENCAP, Network, Policy, Prefix, Problems, Rule

__all__ = ["ConfigError", "FlowSettings", "NEXTHOP_TYPES", "Network", "Policy", "Route", "Rule",
           "VROUTER_MAC", "Vif", "VrouterConfig"]

VROUTER_MAC = bytes.fromhex("00005e000100")
NEXTHOP_TYPES = ("vif", "tunnel", "discard", "receive", "composite")
MEMBER_TYPES = ("vif", "tunnel")     # what a composite next hop's members may be

T = TypeVar("T")


class ConfigError(ValueError):
    """Invalid vrouter configuration; the message is one line and names the field."""


# A config is refused whole at its first problem.
_FIRST = Problems(ConfigError)


@dataclass(frozen=True)
class Vif:
    name: str
    network: str
    mac: bytes
    ip: int
    flow_limit: int | None = None   # its own flow-entry limit; None: flow.vm_flow_limit
    services: tuple[int, ...] = ()  # service addresses it may send from (it is one of their members)


@dataclass(frozen=True)
class Route:
    network: str
    prefix: Prefix
    nexthop: dict[str, Any]     # normalised: {"type": ..., plus type-specific fields}


@dataclass(frozen=True)
class FlowSettings:
    """The flow table's sizes, timeouts and protections (docs/vrouter-core.md, "Flow table under
    pressure"). The two flow limits default to a share of the capacity when they are not given (0)."""
    capacity: int = 65536
    idle_timeout: float = 180.0
    hold_queue: int = 3
    mode: str = "proactive"
    hold_timeout: float = 2.0       # a decision that takes longer is considered lost
    close_timeout: float = 10.0     # TCP pairs that saw FIN both ways but never the last ACK
    closed_linger: float = 2.0      # a finished TCP pair still answers late ACKs/retransmissions
    fragment_capacity: int = 1024
    fragment_timeout: float = 30.0
    vm_flow_limit: int = 0          # entries one VM interface may own; 0: capacity // 4
    network_flow_limit: int = 0     # entries one network may hold; 0: capacity // 2
    resume_fraction: float = 0.9    # an owner over its limit is refused until back under this share
    unreplied_timeout: float = 10.0  # a pair whose reverse never saw a packet goes after this idle time
    held_limit: int = 4096          # held (undecided) entries in the table
    vm_held_limit: int = 256        # held entries one VM interface may own
    setup_rate: float = 0.0         # punts per second to the agent (token bucket); 0: no cap
    burst_tokens: int = 256         # the token bucket's size
    records: bool = False           # a record per ended pair (core/flowrecords.py); off: ~11 us per ended pair

    def __post_init__(self) -> None:
        if not self.vm_flow_limit:
            object.__setattr__(self, "vm_flow_limit", max(1, self.capacity // 4))
        if not self.network_flow_limit:
            object.__setattr__(self, "network_flow_limit", max(1, self.capacity // 2))


@dataclass(frozen=True)
class VrouterConfig:
    server: str
    underlay_ip: str
    encapsulation: str
    networks: tuple[Network, ...]
    vifs: tuple[Vif, ...]
    routes: tuple[Route, ...]
    peers: frozenset[str]
    policies: tuple[Policy, ...]
    flow: FlowSettings = field(default_factory=FlowSettings)
    nat: natschema.NatSettings | None = None     # floating IPs and source NAT (core/nat.py)
    # network -> the networks its policy connects it to (schema.connections): their routes are here too
    connected: dict[str, frozenset[str]] = field(default_factory=dict)
    mirrors: tuple[mirrorschema.VrouterSession, ...] = ()       # mirror sessions (core/mirror.py)
    source: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
    flood: floodschema.FloodConfig | None = None     # flood lists and storm limit (core/flood.py)

    @classmethod
    def from_dict(cls, d: object) -> VrouterConfig:
        return _parse(d)

    def to_dict(self) -> dict[str, Any]:
        """The dict this config was built from (plain values, msgpack-serialisable)."""
        return self.source

    def network(self, name: str) -> Network:
        return next(n for n in self.networks if n.name == name)


_TOP = ("server", "underlay_ip", "encapsulation", "networks", "vifs", "routes", "peers", "policies",
        "flow", "nat", "flood", "mirrors")


def _ok(value: T | None) -> T:
    """A checked value: with `_FIRST` a check raises rather than return None."""
    assert value is not None
    return value


def _parse(d: object) -> VrouterConfig:
    if not isinstance(d, dict):
        raise ConfigError("config: expected a mapping at the top level")
    schema.no_unknown(_FIRST, "", d, _TOP)
    encap = _ok(schema.encapsulation(_FIRST, "encapsulation", d.get("encapsulation", DEFAULT_ENCAP)))
    server = _str(d.get("server", "vrouter"), "server")
    underlay = _ok(schema.address(_FIRST, "underlay_ip", d.get("underlay_ip")))
    names: dict[str, str] = {}
    ids: dict[int, str] = {}
    networks = [_ok(schema.network(_FIRST, f"networks[{i}]", n, encap, names, ids))
                for i, n in enumerate(_list(d, "networks"))]
    by_name = {n.name: n for n in networks}
    vifs = _vifs(_list(d, "vifs"), by_name, server)
    peers = {int_to_ip(_ok(schema.address(_FIRST, f"peers[{i}]", p))) for i, p in enumerate(_list(d, "peers"))}
    with_policy: dict[str, str] = {}
    policies = [_ok(schema.policy(_FIRST, f"policies[{i}]", p, by_name, with_policy, partial=True))
                for i, p in enumerate(_list(d, "policies"))]
    connected = links.connections(_FIRST, [(f"policies[{i}]", p) for i, p in enumerate(policies)], by_name)
    routes = _routes(_list(d, "routes"), by_name, {v.name: v for v in vifs}, encap, connected)
    peers.update(nh["peer"] for r in routes for nh in r.nexthop.get("members", [r.nexthop])
                 if nh["type"] == "tunnel")
    nat = None if d.get("nat") is None else natschema.vrouter_nat(
        _FIRST, "nat", d["nat"], [v.name for v in vifs], list(by_name))
    flood = None if d.get("flood") is None else floodschema.vrouter_flood(
        _FIRST, "flood", d["flood"], by_name, int_to_ip(underlay))
    peers.update(flood.peers if flood is not None else ())     # a flood endpoint is a peer too
    mirrors = mirrorschema.vrouter_sessions(_FIRST, "mirrors", d.get("mirrors"), [v.name for v in vifs], list(by_name))
    return VrouterConfig(server, int_to_ip(underlay), encap, tuple(networks), tuple(vifs), tuple(routes),
                         frozenset(peers), tuple(policies), _flow(d.get("flow")), nat, connected, mirrors, d, flood)


def _vifs(raw: list[Any], by_name: dict[str, Network], server: str) -> list[Vif]:
    """The VIFs are this server's VMs: their addresses and MACs follow the VMs' rules."""
    vifs: list[Vif] = []
    names: set[str] = set()
    index = schema.VmIndex()
    for i, v in enumerate(raw):
        where = f"vifs[{i}]"
        m = _ok(schema.mapping(_FIRST, where, v, ("name", "network", "mac", "ip", "flow_limit", "services")))
        name = _str(m.get("name"), f"{where}.name")
        if name in names:
            raise ConfigError(f"{where}.name: duplicate vif {name!r}")
        names.add(name)
        net = by_name[_ok(schema.reference(_FIRST, f"{where}.network", m.get("network"), by_name,
                                           "virtual network"))]
        mac = _ok(schema.mac(_FIRST, f"{where}.mac", m.get("mac")))
        ip = _ok(schema.vm_address(_FIRST, f"{where}.ip", m.get("ip"), net))
        index.claim(_FIRST, where, schema.Vm(name, net.name, server, ip, mac), where, ("ip", "mac"))
        limit = schema.flow_limit(_FIRST, f"{where}.flow_limit", m.get("flow_limit"))
        services = tuple(_ok(schema.vm_address(_FIRST, f"{where}.services[{j}]", a, net))
                         for j, a in enumerate(_list(m, "services")))
        vifs.append(Vif(name, net.name, mac_to_bytes(mac), ip, limit, services))
    return vifs


def _routes(raw: list[Any], by_name: dict[str, Network], vifs: dict[str, Vif],
            encap: str, connected: dict[str, frozenset[str]]) -> list[Route]:
    routes: list[Route] = []
    seen: set[tuple[str, Prefix]] = set()
    for i, r in enumerate(raw):
        where = f"routes[{i}]"
        m = _ok(schema.mapping(_FIRST, where, r, ("network", "prefix", "nexthop")))
        net = by_name[_ok(schema.reference(_FIRST, f"{where}.network", m.get("network"), by_name,
                                           "virtual network"))]
        prefix = _ok(schema.prefix(_FIRST, f"{where}.prefix", m.get("prefix")))
        if (net.name, prefix) in seen:
            raise ConfigError(f"{where}.prefix: duplicate route {m.get('prefix')} in network {net.name!r}")
        seen.add((net.name, prefix))
        nexthop = _nexthop(m.get("nexthop"), f"{where}.nexthop", net, vifs, encap, connected.get(net.name, ()))
        routes.append(Route(net.name, prefix, nexthop))
    return routes


def _flow(f: object) -> FlowSettings:
    if f is None:
        return FlowSettings()
    return FlowSettings(**_ok(schema.flow_settings(_FIRST, "flow", f)))


def _nexthop(nh: object, where: str, net: Network, vifs: dict[str, Vif], default_encap: str,
             connected: frozenset[str] | tuple[()] = (), kinds: tuple[str, ...] = NEXTHOP_TYPES) -> dict[str, Any]:
    if not isinstance(nh, dict):
        raise ConfigError(f"{where}: expected a mapping with a type")
    kind = nh.get("type")
    if kind not in kinds:
        raise ConfigError(f"{where}.type: {kind!r} is not one of {', '.join(kinds)}")
    if kind == "composite":
        return _composite(nh, where, net, vifs, default_encap)
    if kinds is MEMBER_TYPES:       # a member: its VM's name, then the next hop itself
        member = schema.name(_FIRST, f"{where}.member", nh.get("member"))
        rest = _nexthop({k: v for k, v in nh.items() if k != "member"}, where, net, vifs, default_encap)
        return {"member": member, **rest}
    if kind == "vif":
        schema.no_unknown(_FIRST, where, nh, ("type", "vif"))
        name = nh.get("vif")
        if name not in vifs:
            raise ConfigError(f"{where}.vif: unknown vif {name!r}")
        if vifs[name].network != net.name and vifs[name].network not in connected:
            raise ConfigError(f"{where}.vif: vif {name!r} belongs to network {vifs[name].network!r}, not {net.name!r} "
                              f"nor a network connected to it")
        return {"type": "vif", "vif": name}
    if kind == "tunnel":
        schema.no_unknown(_FIRST, where, nh, ("type", "peer", "label", "encap", "mac", "probe"))
        encap = _ok(schema.encapsulation(_FIRST, f"{where}.encap", nh.get("encap", default_encap)))
        label = schema.network_id(_FIRST, f"{where}.label", nh.get("label", net.id), encap)
        mac = None if nh.get("mac") is None else schema.mac(_FIRST, f"{where}.mac", nh["mac"])
        peer = _ok(schema.address(_FIRST, f"{where}.peer", nh.get("peer")))
        if nh.get("probe", True) is not True and nh["probe"] is not False:
            raise ConfigError(f"{where}.probe: expected true or false, got {nh['probe']!r}")
        # probe false: the peer runs no path repair (a bare-metal host's VTEP), its paths are not probed
        return {"type": "tunnel", "peer": int_to_ip(peer), "label": label, "encap": encap,
                "mac": mac or mac_to_str(VROUTER_MAC), **({"probe": False} if nh.get("probe") is False else {})}
    schema.no_unknown(_FIRST, where, nh, ("type",))
    return {"type": kind}


def _composite(nh: dict[str, Any], where: str, net: Network, vifs: dict[str, Vif],
               default_encap: str) -> dict[str, Any]:
    """A service's next hop: its name and its members (docs/vrouter-core.md, "Services")."""
    schema.no_unknown(_FIRST, where, nh, ("type", "service", "members"))
    service = schema.name(_FIRST, f"{where}.service", nh.get("service"))
    raw = _list(nh, "members")
    if not raw:
        raise ConfigError(f"{where}.members: expected a non-empty list of member next hops")
    members = [_nexthop(m, f"{where}.members[{j}]", net, vifs, default_encap, kinds=MEMBER_TYPES)
               for j, m in enumerate(raw)]
    names = [m["member"] for m in members]
    if len(set(names)) != len(names):
        raise ConfigError(f"{where}.members: duplicate member in {', '.join(names)}")
    return {"type": "composite", "service": service, "members": members}


def _list(d: dict[str, Any], key: str) -> list[Any]:
    return schema.items(_FIRST, key, d.get(key))


def _str(value: object, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: expected a non-empty string, got {value!r}")
    return value
