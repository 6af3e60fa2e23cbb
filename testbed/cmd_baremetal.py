"""`testbed net baremetal ...`: the bare-metal hosts of a running testbed (testbed/baremetal.py), through
the VNC (controllers/vnc_baremetal.py).

    testbed net baremetal list [--json]     each joined host: underlay and overlay addresses, VNI, and
                                            the entries the VNC computed for its VXLAN device, with how
                                            far the device is from them (as root); the wired hosts
                                            that are not joined
    testbed net baremetal sync              apply the VNC's entries again (the differences only)
    testbed net baremetal rm bms1           take a host out: its routes leave every vrouter, its flood
                                            entry every flood list, its VXLAN device is deleted
    testbed net baremetal add bms1 --leaf leaf2 --address 10.0.2.9 --network blue \\
                                   --overlay-address 192.168.1.60 [--mac M]
                                            join a host again (into any network): checked as a topology
                                            entry; its VXLAN device is created and programmed

A host is a fabric node the testbed wires in when it starts (the topology's `baremetal:` section:
its Mininet host on its leaf, its underlay address routed and ARP-answered by the fabric); `add` joins
one that is wired and not joined now (`--leaf` and `--address` must be the wired ones), it does not
wire a new node into a running fabric. The VNC keeps the joined hosts in sync with the VMs on its own
(`net add-vm` / `net rm-vm` update them) and across its restarts (its saved state).
"""
from __future__ import annotations

import json
import os

from testbed import baremetal
from testbed.commands import CommandError, command, run_arguments
from testbed.net_cmd import vnc_call
from testbed.vr import rundir_path

ACTIONS = ("list", "sync", "add", "rm")


def _args(p):
    p.add_argument("action", choices=ACTIONS, help="list the hosts and their entries, apply them again, join a "
                                                   "wired host (add) or take one out (rm)")
    p.add_argument("name", nargs="?", help="add, rm: the host, one the topology's baremetal: section wired to its "
                                           "leaf when the testbed started (add joins one that is not joined now: "
                                           "no new host is wired into a running fabric)")
    p.add_argument("--leaf", help="add: the leaf it is wired to")
    p.add_argument("--address", help="add: its underlay address (the VXLAN tunnel endpoint), as wired")
    p.add_argument("--network", help="add: the virtual network it joins (VNI = the network's id)")
    p.add_argument("--overlay-address", help="add: its address in that network")
    p.add_argument("--mac", help="add: its VXLAN device's MAC (default derived from the name, like a VM's)")
    p.add_argument("--json", action="store_true", help="list: the VNC's records (and the pending changes) as JSON")
    run_arguments(p)


def host_item(args) -> dict:
    """The host `net baremetal add` asks for, in the topology's form (the VNC checks the values)."""
    if not args.name:
        raise CommandError("net baremetal add: missing the host's name", code=2)
    given = {"leaf": args.leaf, "address": args.address, "network": args.network,
             "overlay_address": args.overlay_address}
    missing = [f"--{k.replace('_', '-')}" for k, v in given.items() if v is None]
    if missing:
        raise CommandError(f"net baremetal add: give {', '.join(missing)}", code=2)
    return {"name": args.name, **given, **({"mac": args.mac} if args.mac else {})}


def pending(rundir, records: list[dict]) -> dict[str, list[str]] | None:
    """Per host, the commands that would bring its device to the VNC's entries; None without root
    (the hosts' namespaces are root's)."""
    if os.geteuid() != 0:
        return None
    out = {}
    for r in records:
        run = baremetal.ns_runner(rundir, r["name"])
        out[r["name"]] = baremetal.diff(baremetal.parse_fdb(run(f"bridge fdb show dev {r['device']}")),
                                        baremetal.parse_neigh(run(f"ip neigh show dev {r['device']}")), r)
    return out


def format_hosts(records: list[dict], todo: dict[str, list[str]] | None, unjoined: list[dict] = ()) -> str:
    lines = []
    for r in records:
        lines.append(f"{r['name']}: {r['overlay_address']} in {r['network']} (VNI {r['vni']}, {r['device']}, "
                     f"MAC {r['mac']}), VTEP {r['address']}")
        lines += [f"  fdb   {mac} dst {dst}" for mac, dst in r["fdb"]]
        lines += [f"  neigh {ip} lladdr {mac}" for ip, mac in r["neigh"]]
        if todo is not None:
            diff = todo.get(r["name"], [])
            lines.append("  device: in sync" if not diff else f"  device: {len(diff)} changes pending")
            lines += [f"    {c}" for c in diff]
    lines += [f"{u['name']}: not joined (wired to {u['leaf']}, VTEP {u['address']})" for u in unjoined]
    return "\n".join(lines) + "\n" if lines else "no bare-metal hosts\n"


def _need_root(what: str) -> None:
    if os.geteuid() != 0:
        raise CommandError(f"net baremetal {what} needs root (it changes the hosts' namespaces)", code=2)


def _wired(rundir, name: str) -> dict:
    """The host's part of the fabric description (its interface and underlay address)."""
    fabric = json.loads((rundir / "fabric.json").read_text())
    return next(h for h in fabric.get("baremetal", ()) if h["name"] == name)


def _change(rundir, args) -> str:
    """`add` / `rm`: the VNC first (it checks and refuses), then the host's device, then the other
    hosts' entries (their flood lists name the host)."""
    if not args.name:
        raise CommandError(f"net baremetal {args.action}: missing the host's name", code=2)
    if args.action == "rm":
        record = next((r for r in vnc_call(rundir, "dump")["baremetal"] if r["name"] == args.name), None)
        result = vnc_call(rundir, "baremetal", "remove", args.name)
        if record is not None:
            baremetal.leave(baremetal.ns_runner(rundir, args.name), record)
        what = f"bare-metal host {args.name} taken out"
    else:
        result = vnc_call(rundir, "baremetal", "add", host_item(args))
        dump = vnc_call(rundir, "dump")
        record = next(r for r in dump["baremetal"] if r["name"] == args.name)
        baremetal.join(baremetal.ns_runner(rundir, args.name), _wired(rundir, args.name), record, dump["networks"])
        what = f"bare-metal host {args.name} joined {record['network']} as {record['overlay_address']} " \
               f"({record['device']}, VNI {record['vni']})"
    baremetal.sync_rundir(rundir, vnc_call(rundir, "dump"))
    return f"{what} (generation {result['generation']}, servers updated: {', '.join(result['servers']) or 'none'})"


@command("net baremetal", help="bare-metal hosts (no vrouter, a Linux VXLAN device): list their entries, "
         "sync them, join a wired host (add) or take one out (rm)", arguments=_args)
def baremetal_command(args) -> int:
    rundir = rundir_path(args.prefix, args.run_root)
    if args.action in ("add", "rm"):
        if args.action == "add":
            host_item(args)         # the command's own errors before root's
        _need_root(args.action)
        print(_change(rundir, args))
        return 0
    if args.action == "sync":
        _need_root("sync")
        done = baremetal.sync_rundir(rundir, vnc_call(rundir, "dump"))
        for name in sorted(done):
            print(f"{name}: {len(done[name])} changes applied")
        if not done:
            print("no bare-metal hosts joined")
        return 0
    listed = vnc_call(rundir, "baremetal", "list")
    records = listed["hosts"]
    todo = pending(rundir, records)
    if args.json:
        print(json.dumps({**listed, "pending": todo}, indent=1))
    else:
        print(format_hosts(records, todo, listed["unjoined"]), end="")
    return 0
