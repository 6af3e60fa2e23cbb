"""Main experiment: proactive versus reactive flow setup, end to end on the testbed.

Claim (US 9,473,394): when the slow path installs the reverse flow entry together with the forward
one, the first reply of a connection never takes the slow path. Per new TCP connection / UDP
request-response between two VMs on different servers we count slow-path invocations at both
vrouters (expected 2 proactive, 4 reactive) and the first-reply latency (TCP connect time, UDP reply).

    sudo python -m experiments.proactive_flow [-n 200] [--topology topologies/default.yaml]

Writes results/proactive_flow/<timestamp>/: raw.csv, summary.json, config.yaml, provenance.json,
proactive_flow.png. Also run by `testbed demo` and `sudo make demo`.
"""
from __future__ import annotations

import argparse
import collections
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from experiments import common
from experiments.common import ExperimentError, Progress, add_run_arguments, load_topology
from testbed import DEFAULT_TOPOLOGY, REPO, overlay  # noqa: F401 (DEFAULT_TOPOLOGY: the tests run what -n runs)
from testbed.measure import plot as plots
from testbed.measure.pairs import vm_dict
from testbed.measure.results import ResultsRun
from testbed.measure.spread import percentile_low, spread, spread_keys
from testbed.runner import Testbed
from vrouter.io import introspect

MODES = ("proactive", "reactive")
PROTOS = ("tcp", "udp")
PROBE_PORT = 7000
# Every exchange gets its own source port: a kernel-chosen ephemeral port may repeat within one
# run (birthday odds over 2n draws), and the repeat would hit the earlier exchange's flow entry.
SPORT_BASE = 10000
MAX_CONNECTIONS = 2500
BLOCK = 10  # exchanges per mode before the modes alternate
SETTLE = 0.02  # s after an exchange before the counters are read


class Vrouters:
    """Slow-path counters of the vrouters on the path, read through their introspection sockets."""

    def __init__(self, rundir: Path, servers: list[str]) -> None:
        self.rundir, self.servers = rundir, servers

    def decisions(self) -> dict[str, int]:
        return {s: introspect.query(self.rundir, s, "stats").get("agent", {}).get("decisions", 0)
                for s in self.servers}

    def recent_punts(self, server: str, last: int) -> list:
        return introspect.query(self.rundir, server, "punts", last=last)

    def rtt_samples(self) -> dict[str, list]:
        """Per vrouter: punt sent -> decision installed, in us, as measured by the forwarder."""
        return {s: introspect.query(self.rundir, s, "rtts") for s in self.servers}

    def modes(self) -> set[str]:
        return {introspect.query(self.rundir, s, "stats")["mode"] for s in self.servers}

    def reset(self) -> None:
        for s in self.servers:
            introspect.query(self.rundir, s, "reset")


def set_mode(tb: Testbed, vrouters: Vrouters, mode: str, timeout: float = 5.0) -> None:
    with overlay.admin(tb) as vnc:
        vnc.set_flow_mode(mode)
    deadline = time.monotonic() + timeout
    while vrouters.modes() != {mode}:
        if time.monotonic() > deadline:
            raise ExperimentError(f"vrouters did not switch to {mode} mode within {timeout:.0f} s")
        time.sleep(0.05)
    vrouters.reset()


class ProbeClient:
    """The probe client in the source VM (experiments/probe.py): one exchange per line it reads."""

    def __init__(self, host: Any) -> None:
        self.proc = host.popen([sys.executable, "-m", "experiments.probe", "client"], cwd=str(REPO),
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                               text=True, bufsize=1)

    def exchange(self, proto: str, dst: str, port: int, sport: int = 0) -> tuple[bool, int, int, str]:
        self.proc.stdin.write(f"{proto} {dst} {port} {sport}\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline().split()
        if not line:
            raise ExperimentError("the probe client in the VM exited")
        if line[0] == "ok":
            return True, int(line[2]), int(line[3]), ""
        return False, 0, 0, " ".join(line[2:])

    def close(self) -> None:
        try:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.close()
            self.proc.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()


def start_server(host: Any) -> subprocess.Popen:
    proc = host.popen([sys.executable, "-m", "experiments.probe", "server", "--port", str(PROBE_PORT)],
                      cwd=str(REPO), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    if proc.stdout.readline().split()[:1] != ["ready"]:
        raise ExperimentError("the probe server in the destination VM did not start")
    return proc


def exchange_row(client: ProbeClient, vrouters: Vrouters, mode: str, proto: str, i: int, dst: dict,
                 settle: float) -> dict:
    before = vrouters.decisions()
    want = SPORT_BASE + (MODES.index(mode) * len(PROTOS) + PROTOS.index(proto)) * MAX_CONNECTIONS + i
    ok, sport, us, err = client.exchange(proto, dst["address"], PROBE_PORT, want)
    time.sleep(settle)  # let the last packets of the exchange (FIN/ACK) pass the vrouters
    after = vrouters.decisions()
    row = {"mode": mode, "proto": proto, "seq": i, "ok": int(ok), "sport": sport,
           "first_reply_us": us if ok else "", "error": err}
    total, notes = 0, []
    expected = 1 if mode == "proactive" else 2
    for s in vrouters.servers:
        d = after[s] - before[s]
        row[f"slowpath_{s}"] = d
        total += d
        if d != expected and d > 0:
            # Name the flows that took the slow path, so an outlier can be explained.
            for pk in vrouters.recent_punts(s, d):
                notes.append(f"{s}:{pk['ingress']}:{pk['proto']}:{pk['src']}:{pk['sport']}>"
                             f"{pk['dst']}:{pk['dport']}:flags={pk['tcp_flags']}")
    row["slowpath_total"] = total
    row["note"] = " ".join(notes)
    return row


def run_exchanges(tb: Testbed, n: int, src: dict, dst: dict, vrouters: Vrouters, progress: Progress,
                  block: int = BLOCK, settle: float = SETTLE) -> tuple[list, dict]:
    """Modes alternate in blocks (ABBA...) so that drift in machine load hits both modes alike."""
    client = ProbeClient(tb.host(src["name"]))
    rows: list[dict] = []
    rtts: dict[str, dict[str, list]] = {m: {s: [] for s in vrouters.servers} for m in MODES}
    done = dict.fromkeys(MODES, 0)
    try:
        # Warm-up outside the measurement: the VMs' ARP caches for their gateway.
        for proto in PROTOS:
            client.exchange(proto, dst["address"], PROBE_PORT)
        time.sleep(0.2)
        for b in range((n + block - 1) // block):
            order = MODES if b % 2 == 0 else MODES[::-1]
            for mode in order:
                set_mode(tb, vrouters, mode)
                for i in range(done[mode], min(n, done[mode] + block)):
                    for proto in PROTOS:
                        rows.append(exchange_row(client, vrouters, mode, proto, i, dst, settle))
                done[mode] = min(n, done[mode] + block)
                for s, samples in vrouters.rtt_samples().items():
                    rtts[mode][s] += samples
            progress(f"  {done['proactive']}/{n} proactive, {done['reactive']}/{n} reactive connections")
    finally:
        client.close()
    return rows, rtts


def rtt_summary(samples: dict) -> dict:
    """Per mode and vrouter: count, median, p90 and the spread of the slow-path round trips (us)."""
    out: dict = {}
    for mode, per_server in samples.items():
        out[mode] = {}
        for s, xs in per_server.items():
            out[mode][s] = {"count": len(xs), **spread(xs), "p90": percentile_low(xs, 0.9)} if xs else {"count": 0}
    return out


def summarize(rows: list[dict], servers: list[str]) -> dict:
    out: dict = {}
    for mode in MODES:
        out[mode] = {}
        for proto in PROTOS:
            sel = [r for r in rows if r["mode"] == mode and r["proto"] == proto]
            good = [r for r in sel if r["ok"]]
            lat = [r["first_reply_us"] for r in good]
            counts = [r["slowpath_total"] for r in good]
            hist = dict(collections.Counter(str(c) for c in counts))
            out[mode][proto] = {
                "exchanges": len(sel), "ok": len(good),
                "slowpath_mean": round(statistics.fmean(counts), 3) if counts else None,
                "slowpath_histogram": hist,
                "slowpath_per_server_mean": {s: round(statistics.fmean(r[f"slowpath_{s}"] for r in good), 3)
                                             for s in servers} if good else {},
                **spread_keys("first_reply_us", lat),
                "first_reply_us_p90": percentile_low(lat, 0.9),
            }
    for proto in PROTOS:
        p, r = out["proactive"][proto], out["reactive"][proto]
        if p["first_reply_us_median"] and r["first_reply_us_median"]:
            out.setdefault("ratio_reactive_over_proactive_median_first_reply", {})[proto] = round(
                r["first_reply_us_median"] / p["first_reply_us_median"], 2)
    return out


COLORS = {("proactive", "tcp"): "tab:blue", ("proactive", "udp"): "tab:cyan",
          ("reactive", "tcp"): "tab:orange", ("reactive", "udp"): "tab:red"}
STYLES = {"proactive": "-", "reactive": "--"}


def plot(rows: list[dict], summary: dict, path: Path) -> None:
    """Left: first-reply latency CDFs per mode and protocol; right: slow-path calls per exchange."""
    fig, (ax1, ax2) = plots.figure(2, width=11)
    for mode in MODES:
        for proto in PROTOS:
            plots.cdf(ax1, [r["first_reply_us"] for r in rows if r["mode"] == mode and r["proto"] == proto and r["ok"]],
                      f"{mode} {proto}", STYLES[mode], COLORS[mode, proto])
    plots.log_x(ax1)
    plots.label(ax1, "first-reply latency (us, log scale): TCP connect, UDP reply", "fraction of exchanges (CDF)",
                "first-reply latency", grid="both")
    keys = [(m, p) for m in MODES for p in PROTOS]
    bars = ax2.bar([f"{m}\n{p}" for m, p in keys], [summary[m][p]["slowpath_mean"] or 0 for m, p in keys],
                   color=[COLORS[k] for k in keys])
    ax2.bar_label(bars, fmt="%.2f")
    plots.label(ax2, "flow setup mode, protocol", "slow-path calls per exchange (both vrouters)",
                "slow-path calls (mean)")
    plots.save(fig, path, "Proactive vs reactive reverse flow entries")


def fields(servers: list[str]) -> list[str]:
    """raw.csv's columns: one row per exchange."""
    return (["mode", "proto", "seq", "ok", "sport", "first_reply_us"] + [f"slowpath_{s}" for s in servers]
            + ["slowpath_total", "error", "note"])


def _us(value: float | None) -> str:
    return f"{value:.0f} us" if value is not None else "-"


def summary_lines(summary: dict) -> list[str]:
    lines = [f"{'mode':10} {'proto':5} {'ok':>9} {'slow-path/exch':>14} {'first reply: min':>18} {'median':>9} "
             f"{'p90':>9} {'max':>9}"]
    for mode in MODES:
        for proto in PROTOS:
            s = summary[mode][proto]
            lines.append(f"{mode:10} {proto:5} {s['ok']:>4}/{s['exchanges']:<4} {s['slowpath_mean']!s:>14} "
                         f"{_us(s['first_reply_us_min']):>18} {_us(s['first_reply_us_median']):>9} "
                         f"{_us(s['first_reply_us_p90']):>9} {_us(s['first_reply_us_max']):>9}")
    for proto, ratio in summary.get("ratio_reactive_over_proactive_median_first_reply", {}).items():
        lines.append(f"median first-reply latency, reactive / proactive ({proto}): {ratio:.2f}x")
    for mode, per_server in summary.get("slowpath_rtt_us", {}).items():
        parts = [f"{s} {v['median']:.0f} us ({v['min']:.0f}-{v['max']:.0f}, n={v['count']})"
                 for s, v in per_server.items() if v.get("count")]
        if parts:
            lines.append(f"slow-path round trip (punt -> decision installed), median (min-max), {mode}: "
                         + ", ".join(parts))
    return lines


def run(topology_path: Path, n: int, prefix: str, run_root: str | None, outroot: Path,
        progress: Progress) -> tuple[Path, dict]:
    results = ResultsRun("proactive_flow", outroot)
    topology = load_topology(topology_path)
    pair = common.pair_of(topology, require_cross_leaf=False)
    src, dst = vm_dict(pair.client_vm), vm_dict(pair.server_vm)
    servers = [src["server"], dst["server"]]
    progress(f"bringing up {topology.name} ({topology_path}) with prefix {prefix!r}")
    t0 = time.monotonic()
    tb = Testbed(topology, prefix=prefix, run_root=run_root, progress=lambda m: progress("  " + m)).start()
    try:
        progress(f"testbed up in {time.monotonic() - t0:.1f} s; run dir {tb.path}")
        progress(f"pair: {src['name']}@{src['server']} -> {dst['name']}@{dst['server']} "
                 f"({dst['address']}, network {src['network']}), {n} TCP + {n} UDP exchanges per mode")
        vrouters = Vrouters(tb.path, servers)
        server = start_server(tb.host(dst["name"]))
        try:
            rows, rtts = run_exchanges(tb, n, src, dst, vrouters, progress)
        finally:
            server.kill()
            server.wait()
    finally:
        progress("tearing down")
        tb.stop()
    summary = summarize(rows, servers)
    summary["slowpath_rtt_us"] = rtt_summary(rtts)
    summary["pair"] = {"src": src, "dst": dst}
    config = {"experiment": "proactive_flow", "connections_per_mode": n, "modes": list(MODES),
              "protocols": list(PROTOS), "alternation_block": BLOCK, "settle_s": SETTLE, "servers": servers,
              "pair": {"src": src["name"], "dst": dst["name"]},
              "topology_file": str(topology_path), "topology": topology.raw}
    outdir = results.write(fields(servers), rows, summary, config, lambda path: plot(rows, summary, path))
    return outdir, summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m experiments.proactive_flow", description=__doc__.split("\n")[0])
    ap.add_argument("-n", "--connections", type=int, default=200,
                    help="new TCP connections and UDP exchanges per mode (default 200)")
    add_run_arguments(ap, "proactive_flow", prefix="pf")
    args = ap.parse_args(argv)
    invalid = None
    if not 1 <= args.connections <= MAX_CONNECTIONS:
        invalid = f"--connections must be between 1 and {MAX_CONNECTIONS}"
    return common.run_cli(args, lambda topology, progress: run(
        topology, args.connections, args.prefix, args.run_root, Path(args.out), progress),
        summary_lines, invalid)


if __name__ == "__main__":
    sys.exit(main())
