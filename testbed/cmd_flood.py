"""`testbed net flood`: show or change flooding's storm limit at run time, through the VNC (the path
of `testbed net flow-limit`: the VNC validates, then pushes the configs whose flood section changed).

    testbed net flood                          the settings and each network's L2 label (--json)
    testbed net flood --rate 50 --burst 100    each VM's flood frames: 50/s, bursts of 100
    testbed net flood off                      nothing floods (ARP without a route is dropped again)
    testbed net flood on --mac-age 60          flooding back on; learned MACs age after 60 s

What one vrouter floods, to where, and its counters: `testbed vr SRV flood`.
"""
from __future__ import annotations

import json

from testbed.commands import command, run_arguments
from testbed.net_cmd import _rundir, vnc_call


def _arguments(p):
    p.add_argument("state", nargs="?", choices=("on", "off"), help="flooding on or off (default: unchanged)")
    p.add_argument("--rate", type=float, metavar="PPS", help="flood frames per second each VM may send (> 0)")
    p.add_argument("--burst", type=int, metavar="N", help="flood frames a VM may send at once (>= 1)")
    p.add_argument("--mac-age", type=float, metavar="S", help="seconds after which a learned MAC is forgotten")
    p.add_argument("--json", action="store_true", help="show: the VNC's flood settings as JSON")
    run_arguments(p)


def changes(args) -> dict:
    """The settings the options change (empty: show only)."""
    out: dict = {} if args.state is None else {"enabled": args.state == "on"}
    for key in ("rate", "burst", "mac_age"):
        if getattr(args, key) is not None:
            out[key] = getattr(args, key)
    return out


def describe(s: dict) -> str:
    if not s["enabled"]:
        return "flooding off"
    labels = ", ".join(f"{n} {label}" for n, label in s.get("l2_labels", {}).items())
    return (f"flooding on: {s['rate']:g} frames/s per VM, burst {s['burst']}, MACs age after {s['mac_age']:g} s"
            + (f"; L2 labels {labels}" if labels else ""))


@command("net flood", help="broadcast/multicast flooding: show it, switch it on|off, set the per-VM storm limit "
         "(--rate, --burst)", root=True, arguments=_arguments)
def flood_command(args) -> int:
    rundir = _rundir(args)
    todo = changes(args)
    result = vnc_call(rundir, "set_flood", todo) if todo else None
    settings = vnc_call(rundir, "dump").get("flood", {})
    if args.json and result is None:
        print(json.dumps(settings, indent=1, sort_keys=True))
    elif result is None:
        print(describe(settings))
    else:
        print(f"{describe(settings)} (generation {result['generation']}, servers updated: "
              f"{', '.join(result['servers']) or 'none'})")
    return 0
