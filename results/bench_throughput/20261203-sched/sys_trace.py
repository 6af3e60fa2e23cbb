"""One testbed: perf record sched + syscalls over 50 overlay pings and 50 relay pings."""
import os, subprocess, sys, time
from testbed.bench_throughput import pick
from testbed.measure.runners import ping_median_us
from testbed.overlay import forwarder_name
from testbed.relay_floor import RelayPair
from testbed.runner import Testbed
from testbed.topology import load
out = sys.argv[1]
os.makedirs(out, exist_ok=True)
topo = load("topologies/default.yaml"); pair = pick(topo)
EV = ["-e", "sched:sched_switch", "-e", "sched:sched_waking", "-e", "raw_syscalls:sys_enter", "-e", "raw_syscalls:sys_exit"]
with Testbed(topo, prefix="stx", run_root="/tmp/abruns") as tb:
    fwd = {s: tb.supervisor.pid(forwarder_name(s)) for s in pair.servers}
    relays = RelayPair(tb, pair)
    vm, dst = tb.host(pair.client_vm.name), pair.server_vm.address
    try:
        print("warm", ping_median_us(vm, dst), "relay", relays.ping_median_us(), flush=True)
        for name, run in (("ours", lambda: ping_median_us(vm, dst)), ("relay", relays.ping_median_us)) * int(sys.argv[2] if len(sys.argv) > 2 else 1):
            p = subprocess.Popen(["perf", "record", "-a", "-o", f"{out}/{name}.data", *EV, "sleep", "2.5"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(0.4)
            print(name, run(), flush=True)
            p.wait()
    finally:
        relays.close()
