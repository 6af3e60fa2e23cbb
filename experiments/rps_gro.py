"""GRO/GSO through multi-core vrouters: VM-to-VM TCP throughput with the offloads off and on, per mode.

The measurement of experiments/gro.py (`testbed.measure.throughput.overlay_run`: switch both vrouters
of the pair, zero their stats, iperf3 VM to VM across leaves, GRO/GSO figures from `stats`), with the
pair's vrouters restarted as multi-core vrouters (2 workers) in each steering mode; `single` is the
one-process forwarder, for comparison. Runs alternate off/on within a mode, so drift in the
machine's load hits both alike. Vrouter CPU seconds per GB count the dispatcher, its forked workers
and relays, and the agent, on both servers. Every figure is reported as the median with its spread
(min, max) over the --runs runs.

    sudo python -m experiments.rps_gro [--modes rps,kernel] [--runs 2] [--seconds 5] [--streams 1]

Writes results/rps_gro/<timestamp>/: raw.csv, summary.json, config.yaml, provenance.json, rps_gro.png.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from experiments import common
from experiments.common import ExperimentError, Progress, add_run_arguments
from testbed import overlay
from testbed.measure import plot as plots
from testbed.measure.pairs import VmPair
from testbed.measure.results import ResultsRun
from testbed.measure.runners import wait_ping
from testbed.measure.spread import spread_keys, spread_text
from testbed.measure.throughput import overlay_run
from testbed.runner import Testbed

MODES = ("single", "rps", "extended", "kernel")
SWITCHES = ("off", "on")
FIELDS = ("mode", "run", "gro_gso", "streams", "seconds", "gbps", "retransmits", "cpu_s_per_gb",
          "gro_segments_per_delivery", "gro_segments_per_merge", "gso_segments_per_send", "gso_sends")
# Figures summarized per mode and switch as <name>_min, _median, _max.
SPREAD = ("gbps", "cpu_s_per_gb", "gro_segments_per_merge", "gso_segments_per_send")
REACH_TIMEOUT = 20.0  # s for the pair to ping each other after the vrouters restart


def steering(mode: str) -> dict | None:
    return None if mode == "single" else {"mode": mode, "workers": [0, 1]}


def measure(tb: Testbed, pair: VmPair, modes: list[str], runs: int, seconds: float, streams: int,
            progress: Progress) -> list[dict]:
    rows = []
    for mode in modes:
        for server in pair.servers:
            overlay.restart_forwarder(tb, server, steering(mode))
        if not wait_ping(tb.host(pair.client_vm.name), pair.server_vm.address, REACH_TIMEOUT):
            raise ExperimentError(f"{mode}: {pair.client_vm.name} cannot reach {pair.server_vm.name}")
        for i in range(1, runs + 1):
            for on in (False, True):
                r = overlay_run(tb, pair, on, streams, seconds)
                rows.append({"mode": mode, "run": i, "gro_gso": "on" if on else "off",
                             **{k: r.get(k) for k in FIELDS[3:]}})
                progress(f"  {mode:8} run {i}/{runs} GRO/GSO {'on ' if on else 'off'}: {r['gbps']:.3f} Gbit/s, "
                         f"{r['gro_segments_per_merge']:.1f} segments per GRO merge, "
                         f"{r['gso_segments_per_send']:.1f} per GSO send, {r['cpu_s_per_gb'] or 0:.1f} CPU s/GB")
    return rows


def summarize(rows: list[dict], modes: list[str]) -> dict:
    """Per mode and switch: the runs' Gbit/s and the spread of SPREAD; the on/off ratio of the medians."""
    out = {}
    for mode in modes:
        per: dict = {}
        for switch in SWITCHES:
            sel = [r for r in rows if r["mode"] == mode and r["gro_gso"] == switch]
            per[switch] = {"runs": len(sel), "gbps": [round(r["gbps"], 3) for r in sel]}
            for key in SPREAD:
                per[switch].update(spread_keys(key, (r.get(key) for r in sel)))
        per["throughput_on_over_off"] = (round(per["on"]["gbps_median"] / per["off"]["gbps_median"], 3)
                                         if per["off"]["gbps_median"] else None)
        out[mode] = per
    return out


def plot(rows: list[dict], summary: dict, path: Path) -> None:
    modes = list(summary)
    fig, (ax,) = plots.figure(width=2.2 * len(modes) + 3)
    plots.grouped_bars(ax, [m if m == "single" else f"{m}, 2 workers" for m in modes], [
        plots.Bars(f"GRO/GSO {switch} (median)", [summary[m][switch]["gbps_median"] for m in modes],
                   plots.OFF_ON[switch], [summary[m][switch]["gbps"] for m in modes]) for switch in SWITCHES],
        fmt="%.3f")
    plots.label(ax, "vrouter (steering mode, workers)", "iperf3 TCP VM to VM (Gbit/s)")
    plots.save(fig, path, "Overlay TCP across leaves through multi-core vrouters: offloads off vs on "
                          "(bars: medians, dots: runs)")


def summary_lines(summary: dict) -> list[str]:
    lines = [f"{'mode':9}{'GRO/GSO':>8}{'Gbit/s median (min-max)':>26}{'runs':>22}{'segs/merge':>12}{'segs/send':>11}"
             f"{'CPU s/GB':>10}"]
    for mode, per in summary.items():
        for switch in SWITCHES:
            s = per[switch]
            cpu = s.get("cpu_s_per_gb_median")
            lines.append(f"{mode:9}{switch:>8}{spread_text(s, 'gbps'):>26}{str(s['gbps']):>22}"
                         f"{s['gro_segments_per_merge_median']:>12.1f}{s['gso_segments_per_send_median']:>11.1f}"
                         f"{(f'{cpu:.1f}' if cpu is not None else '-'):>10}")
        lines.append(f"{mode}: throughput on/off {per['throughput_on_over_off']}x (medians)")
    return lines


def run(topology_path: Path, modes: list[str], runs: int, seconds: float, streams: int, prefix: str,
        run_root: str | None, outroot: Path, progress: Progress) -> tuple[Path, dict]:
    results = ResultsRun("rps_gro", outroot)
    topology, pair, rows = common.run_on_pair(
        topology_path, prefix, run_root, progress,
        lambda tb, pair: measure(tb, pair, modes, runs, seconds, streams, progress))
    summary = summarize(rows, modes)
    config = {"experiment": "rps_gro", "modes": list(modes), "steering": {m: steering(m) for m in modes},
              "runs": runs, "seconds": seconds, "streams": streams, "order": "per mode and run: off then on",
              "pair": pair.ends, "topology_file": str(topology_path), "topology": topology.raw}
    return results.write(FIELDS, rows, summary, config, lambda path: plot(rows, summary, path)), summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m experiments.rps_gro", description=__doc__.split("\n")[0])
    ap.add_argument("--modes", default="rps,kernel",
                    help=f"comma-separated, of {', '.join(MODES)} (default rps,kernel)")
    ap.add_argument("--runs", type=int, default=2, help="off/on pairs per mode (default 2)")
    ap.add_argument("--seconds", type=float, default=5.0, help="iperf3 duration per run (default 5)")
    ap.add_argument("--streams", type=int, default=1, help="iperf3 streams (default 1)")
    add_run_arguments(ap, "rps_gro", prefix="hx")
    args = ap.parse_args(argv)
    asked = [m for m in args.modes.split(",") if m]
    # In MODES order: a single forwarder cannot take over the multi-queue TAPs kernel mode leaves.
    modes = [m for m in MODES if m in asked]
    invalid = None
    if not modes or set(asked) - set(MODES):
        invalid = f"--modes: give some of {', '.join(MODES)}"
    elif not 1 <= args.runs <= 50 or not 1 <= args.seconds <= 120 or not 1 <= args.streams <= 16:
        invalid = "--runs must be 1..50, --seconds 1..120 and --streams 1..16"
    return common.run_cli(args, lambda topology, progress: run(
        topology, modes, args.runs, args.seconds, args.streams, args.prefix, args.run_root, Path(args.out),
        progress), summary_lines, invalid)


if __name__ == "__main__":
    sys.exit(main())
