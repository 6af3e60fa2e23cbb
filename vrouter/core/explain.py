"""Why one packet goes where it goes inside one vrouter, without changing anything (`testbed trace`).

A read-only friend of the pipeline: it reads the pipeline's state (VIFs, routing instances, flow
table, path slots) and decides with the functions the pipeline and the agent decide with (the FIB's
longest-prefix match, ``SlowPath.evaluate`` for route + policy, ``entry_kind`` for what an entry does,
``entropy_port`` / ``Paths.peek`` for the outer source port), so an explanation cannot drift from
what the datapath does. Nothing is counted, aged, held or allocated: a flow lookup here touches no
statistics. The agent runs ``SlowPath.decide`` in its own process on the configuration it pushes to
the forwarder; the pipeline keeps an evaluator on that same configuration (it re-evaluates its
entries with it on every change), so a miss is explained with the forwarder's copy: the decision the
agent makes for the configuration generation the forwarder runs.

An explanation is ``{"steps": [step, ...], "outcome": {...}}``; a step is ``{"kind", "place",
"fields"}`` (plain values: msgpack- and JSON-safe), so new kinds of step (NAT, load balancing) join
the list without changing its readers. Outcomes: ``{"action": "tunnel", peer, encap, label,
outer_sport}``, ``{"action": "deliver", vif}``, ``{"action": "drop", reason, why}``, ``{"action":
"answer", what}`` (the vrouter replies itself) or ``{"action": "hold"}`` (waiting for a decision).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .codec.ipv4 import int_to_ip
from .codec.l4 import ICMP_ECHO_REQUEST
from .drops import REASONS
from .fib import Nexthop
from .flowkey import FlowKey, entropy_port, key_hash, reverse
from .flowtable import DROP, KIND_NAMES, PROTO_NAMES, TO_TUNNEL, TO_VIF, FlowEntry
from .paths import PROBED
from .slowpath import EntrySpec, entry_kind
from .vrf import RoutingInstance

if TYPE_CHECKING:
    from .pipeline import Pipeline

Step = dict[str, Any]
Explanation = dict[str, Any]


def step(kind: str, place: str, **fields: Any) -> Step:
    return {"kind": kind, "place": place, "fields": fields}


def drop(reason: str, **extra: Any) -> dict[str, Any]:
    return {"action": "drop", "reason": reason, "why": REASONS.get(reason, ""), **extra}


def from_vif(pipe: Pipeline, vif_name: str, proto: int, src: int, dst: int, sport: int, dport: int,
             icmp_type: int = ICMP_ECHO_REQUEST) -> Explanation:
    """A packet the VM behind ``vif_name`` sends (ICMP: ``sport`` = ``dport`` = the echo id)."""
    place = pipe.config.server
    steps: list[Step] = []
    vif = pipe._vifs.get(vif_name)
    if vif is None:
        return {"steps": steps, "outcome": drop("invalid_vif", place=place)}
    ri = pipe._vrfs[vif.vrf]
    steps.append(step("vif", place, vif=vif_name, ip=int_to_ip(vif.ip), network=ri.name))
    if src != vif.ip:
        return {"steps": steps, "outcome": drop("spoofed_source", place=place)}
    steps.append(step("vrf", place, vrf=ri.id, network=ri.name))
    key: FlowKey = (ri.id, proto, src, dst, sport, dport)
    if pipe._flows.get(key) is None:
        m = ri.fib.match(dst)
        if m is not None and m[2]["type"] == "receive":      # the gateway address: the vrouter itself
            steps.append(_route_step(place, m))
            if proto == 1 and icmp_type == ICMP_ECHO_REQUEST:
                return {"steps": steps, "outcome": {"action": "answer", "place": place,
                                                    "what": "echo reply from the gateway address"}}
            return {"steps": steps, "outcome": drop("receive_unsupported", place=place)}
    return _flow(pipe, ri, key, steps, place)


def from_fabric(pipe: Pipeline, outer_src: str, encap: str, label: int, proto: int, src: int, dst: int,
                sport: int, dport: int) -> Explanation:
    """A tunnel packet from underlay address ``outer_src`` with MPLS label / VNI ``label``."""
    place = pipe.config.server
    steps: list[Step] = []
    if outer_src not in pipe._peers:
        return {"steps": steps, "outcome": drop("invalid_source", place=place, outer_src=outer_src)}
    vrf = pipe._labels.get(label)
    if vrf is None:
        return {"steps": steps, "outcome": drop("unknown_label", place=place, label=label)}
    ri = pipe._vrfs[vrf]
    steps.append(step("label", place, encap=encap, label=label, vrf=ri.id, network=ri.name))
    key: FlowKey = (ri.id, proto, src, dst, sport, dport)
    if pipe._flows.get(key) is None:
        m = ri.fib.match(dst)
        if m is not None and m[2]["type"] == "receive":
            steps.append(_route_step(place, m))
            return {"steps": steps, "outcome": drop("receive_unsupported", place=place)}
    return _flow(pipe, ri, key, steps, place)


def _flow(pipe: Pipeline, ri: RoutingInstance, key: FlowKey, steps: list[Step], place: str) -> Explanation:
    """The flow table, and on a miss what the slow path would decide (forward and, proactive, reverse)."""
    flows = pipe._flows
    e = flows.get(key)
    text = _key_text(key)
    if e is not None:
        index = list(flows).index(key)
        r = e.reverse
        steps.append(step("flow", place, key=text, hit=True, index=index, role=e.role,
                          action=KIND_NAMES[e.kind], reason=e.reason, rule=e.rule,
                          rule_text=_rule_text(pipe, ri, e.rule), packets=e.packets,
                          reverse_index=list(flows).index(r.key) if r is not None and flows.get(r.key) is r else None))
        if not e.kind:
            return {"steps": steps, "outcome": {"action": "hold", "place": place}}
        return {"steps": steps, "outcome": _entry_outcome(pipe, e, place)}
    steps.append(step("flow", place, key=text, hit=False))
    spec = pipe._evaluator.evaluate(ri, *key[1:])
    steps.extend(_decision_steps(pipe, ri, spec, place, "forward"))
    if pipe._settings.mode == "proactive":
        rkey = reverse(key)
        rspec = pipe._evaluator.evaluate(ri, *rkey[1:])
        kind, reason = entry_kind(rspec, pipe._vifs)
        steps.append(step("reverse", place, key=_key_text(rkey), mode="proactive",
                          action="drop" if kind == DROP else "forward", reason=reason, rule=rspec["rule"],
                          rule_text=_rule_text(pipe, ri, rspec["rule"])))
    else:
        steps.append(step("reverse", place, key=_key_text(reverse(key)), mode="reactive", action=None,
                          note="reactive mode installs no reverse entry: the reply's first packet misses"))
    return {"steps": steps, "outcome": _spec_outcome(pipe, key, spec, place)}


def _decision_steps(pipe: Pipeline, ri: RoutingInstance, spec: EntrySpec, place: str, role: str) -> list[Step]:
    m = ri.fib.match(spec["key"][2])
    out = [_route_step(place, m)]
    if spec["rule"] is not None:
        allowed = spec["reason"] != "policy_deny"
        out.append(step("policy", place, network=ri.name, rule=spec["rule"],
                        rule_text=_rule_text(pipe, ri, spec["rule"]), verdict="allow" if allowed else "deny"))
    return out


def _route_step(place: str, m: tuple[int, int, Nexthop] | None) -> Step:
    if m is None:
        return step("route", place, prefix=None, nexthop=None)
    net, plen, nh = m
    return step("route", place, prefix=f"{int_to_ip(net)}/{plen}", nexthop=dict(nh))


def _entry_outcome(pipe: Pipeline, e: FlowEntry, place: str) -> dict[str, Any]:
    if e.kind == DROP:
        return drop(e.reason, place=place, rule=e.rule, rule_text=_rule_text(pipe, pipe._vrfs[e.key[0]], e.rule))
    if e.kind == TO_VIF:
        return {"action": "deliver", "place": place, "vif": e.vif}
    nh = e.nexthop or {}
    return {"action": "tunnel", "place": place, "peer": e.peer, "encap": e.encap, "label": nh.get("label"),
            "outer_sport": e.path.port if e.path is not None else None}


def _spec_outcome(pipe: Pipeline, key: FlowKey, spec: EntrySpec, place: str) -> dict[str, Any]:
    kind, reason = entry_kind(spec, pipe._vifs)
    nh = spec["nexthop"] or {}
    if kind == DROP:
        rule, ri = spec["rule"], pipe._vrfs[key[0]]
        return drop(reason or "policy_deny", place=place, rule=rule, rule_text=_rule_text(pipe, ri, rule))
    if kind == TO_VIF:
        return {"action": "deliver", "place": place, "vif": nh["vif"]}
    assert kind == TO_TUNNEL
    return {"action": "tunnel", "place": place, "peer": nh["peer"], "encap": nh["encap"], "label": nh["label"],
            **_would_port(pipe, key, nh)}


def _would_port(pipe: Pipeline, key: FlowKey, nh: Nexthop) -> dict[str, Any]:
    """The outer source port a new entry would take (as ``Pipeline._port_cell`` chooses it)."""
    paths = pipe.paths
    if paths is not None and nh["encap"] in PROBED:
        slot = paths.peek(nh["peer"], nh["encap"], key_hash(*key))
        if slot is None:
            return {"outer_sport": None, "slot": None,
                    "note": "no path slots to this peer yet: the first flow picks their ports at random"}
        return {"outer_sport": slot.port, "slot": slot.index}
    return {"outer_sport": entropy_port(key), "slot": None}


def _rule_text(pipe: Pipeline, ri: RoutingInstance, rule: int | None) -> str | None:
    """A policy rule as the topology file writes it, or the network's default."""
    if rule is None:
        return None
    policy = next((p for p in pipe.config.policies if p.network == ri.name), None)
    if rule < 0 or policy is None:
        return f"default {'allow' if ri.policy.default_allow else 'deny'}"
    d = policy.rules[rule].to_dict()
    ports = "".join(f" {k} {d[k]}" for k in ("src_port", "dst_port") if d.get(k))
    return f"{d['action']} {d['protocol']} {d['src']} -> {d['dst']}{ports}"


def _key_text(key: FlowKey) -> str:
    vrf, proto, src, dst, sport, dport = key
    return f"{PROTO_NAMES.get(proto, str(proto))} {int_to_ip(src)}:{sport} -> {int_to_ip(dst)}:{dport} (vrf {vrf})"
