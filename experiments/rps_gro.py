"""GRO/GSO through multi-core vrouters: VM-to-VM TCP throughput with the offloads off and on, per mode.

The measurement of experiments/gro.py (`testbed.bench_throughput.overlay_run`: switch both vrouters
of the pair, zero their stats, iperf3 VM to VM across leaves, GRO/GSO figures from `stats`), with the
pair's vrouters restarted as multi-core vrouters (2 workers) in each steering mode; `single` is the
one-process forwarder, for comparison. Runs alternate off/on within a mode, so drift in the
machine's load hits both alike. Vrouter CPU seconds per GB count the dispatcher, its forked workers
and relays, and the agent, on both servers.

    sudo python -m experiments.rps_gro [--modes rps,kernel] [--runs 2] [--seconds 5] [--streams 1]

Writes results/rps_gro/<timestamp>/: raw.csv, summary.json, config.yaml, rps_gro.png.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from experiments import common
from experiments.common import ExperimentError, add_run_arguments, results_dir

MODES = ("single", "rps", "extended", "kernel")
FIELDS = ("mode", "run", "gro_gso", "streams", "seconds", "gbps", "retransmits", "cpu_s_per_gb", "gro_segments_per_delivery",
          "gro_segments_per_merge", "gso_segments_per_send", "gso_sends")


def steering(mode: str) -> dict | None:
    return None if mode == "single" else {"mode": mode, "workers": [0, 1]}


def measure(tb, pair, modes, runs: int, seconds: float, streams: int, progress) -> list[dict]:
    from experiments.rps import wait_ping
    from testbed import overlay
    from testbed.bench_throughput import overlay_run
    rows = []
    for mode in modes:
        for server in (pair.client, pair.server):
            overlay.restart_forwarder(tb, server, steering(mode))
        if not wait_ping(tb, pair.client_vm.name, pair.server_vm.address, 20):
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


def summarize(rows, modes) -> dict:
    out = {}
    for mode in modes:
        per = {}
        for switch in ("off", "on"):
            sel = [r for r in rows if r["mode"] == mode and r["gro_gso"] == switch]
            per[switch] = {"runs": len(sel), "gbps": [round(r["gbps"], 3) for r in sel],
                           "gbps_median": statistics.median(r["gbps"] for r in sel),
                           "gro_segments_per_merge_median": statistics.median(r["gro_segments_per_merge"] for r in sel),
                           "gso_segments_per_send_median": statistics.median(r["gso_segments_per_send"] for r in sel)}
            cpu = [r["cpu_s_per_gb"] for r in sel if r.get("cpu_s_per_gb") is not None]
            per[switch]["cpu_s_per_gb_median"] = statistics.median(cpu) if cpu else None
        per["throughput_on_over_off"] = (round(per["on"]["gbps_median"] / per["off"]["gbps_median"], 3)
                                         if per["off"]["gbps_median"] else None)
        out[mode] = per
    return out


def plot(rows, summary, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from experiments.gro import off_on_bars
    modes = list(summary)
    fig, ax = plt.subplots(figsize=(2.2 * len(modes) + 3, 4.5))
    off_on_bars(ax, [m if m == "single" else f"{m}, 2 workers" for m in modes], "iperf3 VM to VM (Gbit/s)",
                lambda switch: [summary[m][switch]["gbps_median"] for m in modes],
                lambda switch, i: summary[modes[i]][switch]["gbps"], fmt="%.3f")
    ax.set_title("Overlay TCP across leaves through multi-core vrouters: offloads off vs on (dots: runs)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def summary_lines(summary) -> list[str]:
    lines = [f"{'mode':9}{'GRO/GSO':>8}{'Gbit/s (median)':>17}{'runs':>22}{'segs/merge':>12}{'segs/send':>11}"
             f"{'CPU s/GB':>10}"]
    for mode, per in summary.items():
        for switch in ("off", "on"):
            s = per[switch]
            cpu = s.get("cpu_s_per_gb_median")
            lines.append(f"{mode:9}{switch:>8}{s['gbps_median']:>17.3f}{str(s['gbps']):>22}"
                         f"{s['gro_segments_per_merge_median']:>12.1f}{s['gso_segments_per_send_median']:>11.1f}"
                         f"{(f'{cpu:.1f}' if cpu is not None else '-'):>10}")
        lines.append(f"{mode}: throughput on/off {per['throughput_on_over_off']}x")
    return lines


def run(topology_path: Path, modes, runs: int, seconds: float, streams: int, prefix: str, run_root,
        outroot: Path, progress):
    topology, pair, rows = common.run_on_pair(
        topology_path, prefix, run_root, progress,
        lambda tb, pair: measure(tb, pair, modes, runs, seconds, streams, progress))
    summary = summarize(rows, modes)
    config = {"experiment": "rps_gro", "modes": list(modes), "steering": {m: steering(m) for m in modes},
              "runs": runs, "seconds": seconds, "streams": streams, "order": "per mode and run: off then on",
              "pair": pair.ends,
              "topology_file": str(topology_path), "topology": topology.raw}
    outdir = results_dir(outroot)
    common.write_results(outdir, FIELDS, rows, summary, config)
    plot(rows, summary, outdir / "rps_gro.png")
    return outdir, summary


def main(argv=None) -> int:
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
