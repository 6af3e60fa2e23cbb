"""`testbed trace SRC_VM ...`: the thin shell of testbed/trace.py (arguments, the vrouters' introspection
sockets, ovs-appctl, the text); changes no state anywhere (docs/testbed.md, "testbed trace")."""
from __future__ import annotations

import importlib
import json
import subprocess
from pathlib import Path
from typing import Any

from testbed import fabric as fabric_desc
from testbed.commands import CommandError, command, run_arguments
from testbed.rundir import RunDir
from testbed.trace import TraceError, trace
from vrouter.core.codec.ipv4 import ip_to_int
from vrouter.io import introspect, ipc

PROTOS = {"tcp": 6, "udp": 17, "icmp": 1}
PROTO_NAMES = {v: k for k, v in PROTOS.items()}
DEFAULT_SPORT = 40000
DEFAULT_ECHO_ID = 1


def _args(p) -> None:
    p.add_argument("vm", metavar="SRC_VM", help="the VM that sends the packet (red1, blue3, ...)")
    p.add_argument("--proto", choices=sorted(PROTOS), help="tcp | udp | icmp (echo request)")
    p.add_argument("--dst", help="destination address")
    p.add_argument("--dport", type=int, help="destination port (tcp/udp; icmp: the echo id)")
    p.add_argument("--sport", type=int, help=f"source port (default {DEFAULT_SPORT}; icmp: the echo id, "
                                             f"default {DEFAULT_ECHO_ID})")
    p.add_argument("--src", help="source address (default the VM's own: another is a spoofed source)")
    p.add_argument("--pcap", help="take the packet (protocol, addresses, ports) from this pcap file")
    p.add_argument("--index", type=int, default=0, help="which packet of --pcap (from 0; default 0)")
    p.add_argument("--reply", action="store_true", help="also trace the reply from the VM the packet reaches")
    p.add_argument("--json", action="store_true", help="the steps as JSON")
    run_arguments(p)


def _address(text: str, what: str) -> str:
    try:
        ip_to_int(text)
    except ValueError:
        raise CommandError(f"{what} {text!r} is not an IPv4 address", 2) from None
    return text


def _port(value: int | None, default: int, what: str) -> int:
    v = default if value is None else value
    if not 0 <= v <= 65535:
        raise CommandError(f"{what} {v} is not a port (0-65535)", 2)
    return v


def packet_from_args(args, own_ip: str) -> dict[str, Any]:
    if args.pcap:
        return packet_from_pcap(args.pcap, args.index)
    if not args.proto or not args.dst:
        raise CommandError("give --proto and --dst (or --pcap FILE)", 2)
    proto = PROTOS[args.proto]
    if proto == 1:
        ident = _port(args.sport if args.sport is not None else args.dport, DEFAULT_ECHO_ID, "echo id")
        sport = dport = ident
    else:
        if args.dport is None:
            raise CommandError(f"--proto {args.proto} needs --dport", 2)
        sport, dport = _port(args.sport, DEFAULT_SPORT, "--sport"), _port(args.dport, 0, "--dport")
    return {"proto": proto, "src": _address(args.src or own_ip, "--src"), "dst": _address(args.dst, "--dst"),
            "sport": sport, "dport": dport}


def packet_from_pcap(path: str, index: int) -> dict[str, Any]:
    # scapy takes seconds to import: only for --pcap, not for every `testbed` command (cli imports this module)
    scapy = importlib.import_module("scapy.all")
    ICMP, IP, TCP, UDP = scapy.ICMP, scapy.IP, scapy.TCP, scapy.UDP
    try:
        packets = scapy.rdpcap(path)
    except (OSError, ValueError) as exc:
        raise CommandError(f"cannot read {path}: {exc}", 2) from None
    except Exception as exc:        # scapy raises its own Scapy_Exception for a file that is no pcap
        raise CommandError(f"cannot read {path}: {exc}", 2) from None
    if not 0 <= index < len(packets):
        raise CommandError(f"{path} has {len(packets)} packets: no --index {index}", 2)
    p = packets[index]
    if IP not in p:
        raise CommandError(f"packet {index} of {path} is not IPv4", 2)
    ip = p[IP]
    if TCP in p or UDP in p:
        l4 = p[TCP] if TCP in p else p[UDP]
        sport, dport = int(l4.sport), int(l4.dport)
    elif ICMP in p and p[ICMP].type in (0, 8):
        sport = dport = int(p[ICMP].id)
    else:
        raise CommandError(f"packet {index} of {path} is not TCP, UDP or an ICMP echo", 2)
    return {"proto": int(ip.proto), "src": ip.src, "dst": ip.dst, "sport": sport, "dport": dport}


def vm_map(rundir: Path, fabric: dict, ask) -> dict[str, dict]:
    """VM name -> {server, vif, ip, network}: the VIFs every vrouter reports, named by vms.json."""
    names = {tap: v.get("vm") for tap, v in ipc.read_vm_namespaces(rundir).items()}
    out = {}
    for s in fabric["servers"]:
        for v in ask(s["name"], "vifs"):
            vm = names.get(v["name"]) or v["name"]
            out[vm] = {"server": s["name"], "vif": v["name"], "ip": v["ip"], "network": v["network"]}
    return out


def ovs_trace(bridge: str, flow: str) -> str:
    r = subprocess.run(["ovs-appctl", "ofproto/trace", bridge, flow], capture_output=True, text=True, timeout=20)
    if r.returncode != 0:
        raise TraceError(f"ovs-appctl ofproto/trace {bridge} failed: {(r.stderr or r.stdout).strip().splitlines()[0]}")
    return r.stdout


@command("trace", help="explain one packet's way through the running testbed (changes nothing)",
         root=True, arguments=_args)
def trace_cmd(args) -> int:
    rd = RunDir(args.run_root, args.prefix)
    if not rd.fabric_file.exists():
        raise CommandError(f"no testbed with prefix {args.prefix!r} under {rd.root} (start one with 'testbed up')")
    fabric = fabric_desc.read(rd.fabric_file)

    def ask(server: str, op: str, **kw):
        try:
            return introspect.query(rd.path, server, op, **kw)
        except introspect.IntrospectError as exc:
            raise TraceError(f"vrouter {server}: {exc}") from None

    try:
        vms = vm_map(rd.path, fabric, ask)
        if args.vm not in vms:
            raise CommandError(f"unknown VM {args.vm!r} (known: {', '.join(sorted(vms)) or 'none'})", 2)
        pkt = packet_from_args(args, vms[args.vm]["ip"])
        result = trace(fabric, vms, ask, ovs_trace, args.vm, pkt, reply=args.reply)
    except TraceError as exc:
        raise CommandError(str(exc)) from None
    except subprocess.TimeoutExpired:
        raise CommandError("ovs-appctl did not answer in time") from None
    print(json.dumps(result, indent=1) if args.json else format_trace(result), end="" if not args.json else "\n")
    return 0


# ---------------------------------------------------------------- text
def _pkt_text(p: dict) -> str:
    name = PROTO_NAMES.get(p["proto"], str(p["proto"]))
    if p["proto"] == 1:
        return f"icmp echo {p['src']} -> {p['dst']} id {p['sport']}"
    return f"{name} {p['src']}:{p['sport']} -> {p['dst']}:{p['dport']}"


def _rule(f: dict) -> str:
    return f"rule {f['rule']} ({f['rule_text']})" if f.get("rule") is not None else ""


def step_text(s: dict) -> str:
    k, f = s["kind"], s["fields"]
    if k == "vif":
        return f"interface {f['vif']} ({f['ip']}, network {f['network']})"
    if k == "vrf":
        return f"routing instance {f['vrf']} ({f['network']})"
    if k == "label":
        return f"{f['encap']} label {f['label']} -> routing instance {f['vrf']} ({f['network']})"
    if k == "flow":
        return _flow_text(f)
    if k == "route":
        if f["prefix"] is None:
            return "  route: none (no route in this routing instance)"
        return f"  route: {_route_text(f)}"
    if k == "policy":
        return f"  policy of {f['network']}: {f['verdict']} by {_rule(f)}"
    if k == "service":
        return f"  service {f['service']}: member {f['member']} ({_service_why(f)})"
    if k == "nat":
        port = f", the port {f['port']}" if f.get("port") else ""
        return (f"  NAT {f['method']} {f['address']} (of {f['of']}){port}: leaves as {_nat_text(f['forward'])}, "
                f"the reply enters as {_nat_text(f['reverse'])}; {f['out']}")
    if k == "reverse":
        return _reverse_text(f)
    if k == "encap":
        port = f["outer_sport"] if f["outer_sport"] is not None else f"unknown ({f.get('note')})"
        slot = f" (path slot {f['slot']})" if f.get("slot") is not None else ""
        return f"encapsulation {f['encap']} label {f['label']} to {f['peer']}, outer source port {port}{slot}"
    if k == "switch":
        return _switch_text(f)
    if k == "external":
        return f"external port: leaves as {_nat_text(f['nat'] or {})}, {f['why']}"
    if k == "tap":
        return f"TAP {f['tap']} of VM {f['vm'] or '?'}"
    return f"{k}: {f}"


def _route_text(f: dict) -> str:
    nh = f["nexthop"]
    via = {"vif": lambda: f"vif {nh.get('vif')}",
           "tunnel": lambda: f"tunnel to {nh.get('peer')} label {nh.get('label')} ({nh.get('encap')})",
           "composite": lambda: f"service {nh.get('service')} (composite of "
                                f"{', '.join(m['member'] for m in nh.get('members', []))})",
           "external": lambda: "external (the gateway, no tunnel)"}
    leak = f", leaked from network {f['leaked_from']} by policy" if f.get("leaked_from") else ""
    return f"{f['prefix']} -> {via.get(nh['type'], lambda: nh['type'])()}{leak}"


def _service_why(f: dict) -> str:
    if "weights" not in f:
        return f["why"]
    return f"{f['why']} over {', '.join(f'{m} {w}' for m, w in f['weights'].items())}"


def _nat_text(t: dict) -> str:
    return f"{t.get('src')}:{t.get('sport')} -> {t.get('dst')}:{t.get('dport')}"


def _reverse_text(f: dict) -> str:
    if f["action"] is None:
        return f"  reverse entry: none ({f['note']})"
    why = f", {f['reason']}" if f.get("reason") else ""
    policy = f.get("policy_network") or f.get("network")
    text = f"  reverse entry installed with it: {f['key']} {f['action']}{why} by {policy}'s {_rule(f)}"
    route = f.get("route")
    if route and route.get("prefix"):
        text += f"; its route {_route_text(route)}"
    if f.get("pin"):
        text += f"; member {f['member']}, pinned to {f['pin']} (its reply is taken only from there)"
    if f.get("nat"):
        text += f"; translated back to {_nat_text(f['nat'])}"
    return text


def _flow_text(f: dict) -> str:
    if not f["hit"]:
        return f"flow table: miss for {f['key']} -> slow path (agent) decides:"
    rev = f" <=> {f['reverse_index']}" if f.get("reverse_index") is not None else ""
    extra = f", {f['reason']}" if f.get("reason") else ""
    rule = f", {_rule(f)}" if f.get("rule") is not None else ""
    rule += f", member {f['member']}" if f.get("member") else ""
    rule += f", pinned to {f['pin']}" if f.get("pin") else ""
    rule += f", NAT to {_nat_text(f['nat'])}" if f.get("nat") else ""
    return (f"flow table: hit entry {f['index']}{rev} ({f['role']} entry, {f['action']}{extra}{rule}, "
            f"{f['packets']} packets) for {f['key']}")


def _switch_text(f: dict) -> str:
    rule = f"rule '{f['rule']['match']}' priority {f['rule']['priority']}" if f.get("rule") else "no rule"
    text = f"{f['bridge']} in_port {f['in_port']}: {rule}"
    e = f.get("ecmp")
    if e:
        bucket = e.get("bucket")
        text += f", select group dp_hash {e['dp_hash']} -> bucket {bucket if bucket is not None else 'unknown'}"
    if f.get("out_port") is not None:
        text += f" -> port {f['out_port']} ({f.get('to') or '?'})"
    return text


def outcome_text(o: dict) -> str:
    a = o["action"]
    if a == "deliver":
        return f"delivered to VM {o.get('vm') or '?'} (TAP {o['vif']} on {o['place']})"
    if a == "drop":
        rule = f", {_rule(o)}" if o.get("rule") is not None else ""
        return f"dropped at {o.get('place', '?')}: {o['reason']} ({o['why']}){rule}"
    if a == "external":
        return f"leaves {o['place']} as {_nat_text(o['nat'])}, {o['why']}"
    if a == "answer":
        return f"answered by the vrouter on {o['place']}: {o['what']}"
    if a == "hold":
        return f"held at {o['place']}: its flow waits for the agent's decision"
    return f"{a}: {o.get('why', '')}"


def _direction_text(title: str, d: dict) -> list[str]:
    lines = [f"{title}: {d['vm']} {_pkt_text(d['packet'])} (flow mode {d.get('mode')})"]
    for i, s in enumerate(d["steps"], 1):
        lines.append(f"{i:3}. {s['place']:<8} {step_text(s)}")
    lines.append(f"  => {outcome_text(d['outcome'])}")
    return lines


def format_trace(result: dict) -> str:
    lines = _direction_text("trace", result["forward"])
    rep = result.get("reply")
    if rep is not None:
        lines.append("")
        if "steps" in rep:
            lines += _direction_text("reply", rep)
            lines.append(f"  reply {rep['reverse_entry']}")
        else:
            lines.append(f"reply: {outcome_text(rep['outcome'])}")
    return "\n".join(lines) + "\n"
