"""Experiment: new connections per second through a capped slow path, proactive versus reactive.

How many new connections per second a bounded slow path sustains with proactive versus reactive
reverse entries (issue 11; the seed's claim where it matters).

New TCP connections red1@srv1 -> red3@srv3 (testbed/measure/load.py `connect` against `serve`,
success = connected within 1 s, first-reply latency = SYN -> SYN-ACK) are offered at rising rates
until saturation, on a fresh testbed per (mode, cap) brought up from a topology whose `flow:`
section sets the mode and the slow path's budget: agent decisions are capped at R per second by the
token bucket in each vrouter's FORWARDER (`flow: {setup_rate: R, burst_tokens: B}`; a punt waits in
the forwarder's setup queue for a token, so R is the decisions per second each vrouter's agent is
given, whatever the agent could do), for R in --caps (default 250, 500, 1000) plus no cap (0).
B defaults to R/20 (50 ms of budget, at least 4): a bucket much larger than that would let a short
run at a rate above R complete on the bucket's savings. The per-VM and per-network flow limits are
raised to the table's capacity (vm_flow_limit = network_flow_limit = capacity): at ~3k connections/s
the closed pairs that linger alone reach the default per-VM limit (capacity / 4), and the sweep is
about the slow path, not the limits. Modes alternate (proactive, reactive,
proactive, ...) so that the machine's drift hits both.

A proactive connection costs each vrouter one decision (forward and reverse entry at once), a
reactive one two (the SYN-ACK misses too), so where the slow path is the bound the sustainable rate
should be about 2x proactive: target >= 1.8 at every capped R (met / NOT met per R); the uncapped
ratio is reported, with no target (on 2 cores the CPU, not the slow path, saturates first).

Capacity of a (mode, cap) = the completed rate at saturation: the highest completed connections/s
(connected within the timeout, per second offered) over its sweep; the sweep of a (mode, cap) ends
after --stop-after consecutive offered rates with < 99% connected, or at --max-rate. Also reported:
capacity_99, the highest offered rate at which >= 99% connected.

    sudo python -m experiments.capacity [--quick] [--caps 250,500,1000,0] [--seconds 3]

Writes results/capacity/<timestamp>/: raw.csv (one row per mode, cap and offered rate),
connections.csv, topology-<mode>-<cap>.yaml, summary.json, config.yaml, provenance.json,
capacity.png.
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from controllers.vnc_model import DEFAULT_FLOW
from experiments import capacity_report as report
from experiments import common
from experiments.common import ExperimentError, Progress, add_run_arguments, load_topology
from experiments.flowbed import FlowBed, flow_testbed
from testbed.measure import loadrun
from testbed.measure.pairs import vm_dict
from testbed.measure.pressure import Sampler
from testbed.measure.results import ResultsRun, write_csv, write_json
from testbed.topology import Topology

MODES = ("proactive", "reactive")


@dataclass(frozen=True)
class Config:
    caps: tuple[float, ...] = (250.0, 500.0, 1000.0, 0.0)
    seconds: float = 3.0            # per offered rate
    timeout: float = 1.0            # connected within this = completed
    step: float = 1.2               # offered rates rise by this factor
    start_fraction: float = 0.2     # first offered rate of a capped sweep = this x the cap
    start_rate: float = 400.0       # first offered rate without a cap
    max_rate: float = 8000.0        # below the connect generator's reach (README.md, "The flow table under pressure")
    stop_after: int = 2
    burst_tokens: int | None = None  # None: cap / 20, at least 4
    rates: tuple[float, ...] | None = None   # the offered rates of every sweep, instead of the above
    settle: float = 0.3
    client: str = "red1"
    server: str = "red3"


QUICK = {"seconds": 1.5, "step": 1.35}


def burst_for(cap: float, cfg: Config) -> int:
    return cfg.burst_tokens if cfg.burst_tokens is not None else max(4, round(cap / 20))


def flow_of(mode: str, cap: float, cfg: Config, limits: int | None = None) -> dict[str, Any]:
    """The topology `flow:` section of one (mode, cap); `limits`: the per-VM and per-network flow
    limits (the table's capacity: what saturates must be the slow path, not a limit)."""
    flow: dict[str, Any] = {"mode": mode}
    if limits:
        flow.update(vm_flow_limit=limits, network_flow_limit=limits)
    if cap:
        flow.update(setup_rate=cap, burst_tokens=burst_for(cap, cfg))
    return flow


def owner_limits(topology: Topology) -> int:
    """The table's capacity: what the per-VM and per-network limits are raised to."""
    return int((topology.raw.get("flow") or {}).get("capacity", DEFAULT_FLOW["capacity"]))


def runs_in_order(caps: tuple[float, ...]) -> list[tuple[str, float]]:
    """(mode, cap) in the order they run: per cap both modes, the modes alternating throughout."""
    out = []
    for cap in caps:
        for _ in MODES:
            out.append((MODES[len(out) % 2], cap))
    return out


def measure_point(bed: FlowBed, client: dict, server: dict, cfg: Config, mode: str, cap: float, rate: float,
                  label: dict) -> tuple[dict, list[loadrun.Connection]]:
    """One offered rate: idle slow paths, empty tables, the connect run, then the vrouters' counters."""
    servers = [client["server"], server["server"]]
    bed.quiesce(servers)
    bed.reset(servers)
    time.sleep(cfg.settle)
    label.update(mode=mode, cap=cap, rate=rate)
    gen = loadrun.connect(bed.host(client["name"]), server["address"], rate, cfg.seconds, timeout=cfg.timeout)
    final = gen.wait(cfg.seconds + cfg.timeout + 60)
    label.update(mode="", cap=None, rate=None)
    bed.quiesce(servers)
    counters = {}
    for s in servers:
        st = bed.stats(s)
        p = st.get("pipeline", {})
        counters[s] = {"decisions": st.get("agent", {}).get("decisions"), "installs": p.get("installs"),
                       "entries_installed": p.get("entries_installed"), "punts": st.get("forwarder", {}).get("punts")}
    conns = loadrun.connections(gen.records)
    point = report.point_figures(mode, cap, rate, cfg.seconds, conns, final, counters)
    return point, conns


def run_sweep(bed: FlowBed, client: dict, server: dict, cfg: Config, mode: str, cap: float, label: dict,
              progress: Progress) -> tuple[list[dict], list[dict]]:
    points: list[dict] = []
    conn_rows: list[dict] = []
    # The VM's first connection resolves its gateway; not part of any measurement.
    loadrun.connect(bed.host(client["name"]), server["address"], 20, 0.25, timeout=cfg.timeout).wait(30)
    for rate in report.sweep_rates(cap, cfg.rates, cfg.start_fraction, cfg.start_rate, cfg.step, cfg.max_rate):
        point, conns = measure_point(bed, client, server, cfg, mode, cap, rate, label)
        points.append(point)
        t0 = conns[0].t if conns else 0.0
        conn_rows += [{"mode": mode, "cap": cap, "offered_rate": rate, "seq": c.seq, "t_rel": round(c.t - t0, 4),
                       "outcome": c.outcome, "latency_us": c.latency_us} for c in conns]
        progress("    " + report.point_line(point))
        if report.saturated(points, cfg.stop_after):
            break
    return points, conn_rows


def run_one(topology: Topology, client: dict, server: dict, cfg: Config, mode: str, cap: float, prefix: str,
            run_root: str | None, progress: Progress) -> tuple[list[dict], list[dict], list[dict], dict]:
    flow = flow_of(mode, cap, cfg, owner_limits(topology))
    progress(f"{mode}, {'cap ' + format(cap, 'g') + ' decisions/s' if cap else 'no cap'}: bringing up "
             f"{topology.name} with prefix {prefix!r}")
    servers = [client["server"], server["server"]]
    with flow_testbed(topology, flow, prefix, run_root, progress) as bed:
        srv = loadrun.serve(bed.host(server["name"]))
        label: dict[str, Any] = {"mode": "", "cap": None, "rate": None}
        sampler = Sampler(bed.tb.path, servers, bed.forwarder_pids, label=lambda: dict(label)).start()
        try:
            points, conn_rows = run_sweep(bed, client, server, cfg, mode, cap, label, progress)
        finally:
            samples = sampler.stop()
            srv.stop()
        report.add_occupancy(points, samples, client["server"])
        used = {"flow": flow, "applied": bed.applied, "pushed_flow": bed.pushed_flow(client["server"]),
                "topology_yaml": bed.topology.to_yaml()}
    return points, conn_rows, samples, used


def run(topology_path: Path, cfg: Config, prefix: str, run_root: str | None, outroot: Path,
        progress: Progress) -> tuple[Path, dict]:
    results = ResultsRun("capacity", outroot)
    topology = load_topology(topology_path)
    vms = {vm.name: vm_dict(vm) for vm in topology.vms}
    if cfg.client not in vms or cfg.server not in vms:
        raise ExperimentError(f"{topology.source}: needs VMs {cfg.client!r} and {cfg.server!r} (--client, --server)")
    client, server = vms[cfg.client], vms[cfg.server]
    if client["network"] != server["network"] or client["server"] == server["server"]:
        raise ExperimentError(f"{cfg.client} and {cfg.server} must be in one network on two servers")
    points: list[dict] = []
    conn_rows: list[dict] = []
    used: dict[str, dict] = {}
    for mode, cap in runs_in_order(cfg.caps):
        p, c, _samples, used[f"{mode}-{cap:g}"] = run_one(topology, client, server, cfg, mode, cap, prefix, run_root,
                                                          progress)
        points += p
        conn_rows += c
    summary = report.summarize(points, cfg.caps, used)
    config = {"experiment": "capacity", **asdict(cfg), "burst_tokens_per_cap": {f"{c:g}": burst_for(c, cfg)
                                                                              for c in cfg.caps if c},
              "client": client, "server": server, "order": [f"{m}-{c:g}" for m, c in runs_in_order(cfg.caps)],
              "flow": {k: u["flow"] for k, u in used.items()},
              "pushed_flow": {k: u["pushed_flow"] for k, u in used.items()},
              "applied": {k: u["applied"] for k, u in used.items()},
              "topology_file": str(topology_path), "topology": topology.raw}
    outdir = results.write(report.POINT_FIELDS, points, summary, config,
                           lambda path: report.plot(points, summary, path))
    write_csv(outdir / "connections.csv", report.CONNECTION_FIELDS, conn_rows)
    write_json(outdir / "points.json", points)
    for key, u in used.items():
        (outdir / f"topology-{key}.yaml").write_text(u["topology_yaml"])
    return outdir, summary


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m experiments.capacity", description=__doc__.split("\n")[0],
                                 epilog="Capacity, the token bucket and the targets: the module docstring and "
                                        "README.md (\"The flow table under pressure\").")
    d = Config()
    ap.add_argument("--quick", action="store_true", help="1.5 s per offered rate, rates rising by 1.35x")
    ap.add_argument("--caps", type=lambda t: common.numbers(t, allow_zero=True), default=d.caps,
                    help="decisions/s per vrouter (setup_rate); 0 = no cap (default 250,500,1000,0)")
    ap.add_argument("--seconds", type=float, default=None, help=f"per offered rate (default {d.seconds:g})")
    ap.add_argument("--step", type=float, default=None, help=f"offered rates rise by this factor (default {d.step})")
    ap.add_argument("--rates", type=common.numbers, default=None,
                    help="offered connections/s of every sweep (instead of the rising rates)")
    ap.add_argument("--max-rate", type=float, default=d.max_rate, help=f"highest offered rate (default {d.max_rate:g})")
    ap.add_argument("--burst-tokens", type=int, default=None, help="token bucket size (default cap/20, at least 4)")
    ap.add_argument("--stop-after", type=int, default=d.stop_after,
                    help="consecutive rates under 99%% connected that end a sweep (default 2)")
    ap.add_argument("--client", default=d.client, help=f"VM opening the connections (default {d.client})")
    ap.add_argument("--server", default=d.server, help=f"VM accepting them (default {d.server})")
    add_run_arguments(ap, "capacity", prefix="cap")
    return ap


def config_from(args: argparse.Namespace) -> tuple[Config, str | None]:
    cfg = Config(caps=args.caps, rates=args.rates, max_rate=args.max_rate, burst_tokens=args.burst_tokens,
                 stop_after=args.stop_after, client=args.client, server=args.server)
    if args.quick:
        cfg = replace(cfg, **QUICK)
    if args.seconds is not None:
        cfg = replace(cfg, seconds=args.seconds)
    if args.step is not None:
        cfg = replace(cfg, step=args.step)
    invalid = None
    if cfg.seconds <= 0 or cfg.step <= 1.0:
        invalid = "--seconds must be > 0 and --step > 1"
    elif cfg.stop_after < 1 or (cfg.burst_tokens is not None and cfg.burst_tokens < 1):
        invalid = "--stop-after and --burst-tokens must be >= 1"
    elif len(set(cfg.caps)) != len(cfg.caps):
        invalid = "--caps must be distinct"
    return cfg, invalid


def main(argv: list[str] | None = None) -> int:
    return common.main(parser(), config_from, run, report.summary_lines, argv)


if __name__ == "__main__":
    sys.exit(main())
