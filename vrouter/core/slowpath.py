"""Slow-path flow decisions (what the agent process runs when the forwarder punts a new flow).

Proactive mode (the patent's technique): the decision carries the forward entry AND the reverse
entry, each with its own route lookup and policy verdict, so the first reply packet already hits the
flow table. Reactive mode (the baseline) carries only the forward entry; the reverse is decided when
a reverse packet misses. Requests and decisions are plain dicts/lists/ints/strings (msgpack-safe).

Between networks connected by policy, the reverse entry lives in the other network's routing
instance (``rvrf``: the network of the forward flow's destination), decided by that network's route
and policy: each direction is keyed and judged in the network it starts in, at both vrouters.
"""
from collections.abc import Container
from typing import TYPE_CHECKING, Any, NotRequired, TypedDict, cast

from . import ecmp, nat
from .actions import PuntRequest
from .config import VrouterConfig
from .drops import REASONS
from .fib import Nexthop
from .flowtable import DROP, TO_TUNNEL, TO_VIF
from .natschema import DEFAULT_VRF
from .vrf import RoutingInstance, build_instances

if TYPE_CHECKING:
    from .flowtable import FlowEntry

# Next-hop types that make an allowed flow a drop entry, and the drop reason each gives.
NEXTHOP_DROPS = {"discard": "discard", "receive": "receive_unsupported"}


class EntrySpec(TypedDict):
    """One direction's flow entry in a decision."""
    key: list[int]              # [proto, src, dst, sport, dport] (the routing instance is the decision's)
    action: str                 # "forward" | "drop"
    reason: str | None          # the drop reason, None when forwarded
    nexthop: Nexthop | None
    rule: int | None            # index of the policy rule that matched, -1 for the default
    vrf: NotRequired[int]       # a NAT reverse entry's routing instance, when not the decision's
    nat: NotRequired[dict[str, Any] | None]   # a NAT entry's translation (core/nat.py)
    member: NotRequired[str]    # a service's member this flow goes to or comes from (core/ecmp.py)
    pin: NotRequired[str]       # the entry FROM that member: the VIF or tunnel peer it must come from


class Decision(TypedDict):
    vrf: int
    mode: str                   # "proactive" | "reactive" | "nat" (always with its reverse)
    forward: EntrySpec
    reverse: EntrySpec | None   # proactive mode only
    rvrf: NotRequired[int]      # the reverse entry's routing instance (absent: vrf)


class SlowPath:
    def __init__(self, config: VrouterConfig):
        self.apply_config(config)

    def apply_config(self, config: VrouterConfig) -> None:
        self._vrfs = build_instances(config)
        self.mode = config.flow.mode
        self._config = config

    def decide(self, request: PuntRequest, now: float = 0.0) -> Decision:
        """Decision for ``request`` (from ``Pipeline.take_punts``): forward entry, and reverse in proactive mode."""
        vrf_id = request["vrf"]
        proto, src, dst, sport, dport = (request["proto"], request["src"], request["dst"], request["sport"],
                                         request["dport"])
        vrf = self._vrfs.get(vrf_id)
        if vrf is not None and self._config.nat is not None:
            nh = vrf.fib.lookup(dst)
            if nh is not None and (vrf_id == DEFAULT_VRF or nh["type"] == "external"):
                return cast(Decision, nat.decide(self._vrfs, self._config, dict(request), vrf, nh))
        ingress = (request["ingress"], request["port"])
        fwd = self.evaluate(vrf, proto, src, dst, sport, dport, ingress)
        other = vrf.network_of(dst) if vrf is not None else None
        rvrf = vrf if other is None else self._vrfs.get(other.id)
        rev = self.evaluate(rvrf, proto, dst, src, dport, sport, ingress, True) if self.mode == "proactive" else None
        ecmp.pin(fwd, rev)
        return {"vrf": vrf_id, "mode": self.mode, "forward": fwd, "reverse": rev,
                "rvrf": vrf_id if other is None else other.id}

    def instance(self, vrf_id: int) -> RoutingInstance | None:
        """The routing instance of a network id (None: no such network here); for code outside the
        agent that evaluates flows as decide does (the labs' checks)."""
        return self._vrfs.get(vrf_id)

    def reevaluate(self, vrf: RoutingInstance, e: "FlowEntry") -> EntrySpec:
        """An installed entry's spec under a new configuration, keeping its member while it is one;
        a pinned entry keeps its pin until ``ecmp.repin`` (after every entry) follows its partner."""
        spec = self.evaluate(vrf, *e.key[1:], keep=e.member)
        nh = spec["nexthop"]
        if nh is not None and "member" in nh:
            spec["member"] = nh["member"]
        elif e.pin is not None and e.member is not None:
            spec["member"], spec["pin"] = e.member, e.pin
        return spec

    def evaluate(self, vrf: RoutingInstance | None, proto: int, src: int, dst: int, sport: int,
                 dport: int, ingress: tuple[str, str] | None = None, reply: bool = False,
                 keep: str | None = None) -> EntrySpec:
        """Entry spec for one direction: route lookup on the destination, then the network's policy.
        A service's composite next hop resolves to one member (``ecmp.choose``: the flow's
        ``ingress``, whether this is the ``reply`` direction, the member to ``keep``)."""
        key = [proto, src, dst, sport, dport]
        if vrf is None:
            return _spec(key, "unknown_label")
        nh = vrf.fib.lookup(dst)
        if nh is None:
            return _spec(key, "no_route")
        if nh["type"] == ecmp.COMPOSITE:
            nh = ecmp.choose(nh, (proto, src, dst, sport, dport), ingress, reply, keep)
        allowed, rule = vrf.policy.evaluate(proto, src, dst, sport, dport)
        return _spec(key, NEXTHOP_DROPS.get(nh["type"]) if allowed else "policy_deny", nh, rule)


def entry_kind(spec: EntrySpec, vifs: Container[str]) -> tuple[int, str | None]:
    """What a flow entry made from ``spec`` does: (TO_VIF | TO_TUNNEL, None) or (DROP, its drop reason).
    ``vifs``: the VM interfaces of this vrouter (a next hop to one it does not have is no route).
    The pipeline installs entries by it and ``testbed trace`` (core/explain.py) predicts them by it."""
    reason = None
    if spec["action"] != "forward":
        reason = spec.get("reason") or "policy_deny"
    else:
        nh: Nexthop = spec["nexthop"]  # type: ignore[assignment]  # a forward spec has its next hop
        kind = nh["type"]
        if kind == "vif" and nh["vif"] in vifs:
            return TO_VIF, None
        if kind == "tunnel":
            return TO_TUNNEL, None
        reason = NEXTHOP_DROPS.get(kind, "no_route")
    return DROP, reason if reason in REASONS else "policy_deny"


def _spec(key: list[int], reason: str | None, nexthop: Nexthop | None = None, rule: int | None = None) -> EntrySpec:
    """One direction's entry: forward when there is no drop reason."""
    return {"key": key, "action": "drop" if reason else "forward", "reason": reason, "nexthop": nexthop,
            "rule": rule}
