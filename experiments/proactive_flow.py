"""Main experiment: proactive versus reactive flow setup, end to end on the testbed.

Claim (US 9,473,394): when the slow path installs the reverse flow entry together with the forward
one, the first reply of a connection never takes the slow path. Per new TCP connection / UDP
request-response between two VMs on different servers we count slow-path invocations at both
vrouters (expected 2 proactive, 4 reactive) and the first-reply latency (TCP connect time, UDP reply).

    sudo python -m experiments.proactive_flow [-n 200] [--topology topologies/default.yaml]

Writes results/proactive_flow/<timestamp>/: raw.csv, summary.json, config.yaml, proactive_flow.png.
"""
from __future__ import annotations

import argparse
import collections
import statistics
import subprocess
import sys
import time
from pathlib import Path

from experiments import common
from experiments.common import (DEFAULT_TOPOLOGY, REPO, ExperimentError, add_run_arguments, load_topology,
                                results_dir)

MODES = ("proactive", "reactive")
PROTOS = ("tcp", "udp")
PROBE_PORT = 7000
# Every exchange gets its own source port: a kernel-chosen ephemeral port may repeat within one
# run (birthday odds over 2n draws), and the repeat would hit the earlier exchange's flow entry.
SPORT_BASE = 10000
MAX_CONNECTIONS = 2500


def pick_pair(topology) -> tuple[dict, dict]:
    """Two VMs of one network on different servers, on different leaves when the topology allows."""
    vms = [{"name": v.name, "network": v.network, "server": v.server, "address": v.address}
           for v in topology.vms]
    best = None
    for src in vms:
        for dst in vms:
            if src["network"] != dst["network"] or src["server"] == dst["server"]:
                continue
            score = 2 if topology.leaf_of(src["server"]) != topology.leaf_of(dst["server"]) else 1
            if best is None or score > best[0]:
                best = (score, src, dst)
    if best is None:
        raise ExperimentError(f"{topology.source}: needs two VMs of one virtual network on different servers")
    return best[1], best[2]


class Vrouters:
    """Slow-path counters of the vrouters on the path, read through their introspection sockets."""

    def __init__(self, rundir, servers):
        from vrouter.io import introspect
        self._query = introspect.query
        self.rundir, self.servers = rundir, servers

    def decisions(self) -> dict:
        return {s: self._query(self.rundir, s, "stats").get("agent", {}).get("decisions", 0) for s in self.servers}

    def recent_punts(self, server: str, last: int) -> list:
        return self._query(self.rundir, server, "punts", last=last)

    def rtt_samples(self) -> dict:
        """Per vrouter: punt sent -> decision installed, in us, as measured by the forwarder."""
        return {s: self._query(self.rundir, s, "rtts") for s in self.servers}

    def modes(self) -> set:
        return {self._query(self.rundir, s, "stats")["mode"] for s in self.servers}

    def reset(self) -> None:
        for s in self.servers:
            self._query(self.rundir, s, "reset")


def set_mode(tb, vrouters: Vrouters, mode: str, timeout: float = 5.0) -> None:
    from testbed import overlay
    with overlay.admin(tb) as vnc:
        vnc.set_flow_mode(mode)
    deadline = time.monotonic() + timeout
    while vrouters.modes() != {mode}:
        if time.monotonic() > deadline:
            raise ExperimentError(f"vrouters did not switch to {mode} mode within {timeout:.0f} s")
        time.sleep(0.05)
    vrouters.reset()


class ProbeClient:
    def __init__(self, host):
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


def start_server(host):
    proc = host.popen([sys.executable, "-m", "experiments.probe", "server", "--port", str(PROBE_PORT)],
                      cwd=str(REPO), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    if proc.stdout.readline().split()[:1] != ["ready"]:
        raise ExperimentError("the probe server in the destination VM did not start")
    return proc


def exchange_row(client, vrouters, mode, proto, i, dst, settle) -> dict:
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


def run_exchanges(tb, n, src, dst, vrouters, progress, block=10, settle=0.02) -> tuple[list, dict]:
    """Modes alternate in blocks (ABBA...) so that drift in machine load hits both modes alike."""
    client = ProbeClient(tb.host(src["name"]))
    rows, rtts = [], {m: {s: [] for s in vrouters.servers} for m in MODES}
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


def p90(ordered: list):
    return ordered[int(0.9 * (len(ordered) - 1))]


def rtt_summary(samples: dict) -> dict:
    out = {}
    for mode, per_server in samples.items():
        out[mode] = {}
        for s, xs in per_server.items():
            xs = sorted(xs)
            out[mode][s] = ({"count": len(xs), "median": statistics.median(xs), "p90": p90(xs)}
                            if xs else {"count": 0})
    return out


def summarize(rows, servers) -> dict:
    out = {}
    for mode in MODES:
        out[mode] = {}
        for proto in PROTOS:
            sel = [r for r in rows if r["mode"] == mode and r["proto"] == proto]
            good = [r for r in sel if r["ok"]]
            lat = sorted(r["first_reply_us"] for r in good)
            counts = [r["slowpath_total"] for r in good]
            hist = dict(collections.Counter(str(c) for c in counts))
            out[mode][proto] = {
                "exchanges": len(sel), "ok": len(good),
                "slowpath_mean": round(statistics.fmean(counts), 3) if counts else None,
                "slowpath_histogram": hist,
                "slowpath_per_server_mean": {s: round(statistics.fmean(r[f"slowpath_{s}"] for r in good), 3)
                                             for s in servers} if good else {},
                "first_reply_us_median": statistics.median(lat) if lat else None,
                "first_reply_us_p90": p90(lat) if lat else None,
            }
    for proto in PROTOS:
        p, r = out["proactive"][proto], out["reactive"][proto]
        if p["first_reply_us_median"] and r["first_reply_us_median"]:
            out.setdefault("ratio_reactive_over_proactive_median_first_reply", {})[proto] = round(
                r["first_reply_us_median"] / p["first_reply_us_median"], 2)
    return out


def plot(rows, summary, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    styles = {"proactive": "-", "reactive": "--"}
    colors = {("proactive", "tcp"): "tab:blue", ("proactive", "udp"): "tab:cyan",
              ("reactive", "tcp"): "tab:orange", ("reactive", "udp"): "tab:red"}
    for mode in MODES:
        for proto in PROTOS:
            lat = sorted(r["first_reply_us"] for r in rows if r["mode"] == mode and r["proto"] == proto
                         and r["ok"])
            if lat:
                ys = [(i + 1) / len(lat) for i in range(len(lat))]
                ax1.step(lat, ys, styles[mode], where="post", color=colors[mode, proto], label=f"{mode} {proto}")
    ax1.set_xscale("log")
    from matplotlib.ticker import NullFormatter, ScalarFormatter
    ax1.xaxis.set_major_formatter(ScalarFormatter())
    ax1.xaxis.set_minor_formatter(NullFormatter())
    ax1.set_xlabel("first-reply latency (us): TCP connect, UDP reply")
    ax1.set_ylabel("CDF")
    ax1.grid(alpha=0.3)
    ax1.legend()
    labels, values = [], []
    for mode in MODES:
        for proto in PROTOS:
            labels.append(f"{mode}\n{proto}")
            values.append(summary[mode][proto]["slowpath_mean"] or 0)
    bars = ax2.bar(labels, values, color=[colors[m, p] for m in MODES for p in PROTOS])
    ax2.bar_label(bars, fmt="%.2f")
    ax2.set_ylabel("slow-path invocations per exchange (both vrouters)")
    ax2.grid(axis="y", alpha=0.3)
    fig.suptitle("Proactive vs reactive reverse flow entries")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_results(outdir: Path, rows, summary, config) -> None:
    servers = config["servers"]
    fields = (["mode", "proto", "seq", "ok", "sport", "first_reply_us"] +
              [f"slowpath_{s}" for s in servers] + ["slowpath_total", "error", "note"])
    common.write_results(outdir, fields, rows, summary, config)
    plot(rows, summary, outdir / "proactive_flow.png")


def summary_lines(summary) -> list[str]:
    lines = [f"{'mode':10} {'proto':5} {'ok':>9} {'slow-path/exch':>14} {'median first reply':>19} {'p90':>9}"]
    for mode in MODES:
        for proto in PROTOS:
            s = summary[mode][proto]
            med = f"{s['first_reply_us_median']:.0f} us" if s["first_reply_us_median"] is not None else "-"
            p90 = f"{s['first_reply_us_p90']:.0f} us" if s["first_reply_us_p90"] is not None else "-"
            lines.append(f"{mode:10} {proto:5} {s['ok']:>4}/{s['exchanges']:<4} {s['slowpath_mean']!s:>14} "
                         f"{med:>19} {p90:>9}")
    for proto, ratio in summary.get("ratio_reactive_over_proactive_median_first_reply", {}).items():
        lines.append(f"median first-reply latency, reactive / proactive ({proto}): {ratio:.2f}x")
    for mode, per_server in summary.get("slowpath_rtt_us", {}).items():
        parts = [f"{s} {v['median']:.0f} us (n={v['count']})" for s, v in per_server.items() if v.get("count")]
        if parts:
            lines.append(f"slow-path round trip (punt -> decision installed), median, {mode}: " + ", ".join(parts))
    return lines


def run(topology_path: Path, n: int, prefix: str, run_root, outroot: Path, progress) -> tuple[Path, dict]:
    from testbed.runner import Testbed
    topology = load_topology(topology_path)
    src, dst = pick_pair(topology)
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
              "protocols": list(PROTOS), "servers": servers, "pair": {"src": src["name"], "dst": dst["name"]},
              "topology_file": str(topology_path), "topology": topology.raw}
    outdir = results_dir(outroot)
    write_results(outdir, rows, summary, config)
    return outdir, summary


def main(argv=None) -> int:
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
