"""GRO/GSO experiment: overlay TCP throughput and vrouter CPU per GB with the offloads on and off.

Claim (issue 5): merging tunnel packets into super-packets (GRO) and sending TSO super-frames as one
UDP GSO send per burst cut the vrouter's per-packet Python work, so the same fabric carries more
overlay throughput for fewer vrouter CPU seconds per GB. Runs alternate off/on (so drift in the
machine's load hits both alike), each with 1 and 8 TCP streams; the measurement functions are
those of `testbed bench throughput` (testbed/measure/throughput.py). With --runs N every figure is
reported as its median with the spread (min, max) over the N runs.

    sudo python -m experiments.gro [--runs 3] [--seconds 5]

Writes results/gro/<timestamp>/: raw.csv, summary.json, config.yaml, provenance.json, gro.png.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from experiments import common
from experiments.common import Progress, add_run_arguments
from testbed.measure import plot as plots
from testbed.measure.pairs import VmPair
from testbed.measure.results import ResultsRun
from testbed.measure.spread import spread_keys, spread_text
from testbed.measure.throughput import overlay_run
from testbed.runner import Testbed

STREAMS = (1, 8)
SWITCHES = ("off", "on")
FIELDS = ("run", "gro_gso", "streams", "seconds", "gbps", "retransmits", "vrouter_cpu_s", "cpu_s_per_gb",
          "gro_segments_per_delivery", "gro_segments_per_merge", "gso_segments_per_send", "gso_sends")
# Figures summarized per stream count and switch as <name>_min, _median, _max.
SPREAD = ("gbps", "cpu_s_per_gb", "gro_segments_per_merge", "gso_segments_per_send")


def measure(tb: Testbed, pair: VmPair, runs: int, seconds: float, progress: Progress) -> list[dict]:
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


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def summarize(rows: list[dict]) -> dict:
    """Per stream count: per switch the runs and the spread of SPREAD; the on/off ratios of the medians."""
    out = {}
    for n in STREAMS:
        per: dict = {}
        for mode in SWITCHES:
            sel = [r for r in rows if r["streams"] == n and r["gro_gso"] == mode]
            per[mode] = {"runs": len(sel)}
            for key in SPREAD:
                per[mode].update(spread_keys(key, (r.get(key) for r in sel)))
        on, off = per["on"], per["off"]
        per["throughput_on_over_off"] = ratio(on["gbps_median"], off["gbps_median"])
        per["cpu_per_gb_on_over_off"] = ratio(on["cpu_s_per_gb_median"], off["cpu_s_per_gb_median"])
        out[str(n)] = per
    return out


def plot(rows: list[dict], summary: dict, path: Path) -> None:
    fig, axes = plots.figure(2, width=11)
    groups = [f"{n} stream{'s' * (n > 1)}" for n in STREAMS]
    for ax, key, label in ((axes[0], "gbps", "throughput (Gbit/s)"),
                           (axes[1], "cpu_s_per_gb", "vrouter CPU seconds per GB (s/GB)")):
        plots.grouped_bars(ax, groups, [plots.Bars(
            f"GRO/GSO {switch} (median)", [summary[str(n)][switch][f"{key}_median"] for n in STREAMS],
            plots.OFF_ON[switch], [[r[key] for r in rows if r["streams"] == n and r["gro_gso"] == switch
                                    and r[key] is not None] for n in STREAMS]) for switch in SWITCHES])
        plots.label(ax, "iperf3 TCP streams", label, label.split(" (")[0])
    plots.save(fig, path, "Overlay TCP VM to VM across leaves: GRO/GSO off vs on (bars: medians, dots: single runs)")


def summary_lines(summary: dict) -> list[str]:
    lines = [f"{'streams':>7} {'GRO/GSO':>7} {'runs':>4} {'Gbit/s median (min-max)':>26} "
             f"{'CPU s/GB median (min-max)':>26} {'segs/merge':>11}"]
    for n in STREAMS:
        for mode in SWITCHES:
            s = summary[str(n)][mode]
            merge = s["gro_segments_per_merge_median"]
            lines.append(f"{n:>7} {mode:>7} {s['runs']:>4} {spread_text(s, 'gbps'):>26} "
                         f"{spread_text(s, 'cpu_s_per_gb', '{:.2f}'):>26} "
                         f"{(f'{merge:.1f}' if merge is not None else '-'):>11}")
        t, c = summary[str(n)]["throughput_on_over_off"], summary[str(n)]["cpu_per_gb_on_over_off"]
        lines.append(f"{n} stream(s): throughput on/off {t:.2f}x, CPU per GB on/off {c:.2f}x (medians)"
                     if t and c else f"{n} stream(s): no ratio (a run carried no data)")
    return lines


def run(topology_path: Path, runs: int, seconds: float, prefix: str, run_root: str | None, outroot: Path,
        progress: Progress) -> tuple[Path, dict]:
    results = ResultsRun("gro", outroot)
    topology, pair, rows = common.run_on_pair(topology_path, prefix, run_root, progress,
                                              lambda tb, pair: measure(tb, pair, runs, seconds, progress))
    summary = summarize(rows)
    config = {"experiment": "gro", "runs": runs, "seconds": seconds, "streams": list(STREAMS),
              "order": "per run: off then on, 1 then 8 streams", "pair": pair.ends,
              "topology_file": str(topology_path), "topology": topology.raw}
    return results.write(FIELDS, rows, summary, config, lambda path: plot(rows, summary, path)), summary


def main(argv: list[str] | None = None) -> int:
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
