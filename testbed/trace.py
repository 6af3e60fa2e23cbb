"""`testbed trace`: one packet's way through the running testbed, without changing any state.

The steps are joined here; every decision is asked of what makes it: the source vrouter explains
the packet from its VM (the `explain` introspection op runs vrouter/core/explain.py on the live
pipeline: VIF, routing instance, flow table, the agent's route + policy decision, encapsulation and
outer source port); the fabric is asked with `ovs-appctl ofproto/trace` switch by switch, each
output port mapped through fabric.json's port table to the next switch, until a server port; then
the destination vrouter explains the tunnel packet. The result is a list of steps (kind, place,
fields) and the outcome, so later step kinds join the same list.

ECMP: the leaves' select groups use OVS's dp_hash selection method (OVS 3.x default), where the
datapath hashes the packet and recirculates; ofproto/trace stops at `hash(l4(0)),recirc(ID)`. The
trace then computes the datapath's hash of that outer 5-tuple (testbed/ovs_hash.py, checked against
the values the datapath shows in `dpctl/dump-flows`) and resumes the trace at that recirculation id
with that dp_hash, so OVS itself picks the bucket. A recirculation context exists only while the
datapath uses it (traffic from that port through the group in the last seconds; path probes keep
it for every tunnel peer in use): without one the spine is reported unknown.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from testbed import ovs_hash
from vrouter.core.codec.outer import MPLSOUDP_PORT, VXLAN_PORT
from vrouter.core.explain import step

MAX_HOPS = 8
OUTER_TTL = 64
Ask = Callable[..., Any]              # ask(server, op, **args) -> result (introspection)
OvsTrace = Callable[[str, str], str]  # ovs(bridge, flow) -> ofproto/trace output


class TraceError(Exception):
    """A one-line reason the trace cannot be made (unknown VM, no vrouter answer, ...)."""


# ---------------------------------------------------------------- ofproto/trace output
_RECIRC = re.compile(r"recirc\((0x[0-9a-f]+)\)")
_OUTPUT = re.compile(r"^\s+output:(\d+)\s*$", re.M)
_BUCKET = re.compile(r"-> using bucket (\d+)")
_RULE = re.compile(r"^\s*(\d+)\. (?:(.*?), )?priority (\d+)", re.M)


def parse_ofproto_trace(text: str) -> dict[str, Any]:
    """What one ofproto/trace run says: the rules matched (table, match, priority), the output
    ports, the group bucket used, a pending recirculation (dp_hash select group), the datapath
    actions, and whether the recirculation context was missing."""
    actions = ""
    for line in text.splitlines():
        if line.startswith("Datapath actions:"):
            actions = line.split(":", 1)[1].strip()
    recirc = _RECIRC.search(actions)
    bucket = _BUCKET.search(text)
    return {"rules": [{"table": int(t), "match": m, "priority": int(p)} for t, m, p in _RULE.findall(text)],
            "outputs": [int(p) for p in _OUTPUT.findall(text)],
            "bucket": int(bucket.group(1)) if bucket else None,
            "recirc": recirc.group(1) if recirc and "hash(" in actions else None,
            "no_context": "Recirculation context not found" in text,
            "datapath_actions": actions}


# ---------------------------------------------------------------- the fabric walk
def outer_packet(fabric: dict, src_server: str, out: dict) -> dict[str, Any]:
    """The underlay packet a tunnel outcome of the source vrouter puts on the wire."""
    servers = {s["name"]: s for s in fabric["servers"]}
    by_ip = {s["ip"]: s for s in fabric["servers"]}
    src, dst = servers[src_server], by_ip.get(out["peer"])
    if dst is None:
        raise TraceError(f"tunnel peer {out['peer']} is no server of this fabric")
    pkt = {"src": src["ip"], "dst": dst["ip"], "dl_src": src["mac"], "dl_dst": dst["mac"]}
    if out["encap"] == "mplsogre":
        return {**pkt, "proto": 47, "sport": 0, "dport": 0}
    return {**pkt, "proto": 17, "sport": out["outer_sport"],
            "dport": MPLSOUDP_PORT if out["encap"] == "mplsoudp" else VXLAN_PORT}


def ovs_flow(in_port: int, pkt: dict) -> str:
    """The ofproto/trace flow of an outer packet arriving on ``in_port`` (every field the switches
    match or hash on: addresses, protocol, ports)."""
    flow = (f"in_port={in_port},dl_type=0x0800,nw_proto={pkt['proto']},dl_src={pkt['dl_src']},"
            f"dl_dst={pkt['dl_dst']},nw_src={pkt['src']},nw_dst={pkt['dst']},nw_ttl={OUTER_TTL}")
    if pkt["proto"] == 17:
        flow += f",udp_src={pkt['sport']},udp_dst={pkt['dport']}"
    return flow


def follow_fabric(fabric: dict, src_server: str, pkt: dict, ovs: OvsTrace) -> tuple[list[dict], str | None, str]:
    """Switch by switch from the source server's leaf port: (steps, server reached or None, why not)."""
    switches = {s["name"]: s for s in fabric["switches"]}
    server = {s["name"]: s for s in fabric["servers"]}[src_server]
    name, in_port = server["leaf"], server["leaf_port"]
    steps: list[dict] = []
    for _ in range(MAX_HOPS):
        sw = switches[name]
        flow = ovs_flow(in_port, pkt)
        first = parse_ofproto_trace(ovs(sw["bridge"], flow))
        fields: dict[str, Any] = {"bridge": sw["bridge"], "in_port": in_port,
                                  "rule": first["rules"][0] if first["rules"] else None}
        result = first
        if first["recirc"] is not None:
            dp_hash = ovs_hash.dp_hash(pkt["src"], pkt["dst"], pkt["proto"], pkt["sport"], pkt["dport"])
            fields["ecmp"] = {"method": "dp_hash", "dp_hash": f"{dp_hash:#010x}", "recirc": first["recirc"]}
            result = parse_ofproto_trace(ovs(sw["bridge"], f"recirc_id={first['recirc']},dp_hash={dp_hash:#x},{flow}"))
            if result["no_context"]:
                fields["ecmp"]["bucket"] = None
                steps.append(step("switch", name, **fields))
                return steps, None, (f"{name}: OVS has no live recirculation context {first['recirc']} (no recent "
                                     "traffic from this port through the group): the ECMP choice is unknown")
            fields["ecmp"]["bucket"] = result["bucket"]
        if not result["outputs"]:
            fields["out_port"] = None
            steps.append(step("switch", name, **fields))
            return steps, None, f"{name} drops the packet (datapath actions: {result['datapath_actions'] or 'none'})"
        port = result["outputs"][-1]
        peer = sw["ports"].get(str(port), {})
        fields.update(out_port=port, to=peer.get("peer"))
        steps.append(step("switch", name, **fields))
        if peer.get("kind") == "server":
            return steps, peer["peer"], ""
        if peer.get("kind") != "fabric":
            return steps, None, f"{name} sends it out of port {port}, which fabric.json does not know"
        name, in_port = peer["peer"], peer["peer_port"]
    return steps, None, f"more than {MAX_HOPS} switches: a loop?"


# ---------------------------------------------------------------- one direction, end to end
def trace_direction(fabric: dict, vms: dict, ask: Ask, ovs: OvsTrace, vm: str, pkt: dict) -> dict[str, Any]:
    """From VM ``vm``'s interface to a TAP (or the place it stops). ``vms``: VM name -> {server, vif};
    ``pkt``: proto, src, dst, sport, dport (strings for addresses)."""
    where = vms[vm]
    args = {k: pkt[k] for k in ("proto", "src", "dst", "sport", "dport")}
    src = ask(where["server"], "explain", at="vif", vif=where["vif"], **args)
    steps = list(src["steps"])
    out = src["outcome"]
    result = {"vm": vm, "packet": pkt, "mode": src.get("mode"), "steps": steps, "outcome": out,
              "source": {"steps": src["steps"], "outcome": out}}
    if out["action"] != "tunnel":
        return _finish(result, vms, out)
    steps.append(step("encap", where["server"], encap=out["encap"], label=out["label"], peer=out["peer"],
                      outer_sport=out.get("outer_sport"), slot=out.get("slot"), note=out.get("note")))
    if out.get("outer_sport") is None and out["encap"] != "mplsogre":
        result["outcome"] = {"action": "unknown", "why": out.get("note") or "no outer source port"}
        return result
    outer = outer_packet(fabric, where["server"], out)
    hops, reached, why = follow_fabric(fabric, where["server"], outer, ovs)
    steps.extend(hops)
    result["outer"] = outer
    if reached is None:
        result["outcome"] = {"action": "fabric_drop" if "drops" in why else "unknown", "why": why}
        return result
    peer_server = {s["ip"]: s["name"] for s in fabric["servers"]}[out["peer"]]
    if reached != peer_server:
        result["outcome"] = {"action": "misdelivered", "why": f"the fabric delivers it to {reached}, not {peer_server}"}
        return result
    dst = ask(reached, "explain", at="fabric", outer_src=outer["src"], encap=out["encap"], label=out["label"], **args)
    steps.extend(dst["steps"])
    result["destination"] = {"steps": dst["steps"], "outcome": dst["outcome"]}
    return _finish(result, vms, dst["outcome"])


def _finish(result: dict, vms: dict, out: dict) -> dict:
    if out["action"] == "deliver":
        vm = next((name for name, w in vms.items() if w["vif"] == out["vif"] and w["server"] == out["place"]), None)
        result["steps"].append(step("tap", out["place"], tap=out["vif"], vm=vm))
        result["outcome"] = {**out, "vm": vm}
    elif out["action"] == "external":       # NAT: toward the gateway, outside the overlay (not traced on)
        result["steps"].append(step("external", out["place"], nat=out.get("nat"), why=out["why"]))
        result["outcome"] = out
    else:
        result["outcome"] = out
    return result


def mirrored(pkt: dict) -> dict:
    """The reply of ``pkt``: addresses and ports swapped (an ICMP echo keeps its id in both)."""
    return {**pkt, "src": pkt["dst"], "dst": pkt["src"], "sport": pkt["dport"], "dport": pkt["sport"]}


def trace(fabric: dict, vms: dict, ask: Ask, ovs: OvsTrace, vm: str, pkt: dict, reply: bool = False) -> dict:
    """The forward trace, and with ``reply`` the mirrored packet's from the VM it reaches."""
    if vm not in vms:
        raise TraceError(f"unknown VM {vm!r} (known: {', '.join(sorted(vms)) or 'none'})")
    fwd = trace_direction(fabric, vms, ask, ovs, vm, pkt)
    out: dict[str, Any] = {"forward": fwd}
    if reply:
        back_vm = fwd["outcome"].get("vm") if fwd["outcome"]["action"] == "deliver" else None
        if back_vm is None:
            out["reply"] = {"outcome": {"action": "none", "why": "the packet reaches no VM: nothing replies"}}
        else:
            out["reply"] = trace_direction(fabric, vms, ask, ovs, back_vm, mirrored(pkt))
            out["reply"]["reverse_entry"] = reverse_verdict(out["reply"])
    return out


def reverse_verdict(rep: dict) -> str:
    """Whether the reply is caught by a reverse entry, in words."""
    flows = [s for s in rep["steps"] if s["kind"] == "flow"]
    if not flows:
        return "the reply never reaches a flow table"
    first = flows[0]["fields"]
    if first["hit"] and first.get("role") == "reverse":
        return f"hits the proactive reverse entry {first['index']} at {flows[0]['place']}: no slow path"
    if first["hit"]:
        return f"hits {first.get('role')} entry {first['index']} at {flows[0]['place']}"
    if rep.get("mode") == "reactive":
        return f"misses at {flows[0]['place']}: reactive mode installs no reverse entry, the reply is punted"
    return (f"misses at {flows[0]['place']}: no forward entry there yet; once the forward packet is set up "
            "the proactive reverse entry catches it")
