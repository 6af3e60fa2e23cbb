"""vrouter configuration: validated once, then read by the pipeline and the slow path.

``VrouterConfig.from_dict`` accepts the plain dict documented in docs/vrouter-core-api.md (what the
agent receives from the controller, or a YAML file for replay) and raises :class:`ConfigError` with a
one-line message naming the offending field.
"""
from dataclasses import dataclass, field

from .codec.ethernet import mac_to_bytes, mac_to_str
from .codec.ipv4 import int_to_ip, ip_to_int, mask, parse_prefix
from .codec.mpls import MAX_LABEL
from .codec.outer import ENCAPS
from .codec.vxlan import MAX_VNI

VROUTER_MAC = bytes.fromhex("00005e000100")
PROTOCOLS = {"tcp": 6, "udp": 17, "icmp": 1, "any": None}
MODES = ("proactive", "reactive")
NEXTHOP_TYPES = ("vif", "tunnel", "discard", "receive")


class ConfigError(ValueError):
    """Invalid vrouter configuration; the message is one line and names the field."""


@dataclass(frozen=True)
class Network:
    name: str
    id: int
    subnets: tuple        # ((net, plen), ...)
    gateway: int


@dataclass(frozen=True)
class Vif:
    name: str
    network: str
    mac: bytes
    ip: int


@dataclass(frozen=True)
class Route:
    network: str
    prefix: tuple         # (net, plen)
    nexthop: dict         # normalised: {"type": ..., plus type-specific fields}


@dataclass(frozen=True)
class Rule:
    action: str           # "allow" | "deny"
    protocol: int | None
    src: tuple
    dst: tuple
    src_port: tuple | None  # (lo, hi)
    dst_port: tuple | None


@dataclass(frozen=True)
class Policy:
    network: str
    default: str
    rules: tuple


@dataclass(frozen=True)
class FlowSettings:
    capacity: int = 65536
    idle_timeout: float = 180.0
    hold_queue: int = 3
    mode: str = "proactive"
    hold_timeout: float = 2.0       # a decision that takes longer is considered lost
    close_timeout: float = 10.0     # TCP pairs that saw FIN both ways but never the last ACK
    closed_linger: float = 2.0      # a finished TCP pair still answers late ACKs/retransmissions
    fragment_capacity: int = 1024
    fragment_timeout: float = 30.0


@dataclass(frozen=True)
class VrouterConfig:
    server: str
    underlay_ip: str
    encapsulation: str
    networks: tuple
    vifs: tuple
    routes: tuple
    peers: frozenset
    policies: tuple
    flow: FlowSettings = field(default_factory=FlowSettings)
    source: dict = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_dict(cls, d) -> "VrouterConfig":
        return _parse(d)

    def to_dict(self) -> dict:
        """The dict this config was built from (plain values, msgpack-serialisable)."""
        return self.source

    def network(self, name: str) -> Network:
        return next(n for n in self.networks if n.name == name)


_TOP = {"server", "underlay_ip", "encapsulation", "networks", "vifs", "routes", "peers", "policies", "flow"}


def _parse(d) -> VrouterConfig:
    if not isinstance(d, dict):
        raise ConfigError("config: expected a mapping at the top level")
    _no_unknown(d, _TOP, "config")
    encap = d.get("encapsulation", "mplsoudp")
    if encap not in ENCAPS:
        raise ConfigError(f"encapsulation: {encap!r} is not one of {', '.join(ENCAPS)}")
    server = _str(d.get("server", "vrouter"), "server")
    underlay = _ip(d.get("underlay_ip"), "underlay_ip")

    networks, by_name, ids = [], {}, set()
    for i, n in enumerate(_list(d, "networks")):
        where = f"networks[{i}]"
        _mapping(n, where, {"name", "id", "subnets", "gateway"})
        name = _str(n.get("name"), f"{where}.name")
        if name in by_name:
            raise ConfigError(f"{where}.name: duplicate network {name!r}")
        nid = _int(n.get("id"), f"{where}.id", 1, MAX_VNI)
        if encap != "vxlan" and not 16 <= nid <= MAX_LABEL:
            raise ConfigError(f"{where}.id: {nid} is not an MPLS label in 16..{MAX_LABEL}")
        if nid in ids:
            raise ConfigError(f"{where}.id: duplicate id {nid}")
        subnets = n.get("subnets")
        if not isinstance(subnets, list) or not subnets:
            raise ConfigError(f"{where}.subnets: expected a non-empty list of prefixes")
        nets = tuple(_prefix(s, f"{where}.subnets[{j}]") for j, s in enumerate(subnets))
        if n.get("gateway") is None:
            gw = nets[0][0] + 1
        else:
            gw = _ip(n.get("gateway"), f"{where}.gateway")
            if not _inside(gw, nets):
                raise ConfigError(f"{where}.gateway: {int_to_ip(gw)} is outside the network's subnets")
        net = Network(name, nid, nets, gw)
        networks.append(net)
        by_name[name] = net
        ids.add(nid)

    vifs, vif_names = [], {}
    for i, v in enumerate(_list(d, "vifs")):
        where = f"vifs[{i}]"
        _mapping(v, where, {"name", "network", "mac", "ip"})
        name = _str(v.get("name"), f"{where}.name")
        if name in vif_names:
            raise ConfigError(f"{where}.name: duplicate vif {name!r}")
        net = _network_ref(v.get("network"), by_name, f"{where}.network")
        mac = _mac(v.get("mac"), f"{where}.mac")
        ip = _ip(v.get("ip"), f"{where}.ip")
        if not _inside(ip, net.subnets):
            raise ConfigError(f"{where}.ip: {int_to_ip(ip)} is outside network {net.name!r}")
        vif = Vif(name, net.name, mac, ip)
        vifs.append(vif)
        vif_names[name] = vif

    peers = set()
    for i, p in enumerate(_list(d, "peers")):
        peers.add(int_to_ip(_ip(p, f"peers[{i}]")))

    routes, seen = [], set()
    for i, r in enumerate(_list(d, "routes")):
        where = f"routes[{i}]"
        _mapping(r, where, {"network", "prefix", "nexthop"})
        net = _network_ref(r.get("network"), by_name, f"{where}.network")
        prefix = _prefix(r.get("prefix"), f"{where}.prefix")
        if (net.name, prefix) in seen:
            raise ConfigError(f"{where}.prefix: duplicate route {r.get('prefix')} in network {net.name!r}")
        seen.add((net.name, prefix))
        nh = _nexthop(r.get("nexthop"), f"{where}.nexthop", net, vif_names, encap)
        if nh["type"] == "tunnel":
            peers.add(nh["peer"])
        routes.append(Route(net.name, prefix, nh))

    policies, with_policy = [], set()
    for i, p in enumerate(_list(d, "policies")):
        where = f"policies[{i}]"
        _mapping(p, where, {"network", "default", "rules"})
        net = _network_ref(p.get("network"), by_name, f"{where}.network")
        if net.name in with_policy:
            raise ConfigError(f"{where}.network: network {net.name!r} already has a policy")
        with_policy.add(net.name)
        default = p.get("default", "allow")
        if default not in ("allow", "deny"):
            raise ConfigError(f"{where}.default: {default!r} is not allow or deny")
        rules = p.get("rules") or []
        if not isinstance(rules, list):
            raise ConfigError(f"{where}.rules: expected a list")
        policies.append(Policy(net.name, default, tuple(_rule(x, f"{where}.rules[{j}]") for j, x in enumerate(rules))))

    return VrouterConfig(server, int_to_ip(underlay), encap, tuple(networks), tuple(vifs), tuple(routes),
                         frozenset(peers), tuple(policies), _flow(d.get("flow")), d)


def _flow(f) -> FlowSettings:
    if f is None:
        return FlowSettings()
    _mapping(f, "flow", set(FlowSettings.__dataclass_fields__))
    defaults = FlowSettings()
    mode = f.get("mode", defaults.mode)
    if mode not in MODES:
        raise ConfigError(f"flow.mode: {mode!r} is not proactive or reactive")
    kw = {"mode": mode}
    for name in ("capacity", "hold_queue", "fragment_capacity"):
        kw[name] = _int(f.get(name, getattr(defaults, name)), f"flow.{name}", 0 if name == "hold_queue" else 1,
                        1 << 24)
    for name in ("idle_timeout", "hold_timeout", "close_timeout", "closed_linger", "fragment_timeout"):
        value = f.get(name, getattr(defaults, name))
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise ConfigError(f"flow.{name}: expected a positive number of seconds, got {value!r}")
        kw[name] = float(value)
    return FlowSettings(**kw)


def _nexthop(nh, where, net, vifs, default_encap) -> dict:
    if not isinstance(nh, dict):
        raise ConfigError(f"{where}: expected a mapping with a type")
    kind = nh.get("type")
    if kind not in NEXTHOP_TYPES:
        raise ConfigError(f"{where}.type: {kind!r} is not one of {', '.join(NEXTHOP_TYPES)}")
    if kind == "vif":
        _mapping(nh, where, {"type", "vif"})
        name = nh.get("vif")
        if name not in vifs:
            raise ConfigError(f"{where}.vif: unknown vif {name!r}")
        if vifs[name].network != net.name:
            raise ConfigError(f"{where}.vif: vif {name!r} belongs to network {vifs[name].network!r}, not {net.name!r}")
        return {"type": "vif", "vif": name}
    if kind == "tunnel":
        _mapping(nh, where, {"type", "peer", "label", "encap", "mac"})
        encap = nh.get("encap", default_encap)
        if encap not in ENCAPS:
            raise ConfigError(f"{where}.encap: {encap!r} is not one of {', '.join(ENCAPS)}")
        label = _int(nh.get("label", net.id), f"{where}.label", 0 if encap == "vxlan" else 16,
                     MAX_VNI if encap == "vxlan" else MAX_LABEL)
        mac = nh.get("mac")
        if mac is not None:
            _mac(mac, f"{where}.mac")
        return {"type": "tunnel", "peer": int_to_ip(_ip(nh.get("peer"), f"{where}.peer")), "label": label,
                "encap": encap, "mac": mac or mac_to_str(VROUTER_MAC)}
    _mapping(nh, where, {"type"})
    return {"type": kind}


def _rule(r, where) -> Rule:
    _mapping(r, where, {"action", "protocol", "src", "dst", "src_port", "dst_port"})
    action = r.get("action")
    if action not in ("allow", "deny"):
        raise ConfigError(f"{where}.action: {action!r} is not allow or deny")
    proto = r.get("protocol", "any")
    if isinstance(proto, str) and proto.lower() in PROTOCOLS:
        proto = PROTOCOLS[proto.lower()]
    elif not (isinstance(proto, int) and not isinstance(proto, bool) and 0 <= proto <= 255):
        raise ConfigError(f"{where}.protocol: {proto!r} is not tcp, udp, icmp, any or a number 0..255")
    ports = {}
    for name in ("src_port", "dst_port"):
        ports[name] = _ports(r.get(name), f"{where}.{name}")
        if ports[name] is not None and proto not in (6, 17):
            raise ConfigError(f"{where}.{name}: ports need protocol tcp or udp")
    return Rule(action, proto, _prefix(r.get("src", "0.0.0.0/0"), f"{where}.src"),
                _prefix(r.get("dst", "0.0.0.0/0"), f"{where}.dst"), ports["src_port"], ports["dst_port"])


def _ports(value, where):
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        lo = hi = value
    elif isinstance(value, str) and value.replace("-", "", 1).isdigit():
        lo_s, _, hi_s = value.partition("-")
        lo, hi = int(lo_s), int(hi_s or lo_s)
    else:
        raise ConfigError(f"{where}: {value!r} is not a port or a range like 1000-2000")
    if not 0 <= lo <= hi <= 65535:
        raise ConfigError(f"{where}: {value!r} is not a port range within 0..65535")
    return (lo, hi)


def _inside(ip, nets) -> bool:
    return any(ip & mask(plen) == net for net, plen in nets)


def _list(d, key):
    value = d.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise ConfigError(f"{key}: expected a list")
    return value


def _mapping(m, where, allowed):
    if not isinstance(m, dict):
        raise ConfigError(f"{where}: expected a mapping")
    _no_unknown(m, allowed, where)


def _no_unknown(m, allowed, where):
    unknown = sorted(str(k) for k in m if k not in allowed)
    if unknown:
        raise ConfigError(f"{where}: unknown field {unknown[0]!r} (allowed: {', '.join(sorted(allowed))})")


def _network_ref(name, by_name, where) -> Network:
    if name not in by_name:
        raise ConfigError(f"{where}: unknown network {name!r}")
    return by_name[name]


def _str(value, where) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: expected a non-empty string, got {value!r}")
    return value


def _int(value, where, lo, hi) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ConfigError(f"{where}: expected an integer in {lo}..{hi}, got {value!r}")
    return value


def _ip(value, where) -> int:
    if not isinstance(value, str):
        raise ConfigError(f"{where}: {value!r} is not an IPv4 address")
    try:
        return ip_to_int(value)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _mac(value, where) -> bytes:
    text = _str(value, where)       # outside the try: its ConfigError already names the field
    try:
        return mac_to_bytes(text)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _prefix(value, where) -> tuple:
    try:
        return parse_prefix(value)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None
