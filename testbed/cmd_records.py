"""`testbed net records`: show or switch every vrouter's flow records at run time, through the VNC (the
path of `testbed net mode`: the VNC keeps the switch in its state and pushes every config).

    testbed net records            flow records on|off, as the VNC has it (--json: the flow settings)
    testbed net records on         every vrouter records each flow pair that ends from now on
    testbed net records off        no more records (what a vrouter holds is still written)

The records: `testbed flows`; one vrouter's counters: `testbed vr SRV records`.
"""
from __future__ import annotations

import json

from testbed.commands import command, run_arguments
from testbed.net_cmd import _rundir, vnc_call


def _arguments(p):
    p.add_argument("state", nargs="?", choices=("on", "off"), help="records on or off (default: show)")
    p.add_argument("--json", action="store_true", help="show: the VNC's flow settings as JSON")
    run_arguments(p)


def describe(on: bool) -> str:
    return f"flow records {'on' if on else 'off'}"


@command("net records", help="flow records of every vrouter: show them on|off, switch them (testbed flows reads "
         "them)", root=True, arguments=_arguments)
def records_command(args) -> int:
    rundir = _rundir(args)
    if args.state is None:
        flow = vnc_call(rundir, "dump").get("flow", {})
        print(json.dumps(flow, indent=1, sort_keys=True) if args.json else describe(bool(flow.get("records"))))
        return 0
    result = vnc_call(rundir, "set_flow_records", args.state == "on")
    print(f"{describe(args.state == 'on')} (generation {result['generation']}, servers updated: "
          f"{', '.join(result['servers']) or 'none'})")
    return 0
