"""Benchmark of the vrouter on one core, no root: ``python -m vrouter.tools.bench [--quick] [--json]``.

Fast path: packets of already-established flows through decapsulation -> flow hit -> TTL/route ->
encapsulation, in both directions (VM Ethernet -> tunnel payload, tunnel payload -> VM Ethernet),
for 64 B and 1400 B inner Ethernet frames, cycling over many flows so the flow table is not a
one-entry dict. Slow path: new flows per second for decide + install of the forward and the reverse
entry (including the release of the held first packet), and end to end with the miss that queues
the punt, taking it from the setup queue, and the install. Then the sub-benches: GRO/GSO in the core
(`bench_gro`), the bulk path through core and shell with its copies and system calls on loopback
(`bench_bulk`), steering and workers.
Figures are the best of several runs (least disturbed by other processes on the machine).
"""
import platform
import sys
import time

from vrouter.core.pipeline import Pipeline
from vrouter.core.slowpath import SlowPath
from vrouter.tools import bench_bulk, bench_gro, bench_steering, bench_workers
from vrouter.tools.benchlib import (
    JSON_HELP,
    REMOTE_BASE,
    bench_cli,
    best_seconds,
    established,
    policed_config,
    vm_frame,
)

FAST_TARGET = 250_000
SLOW_TARGET = 50_000


def fast_path(encap: str, size: int, direction: str, packets: int, flows: int, repeats: int) -> float:
    pipe, to_fabric, to_vm = established(encap, flows, size)
    rounds = max(1, packets // flows)
    if direction == "vm->fabric":
        frames = to_fabric
        from_vif = pipe.from_vif

        def run():
            for _ in range(rounds):
                for f in frames:
                    from_vif("tap0", f, 1.0)
    else:
        frames = to_vm
        from_fabric = pipe.from_fabric

        def run():
            for _ in range(rounds):
                for f in frames:
                    from_fabric("10.0.2.1", encap, f, 1.0)
    before = pipe.stats()["hits"]
    rate = rounds * len(frames) / best_seconds(run, repeats)
    hits = pipe.stats()["hits"] - before
    if hits != rounds * len(frames) * repeats:
        raise RuntimeError(f"benchmark packets missed the flow table ({hits} hits)")
    return rate


def slow_path(flows: int, repeats: int, end_to_end: bool) -> float:
    best = float("inf")
    frames = [vm_frame(REMOTE_BASE + 1 + i % 60000, 1024 + i % 60000, 64) for i in range(flows)]
    for _ in range(repeats):
        cfg = policed_config("mplsoudp", capacity=2 * flows + 16)
        pipe, slow = Pipeline(cfg), SlowPath(cfg)
        if end_to_end:
            t = time.perf_counter()
            for f in frames:
                pipe.from_vif("tap0", f, 0.0)
                for request in pipe.take_punts(0.0):
                    pipe.install(slow.decide(request, 0.0), 0.0)
            best = min(best, time.perf_counter() - t)
        else:
            for f in frames:
                pipe.from_vif("tap0", f, 0.0)
            requests = pipe.take_punts(0.0)
            t = time.perf_counter()
            for r in requests:
                pipe.install(slow.decide(r, 0.0), 0.0)
            best = min(best, time.perf_counter() - t)
        if len(pipe.flows()) != 2 * flows:
            raise RuntimeError("slow-path benchmark did not install forward and reverse entries")
    return flows / best


def run(quick: bool) -> dict:
    packets, flows, repeats = (40_000, 1000, 3) if quick else (400_000, 4000, 5)
    slow_flows = 5000 if quick else 40_000
    rows = []
    for direction, encap, size in (("vm->fabric", "mplsoudp", 64), ("fabric->vm", "mplsoudp", 64),
                                   ("vm->fabric", "mplsoudp", 1400), ("fabric->vm", "mplsoudp", 1400),
                                   ("vm->fabric", "vxlan", 64), ("fabric->vm", "vxlan", 64),
                                   ("vm->fabric", "mplsogre", 64), ("fabric->vm", "mplsogre", 64)):
        pps = fast_path(encap, size, direction, packets, flows, repeats)
        rows.append({"path": "fast", "direction": direction, "encap": encap, "size": size, "pps": round(pps)})
    decide_install = slow_path(slow_flows, repeats, end_to_end=False)
    end_to_end = slow_path(slow_flows, repeats, end_to_end=True)
    mpls = [r for r in rows if r["encap"] == "mplsoudp"]
    return {
        "fast_path_pps_64": min(r["pps"] for r in mpls if r["size"] == 64),
        "fast_path_pps_1400": min(r["pps"] for r in mpls if r["size"] == 1400),
        "slow_path_flows_per_s": round(decide_install),
        "slow_path_flows_per_s_with_miss": round(end_to_end),
        "targets": {"fast_path_pps": FAST_TARGET, "slow_path_flows_per_s": SLOW_TARGET},
        "rows": rows, "quick": quick, "flows_in_table": flows, "gro_gso": bench_gro.run(quick),
        "bulk": bench_bulk.run(quick),
        "python": platform.python_version(), "implementation": platform.python_implementation(),
        "steering": bench_steering.run(quick),
        "workers": bench_workers.run(quick),
    }


def report(res: dict, out=print) -> None:
    out(f"vrouter core benchmark - {res['implementation']} {res['python']}, one core, "
        f"{res['flows_in_table']} established flows{' (quick)' if res['quick'] else ''}")
    out(f"{'fast path: decap -> flow hit -> route -> encap':<52}{'size':>6}{'pkts/s':>12}{'us/pkt':>9}{'x target':>10}")
    for r in res["rows"]:
        label = f"  {r['direction']:<11} {r['encap']}"
        out(f"{label:<52}{r['size']:>4} B{r['pps']:>12,}{1e6 / r['pps']:>9.2f}{r['pps'] / FAST_TARGET:>10.2f}")
    out(f"{'slow path':<58}{'flows/s':>12}{'us/flow':>9}{'x target':>10}")
    for label, key in (("  decide + install forward and reverse", "slow_path_flows_per_s"),
                       ("  miss + punt + decide + install (end to end)", "slow_path_flows_per_s_with_miss")):
        v = res[key]
        out(f"{label:<58}{v:>12,}{1e6 / v:>9.2f}{v / SLOW_TARGET:>10.2f}")
    bench_gro.report(res["gro_gso"], out)
    bench_bulk.report(res["bulk"], out)
    ok = res["fast_path_pps_64"] >= FAST_TARGET and res["fast_path_pps_1400"] >= FAST_TARGET and \
        res["slow_path_flows_per_s"] >= SLOW_TARGET
    bench_steering.report(res["steering"], out)
    bench_workers.report(res["workers"], out)
    out(f"targets: fast path >= {FAST_TARGET:,} pkts/s, slow path >= {SLOW_TARGET:,} flows/s per core: "
        f"{'met' if ok else 'NOT met'}")


def main(argv=None) -> int:
    return bench_cli("python -m vrouter.tools.bench", __doc__, run, report, argv,
                     quick_help="smaller runs, a few seconds in total", json_help=JSON_HELP)


if __name__ == "__main__":
    sys.exit(main())
