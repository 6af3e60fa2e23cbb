"""GRO/GSO experiment: overlay TCP throughput and vrouter CPU per GB with the offloads on and off.

Claim (issue 5): merging tunnel packets into super-packets (GRO) and sending TSO super-frames as one
UDP GSO send per burst cut the vrouter's per-packet Python work, so the same fabric carries more
overlay throughput for fewer vrouter CPU seconds per GB. Runs alternate off/on (so drift in the
machine's load hits both alike), each with 1 and 8 TCP streams; the measurement functions are
those of `testbed bench throughput` (testbed/bench_throughput.py).

    sudo python -m experiments.gro [--runs 3] [--seconds 5]

Writes results/gro/<timestamp>/: raw.csv, summary.json, config.yaml, gro.png.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from experiments import common
from experiments.common import add_run_arguments, results_dir

STREAMS = (1, 8)
FIELDS = ("run", "gro_gso", "streams", "seconds", "gbps", "retransmits", "vrouter_cpu_s", "cpu_s_per_gb",
          "gro_segments_per_delivery", "gro_segments_per_merge", "gso_segments_per_send", "gso_sends")


def measure(tb, pair, runs: int, seconds: float, progress) -> list[dict]:
    from testbed.bench_throughput import overlay_run
    rows = []
    for i in range(1, runs + 1):
        for on in (False, True):
            for n in STREAMS:
                progress(f"run {i}/{runs}: GRO/GSO {'on' if on else 'off'}, {n} stream(s), {seconds:g} s")
                r = overlay_run(tb, pair, on, n, seconds)
                rows.append({"run": i, "gro_gso": "on" if on else "off", **{k: r.get(k) for k in FIELDS[2:]}})
                progress(f"  {r['gbps']:.3f} Gbit/s, {r['cpu_s_per_gb'] or 0:.1f} CPU s/GB, "
                         f"{r['gro_segments_per_merge']:.1f} segments per GRO merge")
    return rows


def summarize(rows) -> dict:
    out = {}
    for n in STREAMS:
        per = {}
        for mode in ("off", "on"):
            sel = [r for r in rows if r["streams"] == n and r["gro_gso"] == mode]
            g = [r["gbps"] for r in sel]
            c = [r["cpu_s_per_gb"] for r in sel if r["cpu_s_per_gb"] is not None]
            per[mode] = {"runs": len(sel), "gbps_median": statistics.median(g) if g else None,
                         "gbps_min": min(g, default=None), "gbps_max": max(g, default=None),
                         "cpu_s_per_gb_median": statistics.median(c) if c else None,
                         "gro_segments_per_merge_median":
                             statistics.median(r["gro_segments_per_merge"] for r in sel) if sel else None}
        on, off = per["on"], per["off"]
        per["throughput_on_over_off"] = (on["gbps_median"] / off["gbps_median"]
                                         if on["gbps_median"] and off["gbps_median"] else None)
        per["cpu_per_gb_on_over_off"] = (on["cpu_s_per_gb_median"] / off["cpu_s_per_gb_median"]
                                         if on["cpu_s_per_gb_median"] and off["cpu_s_per_gb_median"] else None)
        out[str(n)] = per
    return out


def off_on_bars(ax, groups: list, ylabel: str, medians, points, fmt: str = "%.2f") -> None:
    """One axes of GRO/GSO off and on medians side by side per group, labelled, each run a dot:
    ``medians(switch)`` gives a height per group, ``points(switch, i)`` the runs of group i."""
    width = 0.35
    for j, (switch, color) in enumerate((("off", "tab:gray"), ("on", "tab:blue"))):
        xs = [i + (j - 0.5) * width for i in range(len(groups))]
        bars = ax.bar(xs, medians(switch), width, color=color, label=f"GRO/GSO {switch} (median)")
        ax.bar_label(bars, fmt=fmt)
        for i, x in enumerate(xs):
            pts = points(switch, i)
            ax.scatter([x] * len(pts), pts, color="black", s=10, zorder=3)
    ax.set_xticks(range(len(groups)), groups)
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)
    ax.legend()


def plot(rows, summary, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.5))
    for ax, key, label in ((ax1, "gbps", "throughput (Gbit/s)"), (ax2, "cpu_s_per_gb", "vrouter CPU seconds per GB")):
        off_on_bars(ax, [f"{n} stream{'s' * (n > 1)}" for n in STREAMS], label,
                    lambda mode: [summary[str(n)][mode][f"{key}_median"] or 0 for n in STREAMS],
                    lambda mode, i: [r[key] for r in rows if r["streams"] == STREAMS[i] and r["gro_gso"] == mode
                                     and r[key] is not None])
    fig.suptitle("Overlay TCP VM to VM across leaves: GRO/GSO off vs on (dots: single runs)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_results(outdir: Path, rows, summary, config) -> None:
    common.write_results(outdir, FIELDS, rows, summary, config)
    plot(rows, summary, outdir / "gro.png")


def summary_lines(summary) -> list[str]:
    lines = [f"{'streams':>7} {'GRO/GSO':>7} {'Gbit/s (median)':>16} {'CPU s/GB (median)':>18} {'segs/merge':>11}"]
    for n in STREAMS:
        for mode in ("off", "on"):
            s = summary[str(n)][mode]
            cpu = f"{s['cpu_s_per_gb_median']:.2f}" if s["cpu_s_per_gb_median"] is not None else "-"
            lines.append(f"{n:>7} {mode:>7} {s['gbps_median']:>16.3f} {cpu:>18} "
                         f"{s['gro_segments_per_merge_median']:>11.1f}")
        t, c = summary[str(n)]["throughput_on_over_off"], summary[str(n)]["cpu_per_gb_on_over_off"]
        lines.append(f"{n} stream(s): throughput on/off {t:.2f}x, CPU per GB on/off {c:.2f}x"
                     if t and c else f"{n} stream(s): no ratio (a run carried no data)")
    return lines


def run(topology_path: Path, runs: int, seconds: float, prefix: str, run_root, outroot: Path, progress):
    topology, pair, rows = common.run_on_pair(topology_path, prefix, run_root, progress,
                                              lambda tb, pair: measure(tb, pair, runs, seconds, progress))
    summary = summarize(rows)
    config = {"experiment": "gro", "runs": runs, "seconds": seconds, "streams": list(STREAMS),
              "order": "per run: off then on, 1 then 8 streams", "pair": pair.ends,
              "topology_file": str(topology_path), "topology": topology.raw}
    outdir = results_dir(outroot)
    write_results(outdir, rows, summary, config)
    return outdir, summary


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m experiments.gro", description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=3, help="runs per mode and stream count (default 3)")
    ap.add_argument("--seconds", type=float, default=5.0, help="iperf3 duration per run (default 5)")
    add_run_arguments(ap, "gro", prefix="gx")
    args = ap.parse_args(argv)
    invalid = None
    if not 1 <= args.runs <= 50 or not 1 <= args.seconds <= 120:
        invalid = "--runs must be 1..50 and --seconds 1..120"
    return common.run_cli(args, lambda topology, progress: run(
        topology, args.runs, args.seconds, args.prefix, args.run_root, Path(args.out), progress),
        summary_lines, invalid)


if __name__ == "__main__":
    sys.exit(main())
