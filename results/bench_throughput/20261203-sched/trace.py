"""One testbed: 50 overlay pings (20 ms) then 50 through the bare relay, each under perf.

    python trace.py OUT             perf sched record -a (what chain2.py reads)
    python trace.py OUT --syscalls  sched_switch / sched_waking plus the syscall tracepoints
                                    (what sysrun.py and sysdur.py read, after `perf script`)
"""
import os, subprocess, sys, time
from testbed.bench_throughput import pick
from testbed.measure.runners import ping_median_us
from testbed.relay_floor import RelayPair
from testbed.runner import Testbed
from testbed.topology import load
out = sys.argv[1]
if "--syscalls" in sys.argv:
    perf = ["perf", "record", "-a", "-e", "sched:sched_switch", "-e", "sched:sched_waking",
            "-e", "raw_syscalls:sys_enter", "-e", "raw_syscalls:sys_exit"]
else:
    perf = ["perf", "sched", "record", "-a"]
os.makedirs(out, exist_ok=True)
topo = load("topologies/default.yaml"); pair = pick(topo)
with Testbed(topo, prefix="stx", run_root="/tmp/abruns") as tb:
    relays = RelayPair(tb, pair)
    vm, dst = tb.host(pair.client_vm.name), pair.server_vm.address
    try:
        print("warm", ping_median_us(vm, dst), "relay", relays.ping_median_us(), flush=True)
        for name, run in (("ours", lambda: ping_median_us(vm, dst)), ("relay", relays.ping_median_us)):
            p = subprocess.Popen([*perf, "-o", f"{out}/{name}.data", "sleep", "2.5"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(0.4)
            print(name, run(), flush=True)
            p.wait()
    finally:
        relays.close()
