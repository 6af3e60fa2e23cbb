"""`testbed fault ...`: inject faults into a running testbed and undo them (testbed/faults.py).

    testbed fault link leaf1-spine2 down|up
    testbed fault impair srv1-leaf1 --delay 10ms --jitter 2ms --loss 1% --rate 100mbit [--from srv1]
    testbed fault impair srv1-leaf1 clear [--from srv1]
    testbed fault controller pause|resume|kill|restart
    testbed fault agent srv1 pause|resume|kill|restart        (and: fault forwarder srv1 ...)
    testbed fault list [--json]
    testbed fault clear
"""
from __future__ import annotations

import json

from testbed.commands import CommandError, command, group, run_arguments
from testbed.fault_logic import FaultError, FaultInputError
from testbed.faults import Faults

ACTIONS = ("pause", "resume", "kill", "restart")
KILL_WAIT = 30.0

group("fault", "inject faults into a running testbed (links, impairments, processes) and undo them")


def _faults(args) -> Faults:
    return Faults.open(args.prefix, args.run_root)


def _run(fn, args) -> int:
    """FaultError -> one line: exit 2 for a bad link/server/value, 1 for anything else."""
    try:
        return fn(_faults(args), args)
    except FaultInputError as exc:
        raise CommandError(str(exc), 2) from None
    except FaultError as exc:
        raise CommandError(str(exc), 1) from None


# --- links --------------------------------------------------------------------------------------

def _link_args(p):
    p.add_argument("link", help="a link named by its two ends, either order: leaf1-spine2, srv1-leaf1")
    p.add_argument("state", choices=("down", "up"),
                   help="down: its switch-side interfaces go down (both ends of a fabric link, the leaf's "
                        "end of a server's link: the server sees no carrier); up: back up")
    run_arguments(p)


@command("fault link", help="cut a link (down) or restore it (up)", root=True, arguments=_link_args)
def fault_link(args) -> int:
    def go(f: Faults, a) -> int:
        rec = f.link(a.link, a.state)
        print(f"link {rec['target']} {a.state} ({' '.join(rec['interfaces'])})")
        return 0
    return _run(go, args)


def _impair_args(p):
    p.add_argument("link", help="a link named by its two ends, either order: leaf1-spine2, srv1-leaf1")
    p.add_argument("clear", nargs="?", choices=("clear",), metavar="clear", help="remove the link's impairment instead")
    p.add_argument("--delay", help="added delay, e.g. 10ms, 500us (needs the kernel's netem)")
    p.add_argument("--jitter", help="delay variation, e.g. 2ms (with --delay; reorders packets)")
    p.add_argument("--loss", help="random loss, e.g. 1%% or 0.5%%")
    p.add_argument("--rate", help="rate limit in bits/s, e.g. 100mbit, 1gbit, 500kbit")
    p.add_argument("--limit", help="queue length in packets (netem's with --delay; default 1000)")
    p.add_argument("--from", dest="sender", metavar="END",
                   help="only the direction leaving this end (e.g. --from srv1); default both directions")
    run_arguments(p)


@command("fault impair", help="impair a link (delay, jitter, loss, rate) or clear its impairment",
         root=True, arguments=_impair_args)
def fault_impair(args) -> int:
    given = {k: getattr(args, k) for k in ("delay", "jitter", "loss", "rate", "limit")
             if getattr(args, k) is not None}

    def go(f: Faults, a) -> int:
        if a.clear:
            if given:
                raise FaultInputError(f"'clear' takes no values ({', '.join('--' + k for k in given)})")
            rec = f.unimpair(a.link, sender=a.sender)
            print(f"impairment of {rec['target']} removed ({', '.join(rec['directions'])})")
            return 0
        if not given:
            raise FaultInputError("give --delay, --jitter, --loss, --rate (and --limit), or 'clear'")
        rec = f.impair(a.link, sender=a.sender, **given)
        print(f"impair {rec['target']} {', '.join(rec['directions'])}: {rec['summary']}")
        return 0
    return _run(go, args)


# --- processes ----------------------------------------------------------------------------------

def _do_process(f: Faults, role: str, server: str | None, action: str) -> int:
    if action == "kill":
        rec = f.kill(role, server, wait=KILL_WAIT)
        again = (f"the supervisor started it again: pid {rec['new_pid']}" if rec["new_pid"]
                 else f"not started again within {KILL_WAIT:.0f} s")
        print(f"{rec['target']} killed (pid {rec['pid']}); {again}")
    elif action == "restart":
        rec = f.restart(role, server)
        print(f"{rec['target']} restarted: pid {rec['pid']} -> {rec['new_pid']} (via {rec['via']})")
    elif action == "pause":
        rec = f.pause(role, server)
        print(f"{rec['target']} paused (pid {', '.join(str(p) for p in rec['pids'])})")
    else:
        rec = f.resume(role, server)
        print(f"{rec['target']} resumed (pid {', '.join(str(p) for p in rec['pids']) or 'none was paused'})")
    return 0


_ACTION_HELP = ("pause: SIGSTOP until resumed; resume: SIGCONT; kill: SIGKILL, the supervisor starts it again "
                "after its back-off; restart: a clean restart, returns once it is ready")


def _controller_args(p):
    p.add_argument("action", choices=ACTIONS, help=_ACTION_HELP)
    run_arguments(p)


@command("fault controller", help="pause, resume, kill or restart the controller", root=True,
         arguments=_controller_args)
def fault_controller(args) -> int:
    return _run(lambda f, a: _do_process(f, "controller", None, a.action), args)


def _vrouter_args(p):
    p.add_argument("server", help="the server whose process it is, e.g. srv1")
    p.add_argument("action", choices=ACTIONS, help=_ACTION_HELP)
    run_arguments(p)


@command("fault agent", help="pause, resume, kill or restart a server's vrouter agent (slow path)",
         root=True, arguments=_vrouter_args)
def fault_agent(args) -> int:
    return _run(lambda f, a: _do_process(f, "agent", a.server, a.action), args)


@command("fault forwarder", help="pause, resume, kill or restart a server's vrouter forwarder",
         root=True, arguments=_vrouter_args)
def fault_forwarder(args) -> int:
    return _run(lambda f, a: _do_process(f, "forwarder", a.server, a.action), args)


# --- all of them --------------------------------------------------------------------------------

def _list_args(p):
    p.add_argument("--json", action="store_true", help="the recorded state as JSON")
    run_arguments(p)


@command("fault list", help="show the active faults (links down, impairments, paused processes)",
         root=True, arguments=_list_args)
def fault_list(args) -> int:
    def go(f: Faults, a) -> int:
        if a.json:
            print(json.dumps(f.active()))
            return 0
        lines = f.summary()
        if not lines:
            print(f"no faults active in testbed {f.rundir.prefix!r} (log: {f.log_path})")
            return 0
        print(f"testbed {f.rundir.prefix!r}: {len(lines)} active (log: {f.log_path})")
        for line in lines:
            print(f"  {line}")
        return 0
    return _run(go, args)


@command("fault clear", help="undo every active fault: resume processes, remove impairments, links up",
         root=True, arguments=run_arguments)
def fault_clear(args) -> int:
    def go(f: Faults, a) -> int:
        rec = f.clear()
        print(f"cleared: {', '.join(rec['undone'])}" if rec["undone"] else "nothing to clear")
        return 0
    return _run(go, args)
