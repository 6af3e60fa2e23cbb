"""`testbed net baremetal list | sync`: the bare-metal hosts of a running testbed (testbed/baremetal.py).

    testbed net baremetal list [--json]     each host: underlay and overlay addresses, VNI, and the
                                            entries the VNC computed for its VXLAN device, with how
                                            far the device is from them (as root)
    testbed net baremetal sync              apply the VNC's entries again (the differences only)

The hosts themselves are the topology's (`baremetal:`); the VNC keeps them in sync with the VMs on
its own (`net add-vm` / `net rm-vm` update them).
"""
from __future__ import annotations

import json
import os

from testbed import baremetal
from testbed.commands import CommandError, command, run_arguments
from testbed.net_cmd import vnc_call
from testbed.vr import rundir_path


def _args(p):
    p.add_argument("action", choices=("list", "sync"), help="list the hosts and their entries, or apply them again")
    p.add_argument("--json", action="store_true", help="list: the VNC's records (and the pending changes) as JSON")
    run_arguments(p)


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


def format_hosts(records: list[dict], todo: dict[str, list[str]] | None) -> str:
    if not records:
        return "no bare-metal hosts\n"
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
    return "\n".join(lines) + "\n"


@command("net baremetal", help="bare-metal hosts (no vrouter, a Linux VXLAN device): list their entries, "
         "sync them", arguments=_args)
def baremetal_command(args) -> int:
    rundir = rundir_path(args.prefix, args.run_root)
    dump = vnc_call(rundir, "dump")
    records = dump.get("baremetal", [])
    if args.action == "sync":
        if os.geteuid() != 0:
            raise CommandError("net baremetal sync needs root (it changes the hosts' namespaces)", code=2)
        done = baremetal.sync_rundir(rundir, dump)
        for name in sorted(done):
            print(f"{name}: {len(done[name])} changes applied")
        if not done:
            print("no bare-metal hosts")
        return 0
    todo = pending(rundir, records)
    if args.json:
        print(json.dumps({"hosts": records, "pending": todo}, indent=1))
    else:
        print(format_hosts(records, todo), end="")
    return 0
