"""Receive packet steering across worker processes: per-worker load, Jain's fairness, throughput.

64 UDP flows (two virtual networks x 32 source/destination port pairs) from the VMs of one server to
the VMs of a server on the other leaf, through vrouters with 1 and with 2 workers, in each steering
mode: rps (the designated core hashes the inner header), extended (stage 1 hashes the outer header
to pick a second core, which hashes the inner header), kernel (SO_REUSEPORT tunnel sockets and a
multi-queue TAP per VM: the kernel picks the worker). Per run: packets each worker handled at the
sending vrouter (TAP side) and the receiving one (fabric side), Jain's index over the workers,
datagrams delivered per second, and slow-path calls per vrouter (64 expected with a proactive
reverse entry; the kernel mode may punt more: a flow's two directions can land on different workers).

    sudo python -m experiments.rps [--seconds 3] [--pps 40000] [--topology topologies/default.yaml]

Each (mode, workers) configuration runs once; the spread is over its workers (Jain's index).

Writes results/rps/<timestamp>/: raw.csv, summary.json, config.yaml, provenance.json, rps.png.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from experiments import common
from experiments.common import ExperimentError, Progress, add_run_arguments, load_topology
from testbed import overlay
from testbed.measure import plot as plots
from testbed.measure.pairs import VmPair, same_servers
from testbed.measure.results import ResultsRun
from testbed.measure.runners import wait_ping
from testbed.measure.throughput import reset_stats
from testbed.runner import Testbed
from testbed.topology import Topology
from vrouter.core.fairness import jain_index
from vrouter.io import introspect

MODES = ("rps", "extended", "kernel")
WORKERS = (1, 2)
DPORTS = 4
FIELDS = ("mode", "workers", "server", "worker", "packets", "bytes", "punts", "decisions", "hits", "flows")
SPORT_BASE, DPORT_BASE = 21000, 9100

RECEIVER = ("import socket,sys,json,selectors,time\n"
            "base,n,idle=int(sys.argv[1]),int(sys.argv[2]),float(sys.argv[3])\n"
            "sel=selectors.DefaultSelector();socks=[]\n"
            "for p in range(base,base+n):\n"
            " s=socket.socket(2,2);s.setsockopt(1,8,1<<22);s.bind(('0.0.0.0',p));s.setblocking(False)\n"
            " sel.register(s,1);socks.append(s)\n"
            "seen={};first=last=None;start=time.time()\n"
            "while True:\n"
            " ev=sel.select(idle if first else 30)\n"
            " if not ev: break\n"
            " for k,_ in ev:\n"
            "  while True:\n"
            "   try: d,a=k.fileobj.recvfrom(2048)\n"
            "   except BlockingIOError: break\n"
            "   now=time.time();first=first or now;last=now\n"
            "   key='%d-%d'%(a[1],k.fileobj.getsockname()[1]);seen[key]=seen.get(key,0)+1\n"
            "print(json.dumps({'flows':seen,'seconds':(last-first) if first else 0}))\n")
SENDER = ("import socket,sys,time\n"
          "dst,sbase,dbase,n,nd,secs,pps=sys.argv[1],int(sys.argv[2]),int(sys.argv[3]),int(sys.argv[4]),"
          "int(sys.argv[5]),float(sys.argv[6]),float(sys.argv[7])\n"
          "socks=[]\n"
          "for i in range(n):\n"
          " s=socket.socket(2,2);s.bind(('0.0.0.0',sbase+i));s.setblocking(False);socks.append((s,(dst,dbase+i%nd)))\n"
          "pay=b'x'*200;sent=0;t0=time.time();end=t0+secs\n"
          "while time.time()<end:\n"
          " for s,a in socks:\n"
          "  try: s.sendto(pay,a);sent+=1\n"
          "  except BlockingIOError: pass\n"
          " if pps>0:\n"
          "  ahead=t0+sent/pps-time.time()\n"
          "  if ahead>0: time.sleep(ahead)\n"
          "print(sent)\n")


ECHO = ("import socket,sys;s=socket.socket(2,2);s.bind(('0.0.0.0',int(sys.argv[1])));s.settimeout(10)\n"
        "for _ in range(int(sys.argv[2])):\n"
        " d,a=s.recvfrom(2048);s.sendto(d,a)\n")
# Request/response exchanges, each from its own source port (a new connection): the slow-path calls
# they cost show whether a reply met the reverse entry installed with its request.
EXCHANGES = ("import socket,sys\n"
             "ok=0\n"
             "for i in range(int(sys.argv[4])):\n"
             " c=socket.socket(2,2);c.bind(('0.0.0.0',int(sys.argv[3])+i));c.settimeout(2)\n"
             " c.sendto(b'q%d'%i,(sys.argv[1],int(sys.argv[2])))\n"
             " try: ok+=c.recv(100)==b'q%d'%i\n"
             " except socket.timeout: pass\n"
             " c.close()\n"
             "print(ok)\n")
EXCHANGE_PORT, EXCHANGE_SPORT = 9300, 40000


def pick_pairs(topology: Topology) -> list[VmPair]:
    """Per virtual network one VM pair, all between the same two servers: those that share the most
    networks, on different leaves when the topology has them (testbed/measure/pairs.py)."""
    return same_servers(topology, common.pair_of(topology, require_cross_leaf=False, most_networks=True))


def steering(mode: str, workers: int) -> dict:
    return {"mode": mode, "workers": list(range(workers))}


def traffic(tb: Testbed, pairs: list[VmPair], seconds: float, pps: float) -> tuple[int, list[dict]]:
    """The 64 UDP flows for `seconds`: (datagrams sent, per receiver {"flows": {key: count}, "seconds"})."""
    flows_per = max(1, 64 // len(pairs))
    receivers, senders = [], []
    for p in pairs:
        receivers.append(tb.host(p.server_vm.name).popen(
            [sys.executable, "-c", RECEIVER, str(DPORT_BASE), str(DPORTS), "2"], stdout=subprocess.PIPE, text=True))
    time.sleep(0.5)
    for i, p in enumerate(pairs):
        senders.append(tb.host(p.client_vm.name).popen(
            [sys.executable, "-c", SENDER, p.server_vm.address, str(SPORT_BASE + 100 * i), str(DPORT_BASE),
             str(flows_per), str(DPORTS), str(seconds), str(pps / len(pairs) if pps else 0)],
            stdout=subprocess.PIPE, text=True))
    sent = sum(int(proc.communicate(timeout=seconds + 60)[0].strip() or 0) for proc in senders)
    return sent, [json.loads(proc.communicate(timeout=60)[0]) for proc in receivers]


def run_config(tb: Testbed, pairs: list[VmPair], servers: list[str], mode: str, workers: int, seconds: float,
               pps: float, progress: Progress) -> tuple[list, dict]:
    for s in servers:
        overlay.restart_forwarder(tb, s, steering(mode, workers))
    for p in pairs:
        if not wait_ping(tb.host(p.client_vm.name), p.server_vm.address, 20):
            raise ExperimentError(f"{mode}/{workers}: {p.client_vm.name} cannot reach {p.server_vm.name}")
    reset_stats(tb, servers)
    sent, got = traffic(tb, pairs, seconds, pps)
    delivered = sum(sum(g["flows"].values()) for g in got)
    active = max((g["seconds"] for g in got), default=0) or seconds
    time.sleep(0.3)
    rows, per_server = [], {}
    for s in servers:
        st = introspect.query(tb.path, s, "stats")
        loads = {int(w): v for w, v in st["workers"].items()}
        packets = [loads[w]["packets"] for w in sorted(loads)]
        per_server[s] = {"jain": round(jain_index(packets), 4), "packets": packets,
                         "slowpath": st["agent"].get("decisions", 0),
                         "punts": sum(v["punts"] for v in loads.values())}
        for w in sorted(loads):
            rows.append({"mode": mode, "workers": workers, "server": s, "worker": w, **{
                k: loads[w][k] for k in FIELDS[4:]}})
    flows_seen = sum(len(g["flows"]) for g in got)
    src, dst = pairs[0].client_vm, pairs[0].server_vm
    before = {s: introspect.query(tb.path, s, "stats")["agent"].get("decisions", 0) for s in servers}
    echo = tb.host(dst.name).popen([sys.executable, "-c", ECHO, str(EXCHANGE_PORT), "64"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.3)
    answered = int(tb.host(src.name).popen(
        [sys.executable, "-c", EXCHANGES, dst.address, str(EXCHANGE_PORT), str(EXCHANGE_SPORT + 100 * workers), "64"],
        stdout=subprocess.PIPE, text=True).communicate(timeout=200)[0].strip() or 0)
    echo.kill()
    echo.wait()
    time.sleep(0.3)
    for s in servers:
        per_server[s]["exchange_slowpath"] = \
            introspect.query(tb.path, s, "stats")["agent"].get("decisions", 0) - before[s]
    summary = {"mode": mode, "workers": workers, "sent": sent, "delivered": delivered, "flows": flows_seen,
               "exchanges": 64, "exchanges_answered": answered,
               "seconds": round(active, 3), "delivered_pps": round(delivered / active),
               "loss_percent": round(100.0 * (sent - delivered) / sent, 2) if sent else None,
               "servers": per_server}
    progress(f"  {mode:8} {workers} worker{'s' if workers > 1 else ' '}: {summary['delivered_pps']:>7,} pkts/s "
             f"delivered ({summary['loss_percent']}% lost), flows {flows_seen}, "
             + ", ".join(f"{s} Jain {v['jain']:.3f} {v['packets']} slow-path {v['slowpath']}"
                         for s, v in per_server.items())
             + f"; 64 request/response exchanges ({answered} answered) cost "
             + ", ".join(f"{s} {v['exchange_slowpath']}" for s, v in per_server.items()) + " slow-path calls")
    return rows, summary


def plot(results: list[dict], servers: list[str], path: Path) -> None:
    """Throughput per mode and worker count; per-worker shares and Jain's index with 2 workers."""
    fig, axes = plots.figure(3, width=15)
    plots.grouped_bars(axes[0], list(MODES), [plots.Bars(
        f"{n} worker{'s' if n > 1 else ''}",
        [next((r["delivered_pps"] for r in results if r["mode"] == m and r["workers"] == n), 0) for m in MODES])
        for n in WORKERS], fmt=None)
    plots.label(axes[0], "steering mode", "UDP datagrams delivered (1/s)", "throughput, 64 UDP flows")
    two = [r for r in results if r["workers"] == 2]
    labels, shares0, shares1 = [], [], []
    for r in two:
        for s in servers:
            p = r["servers"][s]["packets"]
            tot = sum(p) or 1
            labels.append(f"{r['mode']}\n{s}")
            shares0.append(p[0] / tot)
            shares1.append(p[1] / tot if len(p) > 1 else 0)
    axes[1].bar(range(len(labels)), shares0, label="worker 0")
    axes[1].bar(range(len(labels)), shares1, bottom=shares0, label="worker 1")
    axes[1].axhline(0.5, color="k", lw=0.5, ls="--")
    axes[1].set_xticks(range(len(labels)), labels, fontsize=8)
    plots.label(axes[1], "steering mode, vrouter", "share of the vrouter's packets (fraction)",
                "per-worker load, 2 workers", legend="below")
    plots.grouped_bars(axes[2], [r["mode"] for r in two], [
        plots.Bars(s, [r["servers"][s]["jain"] for r in two]) for s in servers], fmt="%.3f")
    axes[2].set_ylim(0.4, 1.05)
    plots.label(axes[2], "steering mode", "Jain's index over workers (1.0 = even)", "fairness, 2 workers",
                legend="below")
    plots.save(fig, path, "Receive packet steering across vrouter workers")


def summary_lines(summary: dict) -> list[str]:
    servers = summary["servers"]
    lines = [f"{'mode':9}{'workers':>8}{'delivered/s':>13}{'loss %':>8}" +
             "".join(f"{s + ' Jain':>11}{s + ' per worker':>24}{s + ' slow':>10}{s + ' exch':>10}" for s in servers)]
    for r in summary["runs"]:
        line = f"{r['mode']:9}{r['workers']:>8}{r['delivered_pps']:>13,}{r['loss_percent']!s:>8}"
        for s in servers:
            v = r["servers"][s]
            line += f"{v['jain']:>11.3f}{str(v['packets']):>24}{v['slowpath']:>10}{v['exchange_slowpath']:>10}"
        lines.append(line)
    for mode, x in summary["speedup_2_over_1"].items():
        lines.append(f"{mode}: 2 workers deliver {x:.2f}x what 1 worker does")
    lines.append("slow-path calls for 64 request/response exchanges (64 = every reply met its reverse entry): "
                 + "; ".join(f"{r['mode']}/{r['workers']}: " + ", ".join(
                     f"{s} {r['servers'][s]['exchange_slowpath']}" for s in servers) for r in summary["runs"]))
    return lines


def run(topology_path: Path, seconds: float, pps: float, prefix: str, run_root: str | None, outroot: Path,
        progress: Progress) -> tuple[Path, dict]:
    results = ResultsRun("rps", outroot)
    topology = load_topology(topology_path)
    pairs = pick_pairs(topology)
    servers = list(pairs[0].servers)
    progress(f"bringing up {topology.name} ({topology_path}) with prefix {prefix!r}")
    tb = Testbed(topology, prefix=prefix, run_root=run_root, progress=lambda m: progress("  " + m))
    tb.vrouter_steering = steering("rps", 2)
    tb.start()
    rows: list[dict] = []
    runs: list[dict] = []
    try:
        flows = ", ".join(f"{p.client_vm.name}->{p.server_vm.name}" for p in pairs)
        progress(f"flows: {flows}, {64 // len(pairs)} each, "
                 f"{seconds:g} s per run, offered {'as fast as the senders go' if not pps else f'{pps:g} pkts/s'}")
        total = len(MODES) * len(WORKERS)
        for mode in MODES:
            for n in WORKERS:
                progress(f"[{len(runs) + 1}/{total}] {mode}, {n} worker{'s' if n > 1 else ''}")
                r, s = run_config(tb, pairs, servers, mode, n, seconds, pps, progress)
                rows += r
                runs.append(s)
    finally:
        progress("tearing down")
        tb.stop()
    speedup = {}
    for mode in MODES:
        one = next(r for r in runs if r["mode"] == mode and r["workers"] == 1)["delivered_pps"]
        two = next(r for r in runs if r["mode"] == mode and r["workers"] == 2)["delivered_pps"]
        speedup[mode] = round(two / one, 3) if one else None
    kernel2 = next(r for r in runs if r["mode"] == "kernel" and r["workers"] == 2)
    summary = {"servers": servers, "runs": runs, "speedup_2_over_1": speedup,
               "extra_slowpath_kernel_2_workers_per_64_exchanges": {
                   s: kernel2["servers"][s]["exchange_slowpath"] - 64 for s in servers}}
    config = {"experiment": "rps", "seconds": seconds, "offered_pps": pps, "modes": list(MODES),
              "workers": list(WORKERS), "pairs": [[p.client_vm.name, p.server_vm.name] for p in pairs],
              "flows": 64, "dports": DPORTS, "steering": {f"{m}/{n}": steering(m, n) for m in MODES for n in WORKERS},
              "topology_file": str(topology_path), "topology": topology.raw}
    return results.write(FIELDS, rows, summary, config, lambda path: plot(runs, servers, path)), summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m experiments.rps", description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=3.0, help="traffic per run (default 3)")
    ap.add_argument("--pps", type=float, default=40000,
                    help="offered datagrams/s in total (default 40000; 0: flat out)")
    add_run_arguments(ap, "rps", prefix="rp")
    args = ap.parse_args(argv)
    invalid = None
    if not 0.5 <= args.seconds <= 120 or args.pps < 0:
        invalid = "--seconds must be between 0.5 and 120 and --pps >= 0"
    return common.run_cli(args, lambda topology, progress: run(
        topology, args.seconds, args.pps, args.prefix, args.run_root, Path(args.out), progress),
        summary_lines, invalid)


if __name__ == "__main__":
    sys.exit(main())
