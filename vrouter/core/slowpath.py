"""Slow-path flow decisions (what the agent process runs when the forwarder punts a new flow).

Proactive mode (the patent's technique): the decision carries the forward entry AND the reverse
entry, each with its own route lookup and policy verdict, so the first reply packet already hits the
flow table. Reactive mode (the baseline) carries only the forward entry; the reverse is decided when
a reverse packet misses. Requests and decisions are plain dicts/lists/ints/strings (msgpack-safe).
"""
from collections.abc import Container
from typing import TypedDict

from .actions import PuntRequest
from .config import VrouterConfig
from .drops import REASONS
from .fib import Nexthop
from .flowtable import DROP, TO_TUNNEL, TO_VIF
from .vrf import RoutingInstance, build_instances

# Next-hop types that make an allowed flow a drop entry, and the drop reason each gives.
NEXTHOP_DROPS = {"discard": "discard", "receive": "receive_unsupported"}


class EntrySpec(TypedDict):
    """One direction's flow entry in a decision."""
    key: list[int]              # [proto, src, dst, sport, dport] (the routing instance is the decision's)
    action: str                 # "forward" | "drop"
    reason: str | None          # the drop reason, None when forwarded
    nexthop: Nexthop | None
    rule: int | None            # index of the policy rule that matched, -1 for the default


class Decision(TypedDict):
    vrf: int
    mode: str                   # "proactive" | "reactive"
    forward: EntrySpec
    reverse: EntrySpec | None   # proactive mode only


class SlowPath:
    def __init__(self, config: VrouterConfig):
        self.apply_config(config)

    def apply_config(self, config: VrouterConfig) -> None:
        self._vrfs = build_instances(config)
        self.mode = config.flow.mode

    def decide(self, request: PuntRequest, now: float = 0.0) -> Decision:
        """Decision for ``request`` (from ``Pipeline.take_punts``): forward entry, and reverse in proactive mode."""
        vrf_id = request["vrf"]
        proto, src, dst, sport, dport = (request["proto"], request["src"], request["dst"], request["sport"],
                                         request["dport"])
        vrf = self._vrfs.get(vrf_id)
        fwd = self.evaluate(vrf, proto, src, dst, sport, dport)
        rev = self.evaluate(vrf, proto, dst, src, dport, sport) if self.mode == "proactive" else None
        return {"vrf": vrf_id, "mode": self.mode, "forward": fwd, "reverse": rev}

    def instance(self, vrf_id: int) -> RoutingInstance | None:
        """The routing instance of a network id (None: no such network here); for code outside the
        agent that evaluates flows as decide does (the labs' checks)."""
        return self._vrfs.get(vrf_id)

    def evaluate(self, vrf: RoutingInstance | None, proto: int, src: int, dst: int, sport: int,
                 dport: int) -> EntrySpec:
        """Entry spec for one direction: route lookup on the destination, then the network's policy."""
        key = [proto, src, dst, sport, dport]
        if vrf is None:
            return _spec(key, "unknown_label")
        nh = vrf.fib.lookup(dst)
        if nh is None:
            return _spec(key, "no_route")
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
