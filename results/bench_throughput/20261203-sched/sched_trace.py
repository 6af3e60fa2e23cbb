"""One testbed: perf sched record over 40 overlay pings (20 ms), then 40 relay pings; timehist to files."""
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
with Testbed(topo, prefix="stx", run_root="/tmp/abruns") as tb:
    fwd = {s: tb.supervisor.pid(forwarder_name(s)) for s in pair.servers}
    relays = RelayPair(tb, pair)
    vm, dst = tb.host(pair.client_vm.name), pair.server_vm.address
    try:
        print("warm", ping_median_us(vm, dst), "relay", relays.ping_median_us(), flush=True)
        with open(f"{out}/pids.txt", "w") as f:
            f.write(f"fwd {fwd}\nrelay {getattr(relays, 'pids', None)}\n")
        for name, run in (("ours", lambda: ping_median_us(vm, dst)), ("relay", relays.ping_median_us)):
            p = subprocess.Popen(["perf", "sched", "record", "-a", "-o", f"{out}/{name}.data", "sleep", "2.5"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(0.3)
            print(name, run(), flush=True)
            p.wait()
    finally:
        relays.close()
