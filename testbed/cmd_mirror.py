"""`testbed net mirror ...`: mirror sessions at run time, through the VNC (controllers/vnc_mirror.py).

    testbed net mirror add m1 --vm red1 --pcap                      what red1 sends and receives, to
                                                                    <rundir>/mirror/m1-<server>.pcap
    testbed net mirror add m2 --network red --analyzer red3 [--direction ingress] [--rate 5000]
    testbed net mirror add m3 --rule network=red,protocol=tcp,dst_port=80 --pcap
    testbed net mirror rm m1
    testbed net mirror list [--json]

The VNC checks a session as a topology's `mirrors:` entry (docs/topology-format.md, "Mirroring") and
pushes it to the vrouters holding its source; their flow entries are re-marked with the new config,
so existing flows are copied (or stop being copied) from the next packet on.
"""
from __future__ import annotations

import json

from testbed.commands import CommandError, command, run_arguments
from testbed.net_cmd import vnc_call
from testbed.vr import rundir_path
from vrouter.core.mirrorschema import DIRECTIONS, RULE_FIELDS

ACTIONS = ("add", "rm", "list")


def _arguments(p):
    p.add_argument("action", choices=ACTIONS, help="add a session, remove it, or list the sessions")
    p.add_argument("name", nargs="?", help="the session")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--vm", help="add: mirror this VM's interface")
    src.add_argument("--network", help="add: mirror every VM interface of this network")
    src.add_argument("--rule", help="add: mirror the flows of a network matching a rule, as "
                                    "network=red,protocol=tcp,dst_port=80[,src=CIDR,dst=CIDR,src_port=P]")
    to = p.add_mutually_exclusive_group()
    to.add_argument("--analyzer", help="add: send VXLAN-in-UDP copies to this VM")
    to.add_argument("--pcap", action="store_true", help="add: write <rundir>/mirror/<session>-<server>.pcap")
    p.add_argument("--direction", choices=DIRECTIONS, default="both",
                   help="add: ingress (what the VMs send), egress (what they receive) or both (default)")
    p.add_argument("--rate", type=float, default=None, help="add: copies per second per vrouter (default 10000)")
    p.add_argument("--json", action="store_true", help="list: the sessions as JSON")
    run_arguments(p)


def parse_rule(text: str) -> dict:
    """'network=red,protocol=tcp,dst_port=80' -> the rule source's mapping (the VNC checks the values)."""
    rule: dict = {}
    for part in (x.strip() for x in text.split(",") if x.strip()):
        key, eq, value = part.partition("=")
        if not eq or key not in ("network", *RULE_FIELDS):
            raise CommandError(f"--rule: {part!r} is not KEY=VALUE with KEY one of network, "
                               f"{', '.join(RULE_FIELDS)}", code=2)
        rule[key] = int(value) if value.isdigit() and key.endswith("port") else value
    return rule


def session_item(args) -> dict:
    """The session `net mirror add` asks for, in the topology's form."""
    if not args.name:
        raise CommandError("net mirror add: missing the session's name", code=2)
    if not (args.vm or args.network or args.rule):
        raise CommandError("net mirror add: give the source: --vm, --network or --rule", code=2)
    if not (args.analyzer or args.pcap):
        raise CommandError("net mirror add: give the sink: --analyzer VM or --pcap", code=2)
    source = {"vm": args.vm} if args.vm else {"network": args.network} if args.network else \
        {"rule": parse_rule(args.rule)}
    item = {"name": args.name, "source": source,
            "to": {"analyzer": args.analyzer} if args.analyzer else {"pcap": True}, "direction": args.direction}
    if args.rate is not None:
        item["rate"] = args.rate
    return item


def format_sessions(sessions: list) -> str:
    if not sessions:
        return "no mirror sessions\n"
    out = []
    for s in sessions:
        (kind, value), = s["source"].items()
        src = ",".join(f"{k}={v}" for k, v in value.items()) if isinstance(value, dict) else value
        to = f"analyzer {s['to']['analyzer']}" if "analyzer" in s["to"] else "pcap"
        out.append(f"{s['name']} (VNI {s['id']}): {kind} {src}, {s['direction']}, to {to}, {s['rate']:g} copies/s\n")
    return "".join(out)


@command("net mirror", help="mirror a VM, a network or a rule's flows to an analyzer VM or a pcap: add, rm, list",
         root=True, arguments=_arguments)
def mirror_command(args) -> int:
    rundir = rundir_path(args.prefix, args.run_root)
    if args.action == "list":
        sessions = vnc_call(rundir, "mirror", "list", None)
        print(json.dumps(sessions, indent=1) if args.json else format_sessions(sessions), end="\n" if args.json else "")
        return 0
    if args.action == "rm":
        if not args.name:
            raise CommandError("net mirror rm: missing the session's name", code=2)
        result = vnc_call(rundir, "mirror", "remove", args.name)
        what = f"mirror session {args.name} removed"
    else:
        result = vnc_call(rundir, "mirror", "add", session_item(args))
        what = f"mirror session {args.name} added"
        if args.pcap:
            what += f" (pcap: {rundir}/mirror/{args.name}-<server>.pcap)"
    print(f"{what} (generation {result['generation']}, servers updated: {', '.join(result['servers']) or 'none'})")
    return 0
