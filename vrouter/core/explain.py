"""Why one packet goes where it goes inside one vrouter, without changing anything (`testbed trace`).

A read-only friend of the pipeline: it reads the pipeline's state (VIFs, routing instances, flow
table, path slots) and decides with the functions the pipeline and the agent decide with (the FIB's
longest-prefix match, ``SlowPath.decide`` on the punt request the pipeline would queue (so routing
between networks, a service's member and NAT are explained as decided; decide changes nothing, and a
SNAT port is taken only at install), ``entry_kind`` for what an entry does,
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
"answer", what}`` (the vrouter replies itself), ``{"action": "external", nat, why}`` (NAT: out of the
external port) or ``{"action": "hold"}`` (waiting for a decision).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import ecmp
from .actions import punt_request
from .codec.ipv4 import int_to_ip
from .codec.l4 import ICMP_ECHO_REQUEST
from .drops import REASONS
from .fib import Nexthop
from .flowkey import FlowKey, entropy_port, key_hash, reverse
from .flowtable import DROP, KIND_NAMES, PROTO_NAMES, TO_TUNNEL, TO_VIF, FlowEntry
from .natschema import DEFAULT_VRF
from .paths import PROBED
from .slowpath import Decision, EntrySpec, entry_kind
from .vrf import RoutingInstance

if TYPE_CHECKING:
    from .pipeline import Pipeline

Step = dict[str, Any]
AT_INSTALL = "allocated at install"     # a SNAT port: taken by the pipeline when it installs the decision
EXTERNAL = "out of the external port toward the gateway, without a tunnel"
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
    if src != vif.ip and src not in vif.services:      # as Pipeline._vif_slow: a member sends from its service's
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
    return _flow(pipe, ri, key, steps, place, ("vif", vif_name))


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
    return _flow(pipe, ri, key, steps, place, ("fabric", outer_src))


def _flow(pipe: Pipeline, ri: RoutingInstance, key: FlowKey, steps: list[Step], place: str,
          ingress: tuple[str, str]) -> Explanation:
    """The flow table, and on a miss the slow path's decision for the punt this packet would queue."""
    flows = pipe._flows
    e = flows.get(key)
    text = _key_text(key)
    if e is not None:
        index = list(flows).index(key)
        r = e.reverse
        steps.append(step("flow", place, key=text, hit=True, index=index, role=e.role,
                          action=KIND_NAMES[e.kind], reason=e.reason, rule=e.rule,
                          rule_text=_rule_text(pipe, ri, e.rule), packets=e.packets,
                          reverse_index=list(flows).index(r.key) if r is not None and flows.get(r.key) is r else None,
                          member=e.member, pin=e.pin, nat=e.nat.describe() if e.nat is not None else None))
        if e.pin is not None and e.pin != ingress[1]:       # as Pipeline._lookup checks, before the kind
            return {"steps": steps, "outcome": drop("wrong_member", place=place, pin=e.pin)}
        if not e.kind:
            return {"steps": steps, "outcome": {"action": "hold", "place": place}}
        return {"steps": steps, "outcome": _entry_outcome(pipe, e, place)}
    steps.append(step("flow", place, key=text, hit=False))
    request = punt_request(key, ingress, pipe._admission.owner_of(key, ingress).name)
    decision = pipe._evaluator.decide(request)
    fwd = decision["forward"]
    if decision["mode"] == "nat":
        steps.extend(_nat_steps(pipe, ri, decision, place))
    else:
        steps.extend(_decision_steps(pipe, ri, fwd, place, ingress))
        steps.append(_reverse_step(pipe, decision, place, ingress))
    return {"steps": steps, "outcome": _spec_outcome(pipe, key, fwd, place)}


def _decision_steps(pipe: Pipeline, ri: RoutingInstance, spec: EntrySpec, place: str,
                    ingress: tuple[str, str] | None, reply: bool = False) -> list[Step]:
    """One direction's route (leaked from a connected network?), service member and policy verdict."""
    dst = spec["key"][2]
    m = ri.fib.match(dst)
    route = _route_step(place, m)
    other = ri.network_of(dst)
    if other is not None:
        route["fields"]["leaked_from"] = other.name
    out = [route]
    if m is not None and m[2]["type"] == ecmp.COMPOSITE:
        out.append(_service_step(place, m[2], spec, ingress, reply))
    if spec["rule"] is not None:
        out.append(_policy_step(pipe, ri, spec, place))
    return out


def _policy_step(pipe: Pipeline, ri: RoutingInstance, spec: EntrySpec, place: str) -> Step:
    return step("policy", place, network=ri.name, rule=spec["rule"], rule_text=_rule_text(pipe, ri, spec["rule"]),
                verdict="deny" if spec["reason"] == "policy_deny" else "allow")


def _service_step(place: str, nh: Nexthop, spec: EntrySpec, ingress: tuple[str, str] | None, reply: bool) -> Step:
    """The member a composite next hop resolved to (``ecmp.choose``) and why."""
    chosen = (spec["nexthop"] or {}).get("member")
    names = [m["member"] for m in nh["members"]]
    if reply:
        return step("service", place, service=nh.get("service"), members=names, member=chosen,
                    why=f"the member the flow came from ({ingress[1] if ingress else '?'})")
    over = ecmp.candidates(nh, ingress)
    proto, src, dst, sport, dport = spec["key"]
    weights = {m["member"]: f"{ecmp.weight(proto, src, dst, sport, dport, m['member']):#018x}" for m in over}
    why = "highest rendezvous (HRW) weight of the 5-tuple"
    if len(over) < len(names):
        why += " among this vrouter's own members (from the fabric: the sender chose one of them)"
    return step("service", place, service=nh.get("service"), members=names, hashed_over=list(weights),
                weights=weights, member=chosen, why=why)


def _reverse_step(pipe: Pipeline, decision: Decision, place: str, ingress: tuple[str, str]) -> Step:
    """The reverse entry a proactive decision installs with the forward one, in its routing instance."""
    rev = decision["reverse"]
    fwd_key = decision["forward"]["key"]
    if rev is None:
        return step("reverse", place, key=_key_text(reverse((decision["vrf"], *fwd_key))), mode="reactive",  # type: ignore[arg-type]
                    action=None, note="reactive mode installs no reverse entry: the reply's first packet misses")
    rvrf = decision.get("rvrf", decision["vrf"])
    rri = pipe._evaluator.instance(rvrf)
    assert rri is not None      # decide keys a reverse entry only in a routing instance it has
    kind, reason = entry_kind(rev, pipe._vifs)
    route = _decision_steps(pipe, rri, rev, place, ingress, reply=True)
    return step("reverse", place, key=_key_text((rvrf, *rev["key"])), mode="proactive", vrf=rvrf,  # type: ignore[arg-type]
                network=rri.name, action="drop" if kind == DROP else "forward", reason=reason, rule=rev["rule"],
                rule_text=_rule_text(pipe, rri, rev["rule"]), member=rev.get("member"), pin=rev.get("pin"),
                route=route[0]["fields"], service=next((s["fields"] for s in route if s["kind"] == "service"), None))


def _nat_steps(pipe: Pipeline, ri: RoutingInstance, decision: Decision, place: str) -> list[Step]:
    """A NAT decision (core/nat.py): the route out (or the floating IP in), both translations, the
    policy of the VM's network for each direction, the reverse entry in the other routing instance.
    A SNAT port is taken only when the decision is installed (``Nat.bind``, core/nat.py): none here."""
    fwd, rev = decision["forward"], decision["reverse"]
    out = [_route_step(place, ri.fib.match(fwd["key"][2]))]
    nat = fwd.get("nat")
    if nat is None or rev is None:                   # refused: no NAT for this VM, or no flow inward
        return out
    kind, holder, address = nat["binding"]
    vm_vrf = decision["vrf"] if decision["vrf"] != DEFAULT_VRF else rev.get("vrf", DEFAULT_VRF)
    vm_ri = pipe._evaluator.instance(vm_vrf)
    assert vm_ri is not None        # nat.decide judges both directions in the VM's network
    held = _snat_held(fwd["key"][0]) if kind == "snat" else ()
    rnat = rev.get("nat") or {}
    out.append(step("nat", place, method=kind, of=holder, address=int_to_ip(address),
                    forward=_translation(nat, held), reverse=_translation(rnat, ()),
                    port=AT_INSTALL if held else None,
                    out=_nat_out(fwd["nexthop"])))
    out.append(_policy_step(pipe, vm_ri, fwd, place))
    rvrf = rev.get("vrf", decision["vrf"])
    rkind, reason = ("drop", rev["reason"]) if rev["action"] != "forward" else ("nat", None)
    rheld = tuple("dport" if f == "sport" else "sport" for f in held)
    out.append(step("reverse", place, key=_key_text((rvrf, *rev["key"]), rheld), mode="nat", vrf=rvrf,  # type: ignore[arg-type]
                    network=pipe._evaluator.instance(rvrf).name, action=rkind, reason=reason,  # type: ignore[union-attr]
                    rule=rev["rule"], rule_text=_rule_text(pipe, vm_ri, rev["rule"]), policy_network=vm_ri.name,
                    nat=_translation(rnat, ())))
    return out


def _nat_out(nh: Nexthop | None) -> str:
    return f"vif {nh['vif']}" if nh is not None and nh["type"] == "vif" else EXTERNAL


def _snat_held(proto: int) -> tuple[str, ...]:
    """The forward translation's fields a SNAT port stands for (an echo's identifier: both)."""
    return ("sport", "dport") if proto == 1 else ("sport",)


def _translation(nat: dict[str, Any], held: tuple[str, ...]) -> dict[str, Any]:
    """What a NAT entry's packets leave with (the fields in ``held``: a port taken at install)."""
    return {"src": int_to_ip(nat["src"]), "dst": int_to_ip(nat["dst"]),
            **{f: AT_INSTALL if f in held else nat[f] for f in ("sport", "dport")}} if nat else {}


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
    if e.nat is not None:
        if e.nat.vif is not None:
            return {"action": "deliver", "place": place, "vif": e.nat.vif, "nat": e.nat.describe()}
        return {"action": "external", "place": place, "nat": e.nat.describe(), "why": EXTERNAL}
    nh = e.nexthop or {}
    return {"action": "tunnel", "place": place, "peer": e.peer, "encap": e.encap, "label": nh.get("label"),
            "outer_sport": e.path.port if e.path is not None else None}


def _spec_outcome(pipe: Pipeline, key: FlowKey, spec: EntrySpec, place: str) -> dict[str, Any]:
    nh = spec["nexthop"] or {}
    nat = spec.get("nat")
    if nat and spec["action"] == "forward":
        held = _snat_held(key[1]) if nat["binding"][0] == "snat" else ()
        if nh["type"] == "vif":
            return {"action": "deliver", "place": place, "vif": nh["vif"], "nat": _translation(nat, held)}
        return {"action": "external", "place": place, "nat": _translation(nat, held), "why": EXTERNAL}
    kind, reason = entry_kind(spec, pipe._vifs)
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
    if paths is not None and nh["encap"] in PROBED and nh.get("probe", True):
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
    if d.get("network"):            # a rule toward a connected network (routing between networks)
        return f"{d['action']} {d['protocol']} with network {d['network']}{ports}"
    return f"{d['action']} {d['protocol']} {d['src']} -> {d['dst']}{ports}"


def _key_text(key: FlowKey, held: tuple[str, ...] = ()) -> str:
    """A flow key as `flow -l` shows it; the ports in ``held`` are a SNAT port not taken yet."""
    vrf, proto, src, dst, sport, dport = key
    sp, dp = ("?" if "sport" in held else sport), ("?" if "dport" in held else dport)
    return f"{PROTO_NAMES.get(proto, str(proto))} {int_to_ip(src)}:{sp} -> {int_to_ip(dst)}:{dp} (vrf {vrf})"
