"""Speed-up of 2 workers over 1 (no root): ``python -m vrouter.tools.bench_workers [--quick] [--json]``.

The multi-core vrouter's data path without NICs: this process plays the designated core (it runs
``Router.from_fabric`` = RPS steering, batches records with ``rps_channel`` per worker and sends one
SOCK_SEQPACKET datagram per worker per 64-packet "read"), and N forked worker processes, pinned one
per CPU, decode the batches and run ``Pipeline.from_fabric`` (flow hit, decapsulation, TTL, the
ToVif frame) on pre-established flows. Aggregate packets/s is what the workers finished divided by the
time from the first send to the last worker's done. The actions are built but not written anywhere
(no TAP), so the figure is an upper bound of the real forwarder's.

On a 2-core machine the dispatcher is a third busy process: with 2 workers three processes share two
cores, so the speed-up is well below 2; what it shows is how much the dispatch overhead leaves.
"""
import json
import os
import socket
import sys
import time

from vrouter.core import rps_channel
from vrouter.core.multicore import MulticoreConfig
from vrouter.core.rps_route import Outbox, Router
from vrouter.io import ipc
from vrouter.tools.benchlib import PEER, bench_cli, established

DONE = b"\xff"
READ = 64          # packets per NIC read, as the dispatcher's receive loop drains


def _worker(cpu, sock, result, pipe):
    try:
        if cpu is not None:
            os.sched_setaffinity(0, {cpu})
        decode, from_fabric = rps_channel.decode, pipe.from_fabric
        n, hits = 0, pipe.stats()["hits"]
        while True:
            data = sock.recv(ipc.SEQPACKET_MAX)
            if data == DONE or not data:
                break
            for kind, tag, payload, _seg in decode(data):
                from_fabric(tag, kind, payload, 1.0)
                n += 1
        result.send(json.dumps({"packets": n, "hits": pipe.stats()["hits"] - hits}).encode())
    finally:
        os._exit(0)


def run_dispatch(workers: int, payloads: list, pipe, rounds: int) -> dict:
    cpus = sorted(os.sched_getaffinity(0))
    ids = list(range(workers))
    mc = MulticoreConfig.from_dict({"mode": "rps", "workers": ids})
    router = Router(mc.steering, "10.0.1.1")
    chans, results, pids = {}, [], []
    for w in ids:
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        ipc.tune_seqpacket(a)
        ipc.tune_seqpacket(b)
        r_parent, r_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        pid = os.fork()
        if pid == 0:
            a.close()
            r_parent.close()
            _worker(cpus[w % len(cpus)], b, r_child, pipe)
        b.close()
        r_child.close()
        chans[w], results, pids = a, results + [r_parent], pids + [pid]
    outbox = Outbox(lambda dest, parts, _n: chans[dest[1]].sendmsg(parts))
    add, steer = outbox.add, router.from_fabric
    t0 = time.perf_counter()
    for _ in range(rounds):
        for i in range(0, len(payloads), READ):
            for p in payloads[i:i + READ]:
                add(steer("mplsoudp", PEER, 50000, p), "mplsoudp", PEER, p)
            outbox.flush()
    for c in chans.values():
        c.send(DONE)
    per = [json.loads(r.recv(4096)) for r in results]
    elapsed = time.perf_counter() - t0
    for pid in pids:
        os.waitpid(pid, 0)
    for s in [*chans.values(), *results]:
        s.close()
    total = sum(p["packets"] for p in per)
    if total != rounds * len(payloads) or sum(p["hits"] for p in per) != total:
        raise RuntimeError(f"workers handled {total} packets of {rounds * len(payloads)} (not all flow hits)")
    return {"workers": workers, "pps": round(total / elapsed), "per_worker": [p["packets"] for p in per],
            "seconds": round(elapsed, 3)}


def _presteered_worker(cpu, go, result, pipe, batches):
    try:
        os.sched_setaffinity(0, {cpu})
        decode, from_fabric = rps_channel.decode, pipe.from_fabric
        go.recv(1)
        t = time.perf_counter()
        n = 0
        for data in batches:
            for kind, tag, payload, _seg in decode(data):
                from_fabric(tag, kind, payload, 1.0)
                n += 1
        result.send(json.dumps({"packets": n, "seconds": time.perf_counter() - t}).encode())
    finally:
        os._exit(0)


def run_presteered(workers: int, payloads: list, pipe, rounds: int) -> dict:
    """Workers only: each decodes and forwards its share, steered and framed before the clock starts
    (what kernel-assisted steering would give if the kernel's choice were free)."""
    cpus = sorted(os.sched_getaffinity(0))
    mc = MulticoreConfig.from_dict({"mode": "rps", "workers": list(range(workers))})
    router = Router(mc.steering, "10.0.1.1")
    share = {w: [] for w in range(workers)}
    outbox = Outbox(lambda w, parts, _n: share[w].append(b"".join(parts)))
    for i in range(0, len(payloads), READ):
        for p in payloads[i:i + READ]:
            outbox.add(router.from_fabric("mplsoudp", PEER, 50000, p)[1], "mplsoudp", PEER, p)
        outbox.flush()
    gos, results, pids = [], [], []
    for w in range(workers):
        g_parent, g_child = socket.socketpair()
        r_parent, r_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        pid = os.fork()
        if pid == 0:
            _presteered_worker(cpus[w % len(cpus)], g_child, r_child, pipe, share[w] * rounds)
        g_child.close()
        r_child.close()
        gos.append(g_parent)
        results.append(r_parent)
        pids.append(pid)
    time.sleep(0.2)
    for g in gos:
        g.send(b"g")
    per = [json.loads(r.recv(4096)) for r in results]
    for pid in pids:
        os.waitpid(pid, 0)
    for s in [*gos, *results]:
        s.close()
    total = sum(p["packets"] for p in per)
    return {"workers": workers, "pps": round(total / max(p["seconds"] for p in per)),
            "per_worker": [p["packets"] for p in per]}


def run(quick: bool = True) -> dict:
    flows, rounds, repeats = (1000, 60, 2) if quick else (4000, 40, 3)
    pipe, _to_fabric, to_vm = established("mplsoudp", flows, 64)
    t = time.perf_counter()
    for _ in range(rounds):
        for p in to_vm:
            pipe.from_fabric(PEER, "mplsoudp", p, 1.0)
    inline = rounds * len(to_vm) / (time.perf_counter() - t)
    best = {}
    for _ in range(repeats):
        for key, fn in (("dispatch", run_dispatch), ("presteered", run_presteered)):
            for n in (1, 2):
                r = fn(n, to_vm, pipe, rounds)
                if (key, n) not in best or r["pps"] > best[key, n]["pps"]:
                    best[key, n] = r
    return {"inline_pps": round(inline), "one": best["dispatch", 1], "two": best["dispatch", 2],
            "speedup": round(best["dispatch", 2]["pps"] / best["dispatch", 1]["pps"], 2),
            "presteered_one": best["presteered", 1], "presteered_two": best["presteered", 2],
            "presteered_speedup": round(best["presteered", 2]["pps"] / best["presteered", 1]["pps"], 2),
            "cpus": len(os.sched_getaffinity(0)), "packets": rounds * len(to_vm), "size": 64}


def report(res: dict, out=print) -> None:
    out(f"multi-core dispatch (fabric->vm, {res['size']} B, {res['packets']:,} packets, {res['cpus']} CPUs; "
        f"dispatcher = this process: RPS steer + batch + SEQPACKET send; workers: decode + flow hit)")
    out(f"  {'pipeline inline, one process (no dispatch)':<52}{res['inline_pps']:>12,} pkts/s")
    for key, label in (("one", "1 worker behind the dispatcher"), ("two", "2 workers behind the dispatcher")):
        r = res[key]
        out(f"  {label:<52}{r['pps']:>12,} pkts/s  per worker {r['per_worker']}")
    out(f"  speed-up of 2 workers over 1: {res['speedup']:.2f}x (the dispatcher needs a core too: "
        f"3 busy processes on {res['cpus']} cores)")
    for key, label in (("presteered_one", "1 worker, pre-steered queue (no dispatcher)"),
                       ("presteered_two", "2 workers, pre-steered queues (no dispatcher)")):
        r = res[key]
        out(f"  {label:<52}{r['pps']:>12,} pkts/s  per worker {r['per_worker']}")
    out(f"  speed-up of 2 workers over 1 without a dispatcher (kernel-assisted bound): "
        f"{res['presteered_speedup']:.2f}x")


def main(argv=None) -> int:
    return bench_cli("python -m vrouter.tools.bench_workers", __doc__, run, report, argv)


if __name__ == "__main__":
    sys.exit(main())
