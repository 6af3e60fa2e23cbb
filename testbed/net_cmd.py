"""`testbed net ...`: run-time changes of the overlay, through the VNC (reach every agent within 1 s).

    testbed net add-vm red4 --network red --server srv2 --address 192.168.1.14
    testbed net rm-vm red4
    testbed net policy red --file rules.yaml        (--clear: back to allow-all)
    testbed net mode reactive
    testbed net flow-limit --vm red1 5000           (--network red 20000; default: back to the default)
    testbed net flow-limit --default-vm 16384       (--default-network N: the limit of those without their own)
    testbed net paths [--server srv1] [--json]      what the vrouters reported of the paths they repaired
    testbed net floating-ip add red3 198.51.100.13  (rm red3: take it away; a gateway topology only)
    testbed net snat red on                         (off: red's VMs without a floating IP have no way out)
    testbed net service add web --network red --address 192.168.1.100 --members red2,red3
    testbed net service add-member web red4 | rm-member web red2 | rm web | list [--json]

A VM added from this command gets a named network namespace `<prefix>-<vm>` (the Mininet network
lives in the testbed daemon): `testbed exec red4 ping 192.168.1.11` (or `ip netns exec vt-red4 ...`).
VMs added in-process (`testbed.overlay.add_vm(tb, ...)`) become Mininet hosts.
"""
from __future__ import annotations

import json
import subprocess
import time

import yaml

from testbed import baremetal, gateway, namespaces
from testbed.commands import CommandError, command, group, run_arguments
from testbed.vr import rundir_path
from vrouter.io import introspect, ipc
from vrouter.io.control import AdminClient, VncError

group("net", "run-time changes of the overlay: add-vm, rm-vm, policy, mode, flow-limit, floating-ip, snat, flood, "
             "records, service; the VNC's path reports")


def _admin(rundir):
    try:
        return AdminClient(str(rundir / "vnc.sock"))
    except VncError as exc:
        raise CommandError(f"the VNC is not reachable: {exc}") from None


def vnc_call(rundir, method, *params):
    """`AdminClient.<method>(*params)` on the testbed's VNC; a refusal is a CommandError with the
    VNC's message."""
    with _admin(rundir) as vnc:
        try:
            return getattr(vnc, method)(*params)
        except VncError as exc:
            raise CommandError(str(exc), code=2) from None


def _rundir(args):
    return rundir_path(args.prefix, args.run_root)


def _add_vm_args(p):
    p.add_argument("name")
    p.add_argument("--network", required=True)
    p.add_argument("--server", required=True)
    p.add_argument("--address", required=True)
    p.add_argument("--mac")
    p.add_argument("--wait", type=float, default=10.0, help="seconds to wait for the VM's interface")
    run_arguments(p)


@command("net add-vm", help="add a VM at run time", root=True, arguments=_add_vm_args)
def add_vm_command(args) -> int:
    rundir = _rundir(args)
    netns = f"{args.prefix}-{args.name}"
    r = subprocess.run(["ip", "netns", "add", netns], capture_output=True, text=True)
    if r.returncode != 0:
        raise CommandError(f"cannot create namespace {netns}: {r.stderr.strip()}")
    try:
        vnc_call(rundir, "add_vm", args.name, args.network, args.server, args.address, args.mac)
        vm = next(v for v in vnc_call(rundir, "dump")["vms"] if v["name"] == args.name)
        ipc.update_vm_namespaces(rundir, {vm["tap"]: {"vm": args.name, "netns": f"/run/netns/{netns}"}})
    except BaseException:
        subprocess.run(["ip", "netns", "del", netns], capture_output=True)
        raise
    deadline = time.monotonic() + args.wait
    state = "no answer from the vrouter"
    while time.monotonic() < deadline:
        try:
            vif = next((v for v in introspect.query(rundir, args.server, "vifs") if v["name"] == vm["tap"]), None)
            state = vif["state"] if vif else "not configured yet"
            if state == "up":
                baremetal.sync_rundir(rundir, vnc_call(rundir, "dump"))     # the hosts learn the new VM
                print(f"{args.name}: {vm['address']} in {args.network} on {args.server} "
                      f"(interface {vm['tap']}, namespace {netns})")
                return 0
        except introspect.IntrospectError as exc:
            state = str(exc)
        time.sleep(0.2)
    raise CommandError(f"{args.name} was added but its interface is not up after {args.wait:g} s: {state}")


def _rm_vm_args(p):
    p.add_argument("name")
    run_arguments(p)


@command("net rm-vm", help="remove a VM at run time", root=True, arguments=_rm_vm_args)
def rm_vm_command(args) -> int:
    rundir = _rundir(args)
    vm = next((v for v in vnc_call(rundir, "dump")["vms"] if v["name"] == args.name), None)
    if vm is None:
        raise CommandError(f"unknown VM {args.name!r}", code=2)
    vnc_call(rundir, "remove_vm", args.name)
    baremetal.sync_rundir(rundir, vnc_call(rundir, "dump"))
    ipc.update_vm_namespaces(rundir, remove=(vm["tap"],))
    netns = f"{args.prefix}-{args.name}"
    namespaces.end_processes([namespaces.NAMED_NETNS / netns])  # what users started in the VM goes too
    subprocess.run(["ip", "netns", "del", netns], capture_output=True)  # only exists if added by add-vm
    print(f"{args.name} removed")
    return 0


def _policy_args(p):
    p.add_argument("network")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--file", help="YAML: {default: allow|deny, rules: [{action, protocol, src, dst, "
                                    "src_port, dst_port, network}, ...]}; an allow rule naming another "
                                    "network whose policy names this one back connects the two")
    src.add_argument("--clear", action="store_true", help="remove the policy (allow everything)")
    run_arguments(p)


def load_rules(path: str):
    try:
        with open(path, encoding="utf-8") as f:
            doc = yaml.safe_load(f)
    except OSError as exc:
        raise CommandError(f"cannot read {path}: {exc.strerror}", code=2) from None
    except yaml.YAMLError as exc:
        raise CommandError(f"{path} is not valid YAML: {str(exc).splitlines()[0]}", code=2) from None
    if isinstance(doc, list):
        doc = {"rules": doc}
    if not isinstance(doc, dict):
        raise CommandError(f"{path}: expected a mapping with 'default' and 'rules' (or a list of rules)", code=2)
    return doc


@command("net policy", help="replace a virtual network's policy", root=True, arguments=_policy_args)
def policy_command(args) -> int:
    policy = None if args.clear else load_rules(args.file)
    result = vnc_call(_rundir(args), "set_policy", args.network, policy)
    print(f"policy of {args.network} set (generation {result['generation']}, "
          f"servers updated: {', '.join(result['servers']) or 'none'})")
    return 0


def _mode_args(p):
    p.add_argument("mode", choices=("proactive", "reactive"))
    run_arguments(p)


@command("net mode", help="flow setup mode of every vrouter: proactive (forward+reverse) or reactive",
         root=True, arguments=_mode_args)
def mode_command(args) -> int:
    result = vnc_call(_rundir(args), "set_flow_mode", args.mode)
    print(f"flow mode {args.mode} (generation {result['generation']})")
    return 0


FLOW_LIMIT_TARGETS = {"vm": "VM {}", "network": "network {}", "default-vm": "every VM without its own limit",
                      "default-network": "every network without its own limit"}


def parse_limit(text: str) -> int | None:
    """A flow limit on the command line: a whole number >= 1, or `default` (None)."""
    if text == "default":
        return None
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise CommandError(f"flow limit must be a whole number >= 1 or 'default', got {text!r}", code=2)
    return value


def flow_limit_target(args) -> tuple[str, str | None]:
    """(target_kind, name) of `net flow-limit`'s options, as `set_flow_limit` takes them."""
    if args.vm is not None:
        return "vm", args.vm
    if args.network is not None:
        return "network", args.network
    return ("default-vm" if args.default_vm else "default-network"), None


def _flow_limit_args(p):
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--vm", metavar="NAME", help="the limit of one VM (entries its interface may own; "
                                                     "a proactive pair is two entries)")
    target.add_argument("--network", metavar="NAME", help="the limit of one virtual network (all its entries "
                                                          "on one vrouter)")
    target.add_argument("--default-vm", action="store_true", help="the limit of every VM without its own "
                                                                  "(default: a quarter of the table)")
    target.add_argument("--default-network", action="store_true", help="the limit of every network without "
                                                                       "its own (default: half of the table)")
    p.add_argument("limit", metavar="LIMIT|default", help="entries (>= 1), or 'default': back to the default")
    run_arguments(p)


@command("net flow-limit", help="per-VM / per-network flow entry limits at run time (Tungsten Fabric's "
         "max_vm_flows)", root=True, arguments=_flow_limit_args)
def flow_limit_command(args) -> int:
    limit = parse_limit(args.limit)
    kind, name = flow_limit_target(args)
    result = vnc_call(_rundir(args), "set_flow_limit", kind, name, limit) or {}
    what = FLOW_LIMIT_TARGETS[kind].format(name)
    print(f"flow limit of {what}: {'the default' if limit is None else f'{limit} entries'} "
          f"(generation {result.get('generation', '?')}, servers updated: "
          f"{', '.join(result.get('servers') or []) or 'none'})")
    return 0


def _paths_args(p):
    p.add_argument("--server", help="one server's reports (default: every server that sent some)")
    p.add_argument("--json", action="store_true", help="the VNC's record as JSON")
    run_arguments(p)


def format_path_reports(reports: dict) -> str:
    """The VNC's record of path repairs: per server the slots still reported dead, then recent events."""
    if not reports:
        return "no path reports\n"
    lines = []
    for server, r in sorted(reports.items()):
        lines.append(f"{server}: {r['received']} events, {len(r['dead'])} paths reported dead")
        for ev in r["dead"]:
            lines.append(f"  dead: source port {ev.get('port')} to {ev.get('peer')} ({ev.get('encap')}, slot "
                         f"{ev.get('slot')}), {ev.get('flows')} flows moved")
        for ev in r["events"][-10:]:
            when = time.strftime("%H:%M:%S", time.localtime(ev.get("time", 0)))
            lines.append(f"  {when} {ev.get('event'):<5} port {ev.get('port')} to {ev.get('peer')} "
                         f"({ev.get('encap')}, slot {ev.get('slot')}, {ev.get('flows')} flows)")
    return "\n".join(lines) + "\n"


@command("net paths", help="path repairs the vrouters reported to the VNC (outer source ports dead or alive "
         "again toward a peer)", arguments=_paths_args)
def paths_command(args) -> int:
    reports = vnc_call(_rundir(args), "path_reports", args.server)
    if args.json:
        print(json.dumps(reports, indent=1, sort_keys=True))
    else:
        print(format_path_reports(reports), end="")
    return 0


def sync_gateway(rundir) -> None:
    """The gateway's routes to the floating and SNAT addresses as the VNC has them now
    (testbed/gateway.py), set in the gateway's namespace."""
    dump = vnc_call(rundir, "dump")
    fabric = json.loads((rundir / "fabric.json").read_text())
    handle = rundir / "netns" / fabric["gateway"]["name"]       # held by testbed/namespaces.py

    def run(cmd: str) -> str:
        r = subprocess.run(["nsenter", f"--net={handle}", "sh", "-c", cmd], capture_output=True, text=True)
        return r.stdout + r.stderr
    gateway.sync_routes(run, fabric["gateway"]["floating"], dump["gateway_routes"])


def _floating_args(p):
    p.add_argument("action", choices=("add", "rm"))
    p.add_argument("vm")
    p.add_argument("address", nargs="?", help="the floating IP (add): inside the gateway's floating range")
    run_arguments(p)


@command("net floating-ip", help="give a VM a floating IP (1:1 NAT, reachable from outside) or take it away",
         root=True, arguments=_floating_args)
def floating_ip_command(args) -> int:
    if (args.action == "add") != (args.address is not None):
        raise CommandError("usage: net floating-ip add VM ADDRESS | net floating-ip rm VM", code=2)
    rundir = _rundir(args)
    result = vnc_call(rundir, "set_floating_ip", args.vm, args.address)
    sync_gateway(rundir)
    what = f"floating IP {args.address}" if args.address else "no floating IP"
    print(f"{args.vm}: {what} (generation {result['generation']}, servers updated: "
          f"{', '.join(result['servers']) or 'none'})")
    return 0


def _snat_args(p):
    p.add_argument("network")
    p.add_argument("state", choices=("on", "off"))
    run_arguments(p)


@command("net snat", help="source NAT for a network's VMs without a floating IP (through their server's SNAT "
         "address)", root=True, arguments=_snat_args)
def snat_command(args) -> int:
    result = vnc_call(_rundir(args), "set_snat", args.network, args.state == "on")
    print(f"source NAT of {args.network} {args.state} (generation {result['generation']}, servers updated: "
          f"{', '.join(result['servers']) or 'none'})")
    return 0


SERVICE_ACTIONS = ("add", "rm", "add-member", "rm-member", "list")


def _service_args(p):
    p.add_argument("action", choices=SERVICE_ACTIONS, help="add a service, remove it, add or remove one member, "
                                                           "or list the services")
    p.add_argument("name", nargs="?", help="the service")
    p.add_argument("vm", nargs="?", help="the member VM (add-member, rm-member)")
    p.add_argument("--network", help="add: the service's virtual network")
    p.add_argument("--address", help="add: the service address (in the network, no VM's)")
    p.add_argument("--members", help="add: the member VMs, comma-separated (e.g. red2,red3)")
    p.add_argument("--json", action="store_true", help="list: the VNC's services as JSON")
    run_arguments(p)


def service_call(args) -> tuple[str, list]:
    """(AdminClient method, parameters) of a `net service` action; bad arguments are a CommandError."""
    need = {"add": ("name", "network", "address", "members"), "rm": ("name",),
            "add-member": ("name", "vm"), "rm-member": ("name", "vm"), "list": ()}[args.action]
    missing = [n for n in need if not getattr(args, n)]
    if missing:
        flags = ", ".join(n if n in ("name", "vm") else f"--{n}" for n in missing)
        raise CommandError(f"net service {args.action}: missing {flags}", code=2)
    if args.action == "add":
        members = [m.strip() for m in args.members.split(",") if m.strip()]
        return "add_service", [args.name, args.network, args.address, members]
    method = {"rm": "remove_service", "add-member": "add_service_member", "rm-member": "remove_service_member",
              "list": "dump"}[args.action]
    return method, [getattr(args, n) for n in need]


def format_services(services: list) -> str:
    if not services:
        return "no services\n"
    return "".join(f"{s['name']}: {s['address']} in {s['network']}, members {', '.join(s['members'])}\n"
                   for s in services)


@command("net service", help="load-balanced service addresses (ECMP over member VMs): add, rm, add-member, "
         "rm-member, list", root=True, arguments=_service_args)
def service_command(args) -> int:
    method, params = service_call(args)
    result = vnc_call(_rundir(args), method, *params)
    if args.action == "list":
        services = result.get("services", [])
        print(json.dumps(services, indent=1) if args.json else format_services(services), end="\n" if args.json else "")
        return 0
    what = {"add": f"service {args.name} added", "rm": f"service {args.name} removed",
            "add-member": f"{args.vm} is a member of {args.name}",
            "rm-member": f"{args.vm} is no longer a member of {args.name}"}[args.action]
    print(f"{what} (generation {result['generation']}, servers updated: {', '.join(result['servers']) or 'none'})")
    return 0
