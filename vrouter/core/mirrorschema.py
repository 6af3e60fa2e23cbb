"""The overlay schema's mirroring part: mirror sessions, in the topology's form and the vrouter's.

Why a module of its own: schema.py holds the other overlay rules and is near its size limit; these
checks are used the same three ways (topology files collect every problem, the VNC refuses a
run-time change at its first, the vrouter config likewise), in the same words.

A session (docs/topology-format.md, "Mirroring") copies packets of a source to a sink:
- source: one VM (``{vm: red1}``), a network (``{network: red}``) or the flows of a network that
  match a rule (``{rule: {network: red, protocol: tcp, dst_port: 80}}``; the policy rule's fields
  and checks, without ``action``; a flow matches when it or its reverse matches, so both directions
  of a matching conversation are copied);
- to: an analyzer VM (``{analyzer: red3}``: VXLAN-in-UDP copies to it) or ``{pcap: true}`` (a pcap
  file per server in the run directory);
- direction: both, ingress (what the source's VMs send) or egress (what is delivered to them);
- rate: copies per second per vrouter (a token bucket; the excess is counted as drops).
The analyzer is not the mirrored VM itself. Sessions are numbered (``id``, from 1): the number is the
VNI of the VXLAN copies, so an analyzer tells the sessions apart.

Pure (a core module).
"""
from __future__ import annotations

from collections.abc import Collection, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any

from .codec.ipv4 import int_to_ip
from .codec.vxlan import MAX_VNI
from .schema import (
    ANY_PREFIX,
    MAX_FLOW_INT,
    Network,
    Problems,
    Rule,
    Vm,
    address,
    choice,
    encapsulation,
    mac,
    mapping,
    name,
    network_id,
    no_unknown,
    reference,
    rule,
)

SESSION_KEYS = ("name", "source", "to", "direction", "rate")
VROUTER_KEYS = ("name", "id", "source", "to", "direction", "rate")
SOURCE_KINDS = ("vm", "network", "rule")
SINK_KINDS = ("analyzer", "pcap")
DIRECTIONS = ("both", "ingress", "egress")
RULE_FIELDS = ("protocol", "src", "dst", "src_port", "dst_port")     # the policy rule's match fields
DEFAULT_RATE = 10000.0      # copies per second per vrouter and session: a busy network cannot eat the vrouter


@dataclass(frozen=True)
class Session:
    """A session as the topology and the VNC hold it (names, not interfaces)."""
    name: str
    kind: str                   # "vm" | "network" | "rule"
    source: str                 # the VM, or the network (of the rule)
    rule: Rule | None           # kind "rule": its match fields (action "allow", unused)
    analyzer: str | None        # the analyzer VM; None: pcap
    direction: str
    rate: float

    def to_dict(self) -> dict[str, Any]:
        src: dict[str, Any] = {self.kind: self.source} if self.rule is None else \
            {"rule": {"network": self.source, **rule_fields(self.rule)}}
        return {"name": self.name, "source": src,
                "to": {"analyzer": self.analyzer} if self.analyzer else {"pcap": True},
                "direction": self.direction, "rate": self.rate}


def rule_fields(r: Rule) -> dict[str, Any]:
    """The rule's match fields as given (what is left at its default, any address, is left out)."""
    d = r.to_dict()
    return {k: d[k] for k in RULE_FIELDS if d.get(k) is not None and d[k] != ANY_PREFIX}


def _one_of(p: Problems, where: str, item: object, kinds: tuple[str, ...]) -> tuple[str, Any] | None:
    """A mapping with exactly one key of `kinds`: (key, value)."""
    m = mapping(p, where, item, kinds)
    if m is None:
        return None
    given = [k for k in kinds if k in m]
    if len(given) != 1:
        p.add(where, f"expected exactly one of {', '.join(kinds)}, got {', '.join(map(str, m)) or 'none'}")
        return None
    return given[0], m[given[0]]


def match_rule(p: Problems, where: str, item: object, networks: Collection[str]) -> tuple[str, Rule] | None:
    """A rule source: its network and its match fields, checked as a policy rule's."""
    m = mapping(p, where, item, ("network", *RULE_FIELDS), ("network",))
    if m is None or "network" not in m:
        return None
    net = reference(p, f"{where}.network", m["network"], networks, "virtual network")
    r = rule(p, where, {"action": "allow", **{k: m[k] for k in RULE_FIELDS if k in m}})
    return None if net is None or r is None else (net, r)


def rate(p: Problems, where: str, value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= MAX_FLOW_INT:
        p.add(where, f"expected copies per second in (0, {MAX_FLOW_INT}], got {value!r}")
        return None
    return float(value)


def session(p: Problems, where: str, item: object, networks: Mapping[str, Network | None],
            vms: Mapping[str, Vm], names: MutableMapping[str, str]) -> Session | None:
    """One session of the topology's `mirrors:` (or a run-time `mirror add`); `names`: the sessions
    declared so far."""
    m = mapping(p, where, item, SESSION_KEYS, ("name", "source", "to"))
    if m is None:
        return None
    sname = name(p, f"{where}.name", m["name"], names, where) if "name" in m else None
    src = _one_of(p, f"{where}.source", m["source"], SOURCE_KINDS) if "source" in m else None
    kind = source = None
    r: Rule | None = None
    if src is not None:
        kind, value = src
        place = f"{where}.source.{kind}"
        if kind == "vm":
            source = reference(p, place, value, vms, "VM")
        elif kind == "network":
            source = reference(p, place, value, networks, "virtual network")
        elif (got := match_rule(p, place, value, networks)) is not None:
            source, r = got
    to = _one_of(p, f"{where}.to", m["to"], SINK_KINDS) if "to" in m else None
    analyzer: str | None = None
    sink_ok = to is not None
    if to is not None and to[0] == "pcap" and to[1] is not True:
        p.add(f"{where}.to.pcap", f"expected true, got {to[1]!r}")
        sink_ok = False
    elif to is not None and to[0] == "analyzer":
        analyzer = reference(p, f"{where}.to.analyzer", to[1], vms, "analyzer VM")
        if analyzer is not None and kind == "vm" and analyzer == source:
            p.add(f"{where}.to.analyzer", f"VM {analyzer!r} cannot be the analyzer of its own mirror")
            analyzer = None
        sink_ok = analyzer is not None
    direction = choice(p, f"{where}.direction", m.get("direction", "both"), DIRECTIONS, "a direction")
    per_second = rate(p, f"{where}.rate", m.get("rate", DEFAULT_RATE))
    if sname is None or kind is None or source is None or not sink_ok or direction is None or per_second is None:
        return None
    return Session(sname, kind, source, r, analyzer, direction, per_second)


# ---- the vrouter config's form (what the VNC sends one server)

@dataclass(frozen=True)
class Analyzer:
    vm: str
    address: int                # the analyzer VM's
    gateway: int                # its network's gateway: the copies' source address
    nexthop: dict[str, Any]     # {"type": "vif", "vif": tap} or a tunnel {"peer", "label", "encap", "mac"}


@dataclass(frozen=True)
class VrouterSession:
    name: str
    id: int                     # the VXLAN VNI of its copies
    kind: str                   # "vif" | "network" | "rule"
    source: str                 # the VIF, or the network (of the rule)
    rule: Rule | None
    analyzer: Analyzer | None   # None: pcap
    direction: str
    rate: float


def vrouter_sessions(p: Problems, where: str, raw: object, vifs: Collection[str],
                     networks: Collection[str]) -> tuple[VrouterSession, ...]:
    """A vrouter config's `mirrors`: each session's source is one of this server's VIFs or networks."""
    out = []
    seen: dict[str, str] = {}
    for i, item in enumerate(raw if isinstance(raw, list) else []):
        at = f"{where}[{i}]"
        m = mapping(p, at, item, VROUTER_KEYS, VROUTER_KEYS[:4])
        if m is None:
            continue
        sname = name(p, f"{at}.name", m.get("name"), seen)
        sid = m.get("id")
        if isinstance(sid, bool) or not isinstance(sid, int) or not 1 <= sid <= MAX_VNI:
            p.add(f"{at}.id", f"expected a session number in 1..{MAX_VNI}, got {sid!r}")
        kind, value = _one_of(p, f"{at}.source", m.get("source"), ("vif", "network", "rule")) or ("", None)
        r = None
        if kind == "vif":
            source = reference(p, f"{at}.source.vif", value, vifs, "vif")
        elif kind == "network":
            source = reference(p, f"{at}.source.network", value, networks, "virtual network")
        else:
            got = match_rule(p, f"{at}.source.rule", value, networks)
            source, r = got if got is not None else (None, None)
        sink = _one_of(p, f"{at}.to", m.get("to"), SINK_KINDS)
        analyzer = _analyzer(p, f"{at}.to.analyzer", sink[1], vifs) if sink and sink[0] == "analyzer" else None
        direction = choice(p, f"{at}.direction", m.get("direction", "both"), DIRECTIONS, "a direction")
        per_second = rate(p, f"{at}.rate", m.get("rate", DEFAULT_RATE))
        if sname and source and sink and direction and per_second and (analyzer or sink[0] == "pcap"):
            out.append(VrouterSession(sname, sid, kind, source, r, analyzer, direction,  # type: ignore[arg-type]
                                      per_second))
    if raw is not None and not isinstance(raw, list):
        p.add(where, f"expected a list, got {type(raw).__name__}")
    return tuple(out)


def _analyzer(p: Problems, where: str, item: object, vifs: Collection[str]) -> Analyzer | None:
    m = mapping(p, where, item, ("vm", "address", "gateway", "nexthop"), ("vm", "address", "gateway", "nexthop"))
    if m is None or len(m) < 4:
        return None
    ip, gw = address(p, f"{where}.address", m["address"]), address(p, f"{where}.gateway", m["gateway"])
    nh = m["nexthop"]
    at = f"{where}.nexthop"
    if not isinstance(nh, dict) or nh.get("type") not in ("vif", "tunnel"):
        p.add(at, f"expected a vif or tunnel next hop, got {nh!r}")
        return None
    if nh["type"] == "vif":
        no_unknown(p, at, nh, ("type", "vif"))
        if reference(p, f"{at}.vif", nh.get("vif"), vifs, "vif") is None:
            return None
        hop: dict[str, Any] = {"type": "vif", "vif": nh["vif"]}
    else:
        no_unknown(p, at, nh, ("type", "peer", "label", "encap", "mac"))
        encap = encapsulation(p, f"{at}.encap", nh.get("encap"))
        peer = address(p, f"{at}.peer", nh.get("peer"))
        label = network_id(p, f"{at}.label", nh.get("label"), encap) if encap else None
        hw = mac(p, f"{at}.mac", nh.get("mac"))
        if encap is None or peer is None or label is None or hw is None:
            return None
        hop = {"type": "tunnel", "peer": int_to_ip(peer), "label": label, "encap": encap, "mac": hw}
    if ip is None or gw is None:
        return None
    return Analyzer(str(m["vm"]), ip, gw, hop)
