"""What every vrouter process shares at start and stop: its command line, its logging, and a
life that ends with SIGTERM, SIGINT or the death of the process that supervises it."""
from __future__ import annotations

import argparse
import ctypes
import gc
import logging
import os
import signal
import sys

from vrouter.core.coalesce import DEFER_US, MAX_DEFER_US
from vrouter.core.paths import MAX_SLOTS, MIN_SLOTS, SLOTS
from vrouter.core.priority import BUSY_LIMIT, MAX_RT_PRIORITY, RT_PRIORITY, WINDOW
from vrouter.core.spin import SPIN_BUDGET, SPIN_US
from vrouter.core.warm import ACTIVE, WARM_US

PR_SET_PDEATHSIG = 1
# A flow table of 64k entries is several hundred thousand long-lived objects; with CPython's default thresholds
# (700, 10, 10) the collector re-scans them so often during a flood of new flows that it cost the
# forwarder more than unpacking the decisions it ran inside (py-spy: `unpack` 16-34% of the
# forwarder -> 4-5%; flow setups 1.14x, interleaved testbed runs). Rarer young collections, and
# the start-up objects frozen out of every scan; reference cycles (e.g. a table dropped by reset)
# are still collected.
GC_THRESHOLDS = (50_000, 20, 100)


def switch_value(text: str) -> bool:
    """argparse type for `on|off`."""
    if text in ("on", "off"):
        return text == "on"
    raise argparse.ArgumentTypeError(f"give on or off, not {text!r}")


def add_switch_arguments(parser: argparse.ArgumentParser) -> None:
    """The --gro/--gso switches of the forwarder and the multi-core dispatcher."""
    parser.add_argument("--gro", type=switch_value, default=True, metavar="on|off",
                        help="merge tunnel packets into super-packets for the VMs (default on)")
    parser.add_argument("--gso", type=switch_value, default=True, metavar="on|off",
                        help="take TSO super-frames from the VMs and send them with UDP GSO (default on)")


def parser(prog: str, doc: str | None) -> argparse.ArgumentParser:
    """The arguments every server process takes: its run directory and its server."""
    p = argparse.ArgumentParser(prog=prog, description=(doc or "").splitlines()[0] if doc else None)
    p.add_argument("--rundir", required=True, help="the testbed's run directory")
    p.add_argument("--server", required=True, help="the server this process serves (e.g. srv1)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def setup_logging(args: argparse.Namespace, role: str) -> None:
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, stream=sys.stderr,
                        format=f"%(asctime)s {role}[{args.server}] %(process)d %(levelname)s %(message)s")


def die_with_parent() -> None:
    """SIGTERM when the supervising process dies, so a crashed testbed leaves no orphan vrouters."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def serve(proc) -> None:
    """Run `proc` (its `run()` loops while `running`) until SIGTERM or SIGINT (a clean close), or
    until the supervising process dies."""
    def stop(*_):
        proc.running = False
    die_with_parent()
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    tune_gc()
    proc.run()


def tune_gc() -> None:
    """The collector of a process that holds a flow table (GC_THRESHOLDS says why)."""
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def _parsed(text: str, kind: type, ok, message: str):
    """`text` as `kind` if `ok` of it holds, else argparse's error `message` (naming the text)."""
    try:
        v = kind(text)
    except ValueError:
        v = None
    if v is None or not ok(v):
        raise argparse.ArgumentTypeError(f"{message}, not {text!r}")
    return v


def set_scheduler(rt_priority: int) -> None:
    """This thread SCHED_FIFO at `rt_priority`, or the normal scheduler for 0; children it forks start
    normal. OSError (EPERM without CAP_SYS_NICE or real-time time in the cgroup) if refused."""
    if rt_priority:
        os.sched_setscheduler(0, os.SCHED_FIFO | os.SCHED_RESET_ON_FORK, os.sched_param(rt_priority))
    else:
        os.sched_setscheduler(0, os.SCHED_OTHER | os.SCHED_RESET_ON_FORK, os.sched_param(0))


def path_slots(text: str) -> int:
    """argparse type for --path-slots: 0 (off) or MIN_SLOTS..MAX_SLOTS."""
    return _parsed(text, int, lambda k: k == 0 or MIN_SLOTS <= k <= MAX_SLOTS,
                   f"give 0 (off) or a whole number {MIN_SLOTS}..{MAX_SLOTS}")


def microseconds(text: str) -> float:
    """argparse type for --spin-us, --defer-us and --warm-us: 0 (off) to 10,000 microseconds."""
    return _parsed(text, float, lambda v: 0 <= v <= MAX_DEFER_US, f"give microseconds 0..{MAX_DEFER_US}")


def rt_priority(text: str) -> int:
    """argparse type for --rt-priority: 0 (off) to MAX_RT_PRIORITY."""
    return _parsed(text, int, lambda v: 0 <= v <= MAX_RT_PRIORITY, f"give a whole number 0..{MAX_RT_PRIORITY} (0: off)")


def add_loop_arguments(p: argparse.ArgumentParser) -> None:
    """The single forwarder's loop settings: path repair's slots, the spin, the receive coalescing,
    the real-time priority of the idle loop."""
    p.add_argument("--path-slots", type=path_slots, default=SLOTS, metavar="K",
                   help=f"path repair: outer source ports probed per tunnel peer, {MIN_SLOTS}..{MAX_SLOTS} (default "
                        f"{SLOTS}; 0: off, every flow keeps its own entropy port and nothing is probed)")
    p.add_argument("--spin-us", type=microseconds, default=SPIN_US, metavar="US",
                   help="after a loop round with input, poll this many microseconds more before sleeping, "
                        f"at most {SPIN_BUDGET * 100:.0f}%% of each second (default {SPIN_US:g}: off; docs/vrouter.md "
                        "'Latency' has the trade-off)")
    p.add_argument("--defer-us", type=microseconds, default=DEFER_US, metavar="US",
                   help="after a loop round that moved bulk data (TSO frames, TCP data), sleep this many "
                        f"microseconds so the next read finds more (default {DEFER_US:g}: off; "
                        "docs/vrouter.md 'Latency' has the trade-off)")
    p.add_argument("--warm-us", type=microseconds, default=WARM_US, metavar="US",
                   help=f"while input came in the last {ACTIVE:g} s, never sleep longer than this, so a packet "
                        f"wakes a loop that ran a moment ago (default {WARM_US:g}: off; docs/vrouter.md "
                        "'Latency' has the trade-off)")
    p.add_argument("--rt-priority", type=rt_priority, default=RT_PRIORITY, metavar="N",
                   help="while the loop is nearly idle, run it SCHED_FIFO at this priority so a woken "
                        f"forwarder does not wait for the CPU; busy (over {BUSY_LIMIT * 100:.0f}%% of "
                        f"{WINDOW * 1e3:g} ms), it takes the normal scheduler at once (default {RT_PRIORITY}; "
                        "0: off; docs/vrouter.md 'Latency' has the trade-off)")
