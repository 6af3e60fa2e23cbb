"""Experiment: the flow table under pressure, a VM flooding new flows beside its neighbours.

Issue 11: a noisy VM floods new flows; do the others on its server keep working?

On the default topology the noisy VM red1@srv1 floods new unreplied UDP flows to red3@srv3
(testbed/measure/load.py flood) at 1x, 3x and 10x the slow path's capacity, measured first in the
same run (the install rate of a short flood in the first setting's testbed, "off" by default since
protections would cut the probe short; or --slowpath-rate). Meanwhile, on the same server:
(a) an established TCP stream of the other network, blue1@srv1 -> blue3@srv3 (iperf3 paced at
--stream-bitrate, default 50 Mbit/s, 100 ms intervals: throughput and stalls; unpaced, it fills
blue1's queues and the victim's SYNs drop behind it even without a flood, and what it keeps of its
throughput is only the CPU the flood leaves on 2 cores), (b) a victim of the other network opening
20 new TCP connections/s blue1 -> blue3 (success = connected within 1 s; first-reply latency =
SYN -> SYN-ACK),
(c) a ping in the flooder's own network from its neighbour red5 (added on srv1 for the run if the
topology has none: --neighbour, --neighbour-address) to red3 every 10 ms (losses; the target). The
flooder's own ping red1 -> red3 is reported too: it shares the flooding VM's interface, whose queue
overflows when the flood outruns what the forwarder reads, so it measures the VM's own NIC rather
than the vrouter's isolation. The flood generator runs
at nice 19 (--flooder-nice): on a cloud host a VM's vCPUs are not the vrouter's cores (Tungsten
Fabric's forwarding cores are dedicated), while here the generator, the forwarders, OVS and the
victims share 2 cores, and a generator at the vrouter's priority takes the CPU the forwarder needs
to read the other VMs' packets. Per phase every layer's drop counters are read before and after
(testbed/measure/drops.py: VM and server interfaces, IP/UDP, the vrouters' drop reasons, OVS's
ports, packet sockets and upcalls) so that a lost ping is attributed: the losses of the first runs
(1-6 per phase) were OVS's, its port sockets overflowing on bursts from the flooder's server
(testbed/port_buffers.py), not the vrouter's. Every 0.5 s the flow
tables of srv1 and srv3 are sampled (introspection "pressure") with the forwarders' RSS. Every testbed
has flow records on (`flow: {records: true}`, whatever the setting): a phase's pairs evicted and
unreplied pairs aged at the flooder's vrouter, and the new flows its limits refused per reason, are
counted from the records written between the phase's reset and its end (the samples' peaks are kept
as evictions_sampled / unreplied_aged_sampled: they miss what happened after the last sample).

Protections "on" and "off", each on a fresh testbed whose topology carries the settings in its
`flow:` section (capacity --capacity, default 16384 so that a 10 s flood fills it):
  on       only the capacity: issue 11's defaults protect (vm_flow_limit = capacity // 4,
           network_flow_limit = capacity // 2, unreplied_timeout 10 s, held_limit 4096,
           vm_held_limit 256, the setup queue served round-robin per owner)
  off      every limit at the table's capacity (vm_flow_limit = network_flow_limit = held_limit =
           vm_held_limit = capacity) and unreplied_timeout = idle_timeout (unreplied pairs age
           like the rest): the behaviour before issue 11 as close as the settings allow. Two
           things have no setting and stay: the setup queue's round-robin over owners, and a full
           table making room by evicting its oldest unreplied pair (vrouter/core/flowtable.py), so
           a full table no longer refuses every new flow
  default  the topology as given, no flow settings added: its own `flow:` section if it has one,
           else this checkout's defaults (controllers/vnc_model.py DEFAULT_FLOW: capacity 65536),
           i.e. `on` without --capacity (on the default topology, `on` at a 4x larger table)

Targets (protections on): the stream never stalls longer than 200 ms and keeps >= 50% of its
unflooded throughput in every whole second of the flood, the same-network ping loses nothing,
victim success >= 99% at 10x, the forwarder's memory bounded (RSS grows < 10% over the second half
of the 10x flood).

    sudo python -m experiments.flow_pressure [--quick] [--settings off,on] [--multiples 1,3,10]

Writes results/flow_pressure/<timestamp>/: raw.csv (table samples), connections.csv, intervals.csv,
phases.json, topology-<setting>.yaml, summary.json, config.yaml, provenance.json, flow_pressure.png
(versus flood rate) and flow_pressure_time.png (over time at the highest rate).
"""
from __future__ import annotations

import argparse
import copy
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from controllers.vnc_model import DEFAULT_FLOW
from experiments import common
from experiments import flow_pressure_report as report
from experiments.common import ExperimentError, Progress, add_run_arguments, load_topology
from experiments.flowbed import FlowBed, flow_testbed
from testbed.measure import drops, flowrecs, loadrun
from testbed.measure.pairs import vm_dict
from testbed.measure.pressure import Sampler, TableReader
from testbed.measure.results import ResultsRun, write_csv, write_json
from testbed.measure.runners import finish_ping, start_ping
from testbed.topology import Topology, TopologyError, from_dict

SETTINGS = ("off", "on", "default")
ROLE_HELP = {"flooder": "VM that floods", "flood_dst": "VM the flood goes to (and the ping)",
             "victim": "VM of another network on the flooder's server: stream and new connections",
             "victim_dst": "VM the victim's stream and connections go to",
             "neighbour": "VM of the flooder's network and server that pings flood-dst (added if missing)"}
PROBE_STEP = 0.25  # s between the capacity probe's counter reads
# Every setting's testbed writes flow records: each phase's evictions, unreplied pairs aged and
# refused flows are counted from them (testbed/measure/flowrecs.py), exactly.
RECORDS = {"records": True}


@dataclass(frozen=True)
class Config:
    settings: tuple[str, ...] = ("off", "on")
    multiples: tuple[float, ...] = (1.0, 3.0, 10.0)
    capacity: int = 16384
    baseline: float = 2.0          # s of each phase before the flood (the unflooded figures)
    flood: float = 10.0            # s of flood
    tail: float = 1.0              # s after it
    victim_rate: float = 20.0      # new connections/s
    connect_timeout: float = 1.0
    ping_interval: float = 0.01
    slowpath_rate: float | None = None   # flows/s; None: measured by the probe
    probe_rate: float = 40000.0
    flooder_nice: int = 19          # the flood generator's nice value (0: the vrouter's own priority)
    probe_seconds: float = 2.0
    stream_bitrate: str = "50M"    # iperf3 -b: paced well below what the path carries (module docstring)
    settle: float = 0.5            # s between a phase's reset (once the slow paths are idle) and its start
    flooder: str = "red1"
    flood_dst: str = "red3"
    victim: str = "blue1"
    victim_dst: str = "blue3"
    neighbour: str = "red5"         # pings flood_dst: the flooder's network and server, its own NIC
    neighbour_address: str = "192.168.1.15"     # used when the topology has no such VM


QUICK = {"baseline": 1.5, "flood": 3.0, "tail": 0.5, "probe_seconds": 1.0}


def setting_flow(setting: str, capacity: int, idle_timeout: float) -> dict[str, Any]:
    """The topology `flow:` section of a protections setting (module docstring)."""
    if setting == "on":
        return {"capacity": capacity}
    if setting == "off":
        return {"capacity": capacity, "vm_flow_limit": capacity, "network_flow_limit": capacity,
                "unreplied_timeout": idle_timeout, "held_limit": capacity, "vm_held_limit": capacity}
    return {}


@dataclass(frozen=True)
class Roles:
    flooder: dict
    flood_dst: dict
    victim: dict
    victim_dst: dict
    neighbour: dict

    @property
    def servers(self) -> list[str]:
        return sorted({self.flooder["server"], self.flood_dst["server"], self.victim["server"],
                       self.victim_dst["server"]})


def with_neighbour(topology: Topology, cfg: Config) -> Topology:
    """The topology with the neighbour VM (the flooder's network and server, --neighbour-address)
    added if it has none of that name."""
    if any(vm.name == cfg.neighbour for vm in topology.vms):
        return topology
    flooder = next((vm_dict(vm) for vm in topology.vms if vm.name == cfg.flooder), None)
    if flooder is None:
        raise ExperimentError(f"{topology.source}: no VM {cfg.flooder!r} (see --flooder, --victim)")
    doc = copy.deepcopy(topology.raw)
    doc["vms"] = [*(doc.get("vms") or []), {"name": cfg.neighbour, "network": flooder["network"],
                                             "server": flooder["server"], "address": cfg.neighbour_address}]
    try:
        return from_dict(doc, source=f"{topology.source} + VM {cfg.neighbour}", default_name=topology.name)
    except TopologyError as exc:
        raise ExperimentError(f"adding the neighbour VM {cfg.neighbour}: {str(exc).splitlines()[0]}") from None


def pick_roles(topology: Topology, cfg: Config) -> Roles:
    vms = {vm.name: vm_dict(vm) for vm in topology.vms}
    for name in (cfg.flooder, cfg.flood_dst, cfg.victim, cfg.victim_dst, cfg.neighbour):
        if name not in vms:
            raise ExperimentError(f"{topology.source}: no VM {name!r} (see --flooder, --victim)")
    r = Roles(vms[cfg.flooder], vms[cfg.flood_dst], vms[cfg.victim], vms[cfg.victim_dst], vms[cfg.neighbour])
    if r.neighbour["network"] != r.flooder["network"] or r.neighbour["server"] != r.flooder["server"]:
        raise ExperimentError(f"the neighbour {cfg.neighbour} must be in the flooder's network and on its server")
    if r.flooder["server"] != r.victim["server"]:
        raise ExperimentError(f"the flooder {cfg.flooder} and the victim {cfg.victim} must share a server")
    if r.flooder["network"] == r.victim["network"]:
        raise ExperimentError(f"the victim {cfg.victim} must be in another network than the flooder")
    if r.flooder["network"] != r.flood_dst["network"] or r.victim["network"] != r.victim_dst["network"]:
        raise ExperimentError("each pair (flooder -> flood-dst, victim -> victim-dst) must be in one network")
    return r


# --- the capacity probe ----------------------------------------------------------------------------
def probe_capacity(bed: FlowBed, roles: Roles, cfg: Config, progress: Progress) -> dict[str, Any]:
    """A short flood as fast as --probe-rate; the slow path's capacity is the install rate at the
    flooder's vrouter while its table still had room (report.install_rate)."""
    server = roles.flooder["server"]
    reader = TableReader(bed.tb.path, server)
    bed.reset(roles.servers)
    time.sleep(0.3)
    gen = loadrun.flood(bed.host(roles.flooder["name"]), roles.flood_dst["address"], cfg.probe_rate,
                        cfg.probe_seconds, nice=cfg.flooder_nice)
    samples = []
    while gen.proc.poll() is None:
        row = reader.read()
        samples.append((time.monotonic(), row["installs"] or 0, row["entries"] or 0, row["capacity"]))
        time.sleep(PROBE_STEP)
    final = gen.wait(30)
    rate = report.install_rate(samples)
    progress(f"  slow-path capacity: {rate:.0f} flows/s installed at {server} (probe flood offered "
             f"{cfg.probe_rate:.0f}/s, sent {final['rate']:.0f}/s, {final['tx_dropped']} dropped at the VM's "
             f"interface)")
    bed.reset(roles.servers)
    return {"flows_per_s": rate, "how": "probe", "server": server, "flood": final, "samples": samples}


# --- one phase -----------------------------------------------------------------------------------
def run_phase(bed: FlowBed, roles: Roles, cfg: Config, setting: str, multiple: float, rate: float,
              label: dict, progress: Progress) -> dict[str, Any]:
    """Stream, victim and ping for baseline + flood + tail, the flood at `rate` in the middle."""
    if not bed.quiesce(roles.servers):
        progress("  (the slow paths were still busy after 30 s; going on)")
    bed.reset(roles.servers)
    time.sleep(cfg.settle)
    total = cfg.baseline + cfg.flood + cfg.tail
    victim, victim_dst = bed.host(roles.victim["name"]), bed.host(roles.victim_dst["name"])
    label.update(setting=setting, multiple=multiple)
    vms = [roles.neighbour["name"], roles.flood_dst["name"], roles.flooder["name"], roles.victim["name"],
           roles.victim_dst["name"]]
    before = drops.snapshot(bed.tb, vms, roles.servers)
    records = flowrecs.RecordWindow(bed.tb.path, [roles.flooder["server"]])
    mark = records.mark()       # after the reset: the old table's pairs are written before it
    t0 = time.monotonic()
    stream = loadrun.Stream(victim, victim_dst, roles.victim_dst["address"], total, bitrate=cfg.stream_bitrate)
    conns = loadrun.connect(victim, roles.victim_dst["address"], cfg.victim_rate, total, timeout=cfg.connect_timeout)
    t_ping = time.monotonic()
    count = round(total / cfg.ping_interval)
    ping = start_ping(bed.host(roles.neighbour["name"]), roles.flood_dst["address"], count, cfg.ping_interval)
    own_ping = start_ping(bed.host(roles.flooder["name"]), roles.flood_dst["address"], count, cfg.ping_interval)
    time.sleep(max(0.0, t0 + cfg.baseline - time.monotonic()))
    flood = loadrun.flood(bed.host(roles.flooder["name"]), roles.flood_dst["address"], rate, cfg.flood,
                          nice=cfg.flooder_nice)
    flood_final = flood.wait(cfg.flood + 60)
    victim_final = conns.wait(total + 60)
    intervals, stream_info = stream.result()
    pinged = finish_ping(ping)
    own = finish_ping(own_ping)
    lost_where = drops.delta(before, drops.snapshot(bed.tb, vms, roles.servers))
    ended = flowrecs.counts(records.since(mark), roles.flooder["server"])     # exact, from the flow records
    label.update(setting="", multiple=0)
    phase = {"setting": setting, "multiple": multiple, "offered_rate": rate, "t0": t0,
             "flood_t0": flood_final["t0"], "flood_t1": flood_final["t1"], "t_end": time.monotonic(),
             "flood": flood_final, "victim": victim_final, "stream": stream_info,
             "ping": {**{k: pinged[k] for k in ("sent", "received", "lost", "loss_percent")}, "t0": t_ping,
                      "interval": cfg.ping_interval,
                      "lost_seqs": sorted(set(range(1, pinged["sent"] + 1)) - set(pinged["replied_seqs"]))},
             "own_ping": {k: own[k] for k in ("sent", "received", "lost", "loss_percent")},
             "connections": loadrun.connections(conns.records), "intervals": intervals, "drops": lost_where,
             "records": ended}
    f = report.phase_figures(phase, [])
    progress(f"  {setting} {multiple:g}x ({rate:.0f} flows/s offered, {flood_final['rate']:.0f}/s sent, "
             f"{flood_final['tx_dropped']} dropped at the VM): victim {report.pct(f['victim_success'])} ok, "
             f"stream {report.ratio_text(f['stream_ratio'])} of unflooded, longest stall "
             f"{f['longest_stall_s']:.1f} s, ping lost {pinged['lost']}/{pinged['sent']} (the flooder's own: "
             f"{own['lost']}/{own['sent']})")
    progress(f"    drops: {drops.summary_line(lost_where)}")
    return phase


def run_setting(topology: Topology, roles: Roles, cfg: Config, setting: str, prefix: str, run_root: str | None,
                capacity: dict | None, progress: Progress) -> tuple[dict | None, list[dict], list[dict], dict]:
    """One fresh testbed with `setting`'s flow settings: (capacity probe if it ran here, phases,
    table samples, what the testbed was given)."""
    idle = float((topology.raw.get("flow") or {}).get("idle_timeout", DEFAULT_FLOW["idle_timeout"]))
    flow = setting_flow(setting, cfg.capacity, idle)
    progress(f"protections {setting}: bringing up {topology.name} with prefix {prefix!r}")
    with flow_testbed(topology, {**flow, **RECORDS}, prefix, run_root, progress) as bed:
        server = loadrun.serve(bed.host(roles.victim_dst["name"]))
        label = {"setting": "", "multiple": 0}
        sampler = Sampler(bed.tb.path, roles.servers, bed.forwarder_pids, label=lambda: dict(label))
        phases = []
        try:
            if capacity is None:
                capacity = probe_capacity(bed, roles, cfg, progress) if cfg.slowpath_rate is None else {
                    "flows_per_s": cfg.slowpath_rate, "how": "given (--slowpath-rate)"}
                capacity["setting"] = setting
            sampler.start()
            for m in cfg.multiples:
                phases.append(run_phase(bed, roles, cfg, setting, m, m * capacity["flows_per_s"], label, progress))
        finally:
            rows = sampler.stop()
            server.stop()
        used = {"flow": flow, "applied": bed.applied, "pushed_flow": bed.pushed_flow(roles.flooder["server"]),
                "topology_yaml": bed.topology.to_yaml()}
    return capacity, phases, rows, used


def run(topology_path: Path, cfg: Config, prefix: str, run_root: str | None, outroot: Path,
        progress: Progress) -> tuple[Path, dict]:
    results = ResultsRun("flow_pressure", outroot)
    topology = with_neighbour(load_topology(topology_path), cfg)
    roles = pick_roles(topology, cfg)
    capacity = None
    phases: list[dict] = []
    samples: list[dict] = []
    used: dict[str, dict] = {}
    for setting in cfg.settings:
        capacity, ph, rows, used[setting] = run_setting(topology, roles, cfg, setting, prefix, run_root, capacity,
                                                        progress)
        phases += ph
        samples += rows
    assert capacity is not None
    summary = report.summarize(phases, samples, capacity, roles.flooder["server"], used)
    config = {"experiment": "flow_pressure", **asdict(cfg), "roles": asdict(roles), "servers": roles.servers,
              "settings_flow": {s: u["flow"] for s, u in used.items()},
              "pushed_flow": {s: u["pushed_flow"] for s, u in used.items()},
              "applied": {s: u["applied"] for s, u in used.items()},
              "topology_file": str(topology_path), "topology": topology.raw}
    outdir = results.write(report.SAMPLE_FIELDS, report.sample_rows(samples, phases), summary, config,
                           lambda path: report.plot(phases, samples, summary, path))
    write_csv(outdir / "connections.csv", report.CONNECTION_FIELDS, report.connection_rows(phases))
    write_csv(outdir / "intervals.csv", report.INTERVAL_FIELDS, report.interval_rows(phases))
    write_json(outdir / "phases.json", {"capacity_probe": capacity, "phases": [report.phase_record(p) for p in phases]})
    for setting, u in used.items():
        (outdir / f"topology-{setting}.yaml").write_text(u["topology_yaml"])
    return outdir, summary


def _settings(text: str) -> tuple[str, ...]:
    values = tuple(x.strip() for x in text.split(",") if x.strip())
    bad = [v for v in values if v not in SETTINGS]
    if not values or bad or len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"expected distinct settings of {', '.join(SETTINGS)}: {text}")
    return values


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m experiments.flow_pressure", description=__doc__.split("\n")[0],
                                 epilog="Protections and targets: the module docstring and README.md.")
    d = Config()
    ap.add_argument("--quick", action="store_true", help="short phases (1.5 s + 3 s flood + 0.5 s)")
    ap.add_argument("--settings", type=_settings, default=d.settings, help="protections, in order (default off,on)")
    ap.add_argument("--multiples", type=common.numbers, default=d.multiples,
                    help="flood rates as multiples of the slow-path capacity (default 1,3,10)")
    ap.add_argument("--capacity", type=int, default=d.capacity, help=f"flow table entries (default {d.capacity})")
    ap.add_argument("--slowpath-rate", type=float, default=None,
                    help="slow-path capacity in flows/s instead of measuring it with a probe flood")
    ap.add_argument("--flood-seconds", type=float, default=None, help=f"flood per phase (default {d.flood:g})")
    ap.add_argument("--baseline-seconds", type=float, default=None, help=f"unflooded start (default {d.baseline:g})")
    ap.add_argument("--flooder-nice", type=int, default=d.flooder_nice,
                    help=f"nice value of the flood generator (default {d.flooder_nice}; 0: the vrouter's priority)")
    ap.add_argument("--victim-rate", type=float, default=d.victim_rate, help="victim connections/s (default 20)")
    ap.add_argument("--stream-bitrate", default=d.stream_bitrate,
                    help=f"iperf3 -b of the established stream (default {d.stream_bitrate}; 0 = unpaced)")
    ap.add_argument("--neighbour-address", default=d.neighbour_address,
                    help=f"address of the neighbour VM when the topology has none (default {d.neighbour_address})")
    for role in ("flooder", "flood_dst", "victim", "victim_dst", "neighbour"):
        default = getattr(d, role)
        ap.add_argument(f"--{role.replace('_', '-')}", default=default, help=f"{ROLE_HELP[role]} (default {default})")
    add_run_arguments(ap, "flow_pressure", prefix="fp")
    return ap


def config_from(args: argparse.Namespace) -> tuple[Config, str | None]:
    cfg = Config(settings=args.settings, multiples=args.multiples, capacity=args.capacity,
                 slowpath_rate=args.slowpath_rate, victim_rate=args.victim_rate, stream_bitrate=args.stream_bitrate,
                 flooder_nice=args.flooder_nice, flooder=args.flooder, flood_dst=args.flood_dst,
                 victim=args.victim, victim_dst=args.victim_dst, neighbour=args.neighbour,
                 neighbour_address=args.neighbour_address)
    if args.quick:
        cfg = replace(cfg, **QUICK)
    if args.flood_seconds is not None:
        cfg = replace(cfg, flood=args.flood_seconds)
    if args.baseline_seconds is not None:
        cfg = replace(cfg, baseline=args.baseline_seconds)
    invalid = None
    if cfg.capacity < 16:
        invalid = "--capacity must be at least 16"
    elif not 0 <= cfg.flooder_nice <= 19:
        invalid = "--flooder-nice must be 0..19"
    elif cfg.slowpath_rate is not None and cfg.slowpath_rate <= 0:
        invalid = "--slowpath-rate must be > 0"
    elif cfg.flood <= 0 or cfg.baseline < 1.0:
        invalid = "--flood-seconds must be > 0 and --baseline-seconds >= 1"
    elif cfg.victim_rate <= 0:
        invalid = "--victim-rate must be > 0"
    return cfg, invalid


def main(argv: list[str] | None = None) -> int:
    return common.main(parser(), config_from, run, report.summary_lines, argv)


if __name__ == "__main__":
    sys.exit(main())
