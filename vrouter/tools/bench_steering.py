"""Steering overhead per packet (pure core, one core): ``python -m vrouter.tools.bench_steering [--quick] [--json]``.

What the designated core of a NIC pays to pick a worker for a packet: RPS (parse the inner header,
symmetric hash, bucket lookup) per NIC kind, and for extended RPS the two stages apart (stage 1 on
the designated core: outer addresses and entropy port only; stage 2 on the second core: the inner
hash). 64 B and 1400 B inner Ethernet frames over many flows; best of several runs, the Python loop
included (it is part of what a dispatcher pays).
"""
import sys

from vrouter.core.buckets import BucketTable
from vrouter.core.codec import ethernet, ipv4, l4
from vrouter.core.config import VROUTER_MAC
from vrouter.core.pipeline import encap_prefix
from vrouter.core.steerhash import FIELDS, NIC_KINDS
from vrouter.core.steering import ExtendedRps, Rps
from vrouter.tools.benchlib import JSON_HELP, bench_cli, best_seconds

PEER, LOCAL = "10.0.2.1", "10.0.1.1"
VRF = 100


def _frames(flows: int, size: int, kind: str) -> list:
    out = []
    for i in range(flows):
        src, dst = 0x0A010000 + i % 250 + 2, 0x0A020000 + i
        seg = l4.build_tcp(src, dst, 10000 + i, 443, b"\xab" * (size - 54))
        ip = ipv4.build(src, dst, ipv4.IPPROTO_TCP, seg)
        if kind == "tap":
            out.append(ethernet.build(VROUTER_MAC, b"\x02" * 6, ethernet.ETH_P_IP) + ip)
        else:
            out.append(encap_prefix(kind, VRF, b"\x02" * 6) + ip)
    return out


def _best_us(fn, count: int, repeats: int) -> float:
    return best_seconds(fn, repeats) / count * 1e6


def run(quick: bool = True, workers: int = 2) -> dict:
    flows, rounds, repeats = (500, 4, 3) if quick else (2000, 10, 5)
    inner = BucketTable({w: 1 for w in range(workers)})
    rps = Rps(FIELDS, inner)
    ext = ExtendedRps(BucketTable({w: 1 for w in range(workers)}), inner)
    rows = []
    for size in (64, 1400):
        for kind in NIC_KINDS:
            frames = _frames(flows, size, kind)
            steer = rps.steer
            vrf = VRF if kind == "tap" else None

            def one_stage():
                for _ in range(rounds):
                    for f in frames:
                        steer(kind, f, vrf)
            rows.append({"mode": "rps", "nic": kind, "size": size,
                         "us_per_pkt": round(_best_us(one_stage, rounds * flows, repeats), 3)})
            if kind == "tap":
                continue                              # a TAP has no outer header: extended RPS is RPS there
            ports = [49152 + i % 16384 for i in range(flows)] if kind != "mplsogre" else [0] * flows
            stage1 = ext.stage1

            def first_stage():
                for _ in range(rounds):
                    for p in ports:
                        stage1(PEER, LOCAL, p)
            stage2 = ext.stage2

            def second_stage():
                for _ in range(rounds):
                    for f in frames:
                        stage2(kind, f)
            rows.append({"mode": "extended stage 1", "nic": kind, "size": size,
                         "us_per_pkt": round(_best_us(first_stage, rounds * flows, repeats), 3)})
            rows.append({"mode": "extended stage 2", "nic": kind, "size": size,
                         "us_per_pkt": round(_best_us(second_stage, rounds * flows, repeats), 3)})
    return {
        "rows": rows, "workers": workers, "flows": flows,
        "rps_us_per_pkt_max": max(r["us_per_pkt"] for r in rows if r["mode"] == "rps"),
        "extended_stage1_us_per_pkt_max": max(r["us_per_pkt"] for r in rows if r["mode"] == "extended stage 1"),
    }


def report(res: dict, out=print) -> None:
    out(f"{'steering: pick a worker per packet (' + str(res['workers']) + ' workers)':<52}{'size':>6}{'us/pkt':>21}")
    for r in res["rows"]:
        label = f"  {r['mode']:<17} {r['nic']}"
        out(f"{label:<52}{r['size']:>4} B{r['us_per_pkt']:>21.3f}")


def main(argv=None) -> int:
    return bench_cli("python -m vrouter.tools.bench_steering", __doc__, run, report, argv,
                     quick_help="smaller runs, about a second", json_help=JSON_HELP)


if __name__ == "__main__":
    sys.exit(main())
