"""Experiment: faults and recovery. What does each fault cost the overlay's traffic, and how fast is
it back?

Issue 12. One testbed (the default topology), one fault at a time under the same traffic mix, from
the first server of a leaf to a server of another leaf (default red1@srv1 -> red3@srv3 and
blue1@srv1 -> blue3@srv3, so every fault of the fabric's spines lies on their paths):
  - a ping red1 -> red3 every 10 ms (ping -D: every reply's time),
  - an established TCP stream blue1 -> blue3 (iperf3 paced at --stream-bitrate, default 50 Mbit/s,
    100 ms intervals; `0` for unpaced bulk, which on these 2 cores takes the CPU the rest needs),
  - 20 new TCP connections/s blue1 -> blue3 (success = connected within 1 s).
Per fault: --baseline s of the mix, the fault, held for its time, undone, and --after s more. The
faults (testbed/faults.py, the API behind `testbed fault`; its log gives the times they were
injected and undone on the harness's clock):
  spine-link             the link from the spine the ping hashes over to the destination leaf goes
                         down (found by the spines' port counters during the ping's first second,
                         before the stream and the connections start):
                         the source leaf cannot see it, the controller repairs its group on port
                         status, the vrouter's path probes repair it too (vrouter/core/paths.py)
  leaf-uplink            the source leaf's uplink to that spine: the leaf's bucket watch_port drops
                         it at once; the return path needs the controller or the remote vrouter
  controller             the controller paused (SIGSTOP) for --controller-seconds (default 60): the
                         data plane needs no controller (ARP answered by the leaves' own flows)
  controller+spine-link  the controller paused, then spine-link: only the vrouters' local repair
                         can save the flows hashed over the dead spine
  agent-kill             the source server's agent SIGKILLed (the supervisor restarts it): its
                         established flows are the forwarder's, new ones wait for the new agent
  forwarder-kill         the source server's forwarder SIGKILLed (restarted by the supervisor; the
                         new one starts with an empty flow table)
  loss                   --loss-percent (1%) loss on the link from the spine the stream hashes over
                         to the destination leaf (testbed fault impair, both ends), held
                         --loss-seconds; here a connection fails if it has not connected within
                         3 s (one SYN retransmission): those that took more than 1 s are "slow"
Figures per fault (experiments/faults_report.py): the ping's longest outage and losses, recovery
time, connections failed and the span over which they failed, the stream's survival, stalls and
throughput under the fault against its own unfaulted start. Targets: link failures outage < 1 s;
forwarder restart outage < 1 s with the stream surviving; agent killed: 0 pings lost, new connections
fail for at most 1 s; controller down: 0 lost, 0 failed connections; 1% loss: 0 failed connections,
the stream's throughput reported against its lossless start.

    sudo python -m experiments.faults [--quick] [--faults spine-link,agent-kill,...]

Writes results/faults/<timestamp>/: raw.csv (every ping: fault, seq, t, rtt_ms), connections.csv,
intervals.csv, phases.json, faults.jsonl (the fault log), summary.json, config.yaml,
provenance.json, faults.png (outage and failed connections per fault) and faults_<fault>.png (one
timeline per fault).
"""
from __future__ import annotations

import argparse
import shutil
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from experiments import common
from experiments import faults_report as report
from experiments.common import ExperimentError, Progress, add_run_arguments, load_topology
from testbed.faults import FaultError, Faults
from testbed.measure import loadrun
from testbed.measure.pairs import vm_dict
from testbed.measure.results import ResultsRun, write_csv, write_json
from testbed.measure.runners import finish_ping, port_stats, start_ping
from testbed.runner import Testbed
from testbed.topology import Topology
from vrouter.io import introspect

FAULTS = ("spine-link", "leaf-uplink", "controller", "controller+spine-link", "agent-kill", "forwarder-kill",
          "loss")
PRIMARY = {"spine-link": "link-down", "leaf-uplink": "link-down", "controller+spine-link": "link-down",
           "controller": "pause", "agent-kill": "kill", "forwarder-kill": "kill", "loss": "impair"}
UNDO_ACTIONS = ("link-up", "unimpair", "resume")  # testbed/faults.py's log actions
SETTLE = 2.0          # between faults: the fabric and the vrouters back to normal
PROBE_SECONDS = 1.0   # the ping alone, to find the spine it hashes over


@dataclass(frozen=True)
class Config:
    faults: tuple[str, ...] = FAULTS
    baseline: float = 3.0
    hold: float = 5.0                 # a link down this long
    controller_seconds: float = 60.0
    loss_percent: float = 1.0
    loss_seconds: float = 10.0
    after: float = 4.0                # observed after the fault is undone (a kill: after the kill + hold)
    ping_interval: float = 0.01
    connect_rate: float = 20.0
    connect_timeout: float = 1.0
    # Under loss a connection has failed when it did not connect after one SYN retransmission
    # (Linux's initial RTO is 1 s): at 1% a SYN or SYN-ACK over the lossy spine is lost for about
    # 1 in 50 connections, which then connect after 1 s; those are counted apart as slow.
    loss_connect_timeout: float = 3.0
    stream_bitrate: str = "50M"
    ping_src: str = "red1"
    ping_dst: str = "red3"
    stream_src: str = "blue1"
    stream_dst: str = "blue3"


QUICK = {"baseline": 2.0, "hold": 3.0, "controller_seconds": 10.0, "loss_seconds": 4.0, "after": 2.0}


@dataclass(frozen=True)
class Roles:
    ping_src: dict
    ping_dst: dict
    stream_src: dict
    stream_dst: dict
    src_leaf: str
    dst_leaf: str


def pick_roles(topology: Topology, cfg: Config) -> Roles:
    vms = {vm.name: vm_dict(vm) for vm in topology.vms}
    for name in (cfg.ping_src, cfg.ping_dst, cfg.stream_src, cfg.stream_dst):
        if name not in vms:
            raise ExperimentError(f"{topology.source}: no VM {name!r} (see --ping-src, --stream-src)")
    leaf = {vm["server"]: topology.leaf_of(vm["server"]) for vm in vms.values()}
    r = [vms[cfg.ping_src], vms[cfg.ping_dst], vms[cfg.stream_src], vms[cfg.stream_dst]]
    src_leaf, dst_leaf = leaf[r[0]["server"]], leaf[r[1]["server"]]
    if src_leaf == dst_leaf:
        raise ExperimentError(f"{cfg.ping_src} and {cfg.ping_dst} share leaf {src_leaf}: the spine faults would "
                              f"not touch them (pick VMs under different leaves)")
    if r[2]["server"] != r[0]["server"] or leaf[r[3]["server"]] != dst_leaf:
        raise ExperimentError(f"the stream {cfg.stream_src} -> {cfg.stream_dst} must leave from {r[0]['server']} "
                              f"toward leaf {dst_leaf}, as the ping does")
    return Roles(*r, src_leaf=src_leaf, dst_leaf=dst_leaf)


# --- finding the spine a flow hashes over --------------------------------------------------------
def spine_tx(tb: Testbed, toward: str) -> dict[str, dict[str, int]]:
    """Each spine's port counters toward leaf `toward`."""
    out = {}
    for sw in tb.desc["switches"]:
        if sw["role"] != "spine":
            continue
        port = next((int(p) for p, i in sw["ports"].items() if i.get("peer") == toward), None)
        if port is not None:
            out[sw["name"]] = port_stats(sw["bridge"]).get(port, {})
    return out


def busiest_spine(before: dict, after: dict, key: str) -> str:
    return max(before, key=lambda s: after[s].get(key, 0) - before[s].get(key, 0))


def ping_spine(tb: Testbed, roles: Roles, seconds: float) -> str:
    """The spine the running ping hashes over: over `seconds` of it alone (before the stream and the
    connections start), the spine whose port toward the destination leaf sent the most packets. It
    must be the measured ping's own flow: another ping (another ICMP id) may take another path slot
    and so another spine."""
    before = spine_tx(tb, roles.dst_leaf)
    time.sleep(seconds)
    return busiest_spine(before, spine_tx(tb, roles.dst_leaf), "tx_packets")


# --- one phase ------------------------------------------------------------------------------------
class Phase:
    """The traffic mix over one fault; `inject()` does the fault (and its undo) in the middle."""

    def __init__(self, tb: Testbed, faults: Faults, roles: Roles, cfg: Config, name: str, hold: float,
                 find_spine: bool = False) -> None:
        self.tb, self.faults, self.roles, self.cfg, self.name, self.hold = tb, faults, roles, cfg, name, hold
        self.total = cfg.baseline + hold + cfg.after
        self.target: str | None = None
        self.find_spine = find_spine
        self.spine: str | None = None

    def run(self, inject: Any, progress: Progress) -> dict[str, Any]:
        cfg, roles = self.cfg, self.roles
        src, sdst = self.tb.host(roles.stream_src["name"]), self.tb.host(roles.stream_dst["name"])
        first_event = len(self.faults.events())
        offset = time.time() - time.monotonic()
        probe = PROBE_SECONDS if self.find_spine else 0.0
        ping = start_ping(self.tb.host(roles.ping_src["name"]), roles.ping_dst["address"],
                          round((probe + self.total) / cfg.ping_interval), cfg.ping_interval, timestamps=True)
        if self.find_spine:
            time.sleep(0.2)  # its first packets set up its flow
            self.spine = ping_spine(self.tb, roles, probe - 0.2)
        t0 = time.monotonic()
        stream = loadrun.Stream(src, sdst, roles.stream_dst["address"], self.total, bitrate=cfg.stream_bitrate)
        timeout = cfg.loss_connect_timeout if self.name == "loss" else cfg.connect_timeout
        conns = loadrun.connect(src, roles.stream_dst["address"], cfg.connect_rate, self.total, timeout=timeout)
        try:
            time.sleep(max(0.0, t0 + cfg.baseline - time.monotonic()))
            inject(self)
        finally:
            # whatever the fault left is undone before the next one; the mix runs to its end
            time.sleep(max(0.0, t0 + self.total - time.monotonic()))
            conns_final = conns.wait(self.total + 60)
            pinged = finish_ping(ping, timeout=self.total + 60)
            try:
                intervals, stream_info = stream.result()
            except loadrun.LoadError as exc:
                intervals, stream_info = [], {"error": str(exc)}
        events = self.faults.events()[first_event:]
        # the fault's moment is its primary action's (a paused controller before a link cut is the
        # setting, the cut is the fault); its undo the last undoing action's
        injected = [e for e in events if e.get("action") == PRIMARY[self.name]]
        fault_t = injected[0]["monotonic"] if injected else t0 + cfg.baseline
        undo = [e for e in events if e.get("action") in UNDO_ACTIONS]
        phase = {"fault": self.name, "target": self.target, "t0": t0, "t_end": t0 + self.total,
                 "fault_t": fault_t, "undo_t": undo[-1]["monotonic"] if undo else None, "hold": self.hold,
                 "ping_interval": cfg.ping_interval, "connect_timeout": timeout, "events": events,
                 "clock_offset": offset,
                 "pings": report.ping_timeline(pinged["replies"], pinged["sent"], cfg.ping_interval, offset),
                 "connections": loadrun.connections(conns.records), "connect_final": conns_final,
                 "intervals": intervals, "stream": stream_info, "paths": self._paths()}
        f = report.phase_figures(phase)
        progress(f"  {self.name} ({self.target or '-'}): outage {f['outage_ms']:.0f} ms, ping lost "
                 f"{f['ping_lost']}/{f['ping_sent']}, recovered in {f['recovery_s']:.2f} s, connections failed "
                 f"{f['connections_failed']}/{f['connections']}, stream "
                 f"{'survived' if f['stream_survived'] else 'did NOT survive'}")
        return phase

    def _paths(self) -> dict[str, Any]:
        """The source vrouter's path slots after the fault (introspection "paths", if it has it)."""
        try:
            return introspect.query(self.tb.path, self.roles.ping_src["server"], "paths")
        except introspect.IntrospectError as exc:
            return {"error": str(exc)}


def _spine_link(phase: Phase, controller_paused: bool) -> None:
    spine = phase.spine
    link = f"{spine}-{phase.roles.dst_leaf}"
    phase.target = link + (" (controller paused)" if controller_paused else "")
    if controller_paused:
        phase.faults.pause("controller")
        time.sleep(1.0)
    phase.faults.link_down(link)
    time.sleep(phase.hold)
    phase.faults.link_up(link)
    if controller_paused:
        phase.faults.resume("controller")


def _leaf_uplink(phase: Phase) -> None:
    link = f"{phase.roles.src_leaf}-{phase.spine}"
    phase.target = link
    phase.faults.link_down(link)
    time.sleep(phase.hold)
    phase.faults.link_up(link)


def _controller(phase: Phase) -> None:
    phase.target = "controller"
    phase.faults.pause("controller")
    time.sleep(phase.hold)
    phase.faults.resume("controller")


def _kill(role: str) -> Any:
    def inject(phase: Phase) -> None:
        server = phase.roles.ping_src["server"]
        phase.target = f"{role} {server}"
        phase.faults.kill(role, server, wait=phase.hold + 10)
    return inject


def _loss(phase: Phase) -> None:
    before = spine_tx(phase.tb, phase.roles.dst_leaf)
    time.sleep(1.0)
    spine = busiest_spine(before, spine_tx(phase.tb, phase.roles.dst_leaf), "tx_bytes")
    link = f"{spine}-{phase.roles.dst_leaf}"
    phase.target = f"{link} {phase.cfg.loss_percent:g}%"
    phase.faults.impair(link, loss=f"{phase.cfg.loss_percent:g}%")
    time.sleep(phase.hold)
    phase.faults.unimpair(link)


def run_fault(tb: Testbed, faults: Faults, roles: Roles, cfg: Config, name: str, progress: Progress) -> dict:
    # a link down this long, or a killed process observed this long after the kill
    hold = {"controller": cfg.controller_seconds, "loss": cfg.loss_seconds}.get(name, cfg.hold)
    phase = Phase(tb, faults, roles, cfg, name, hold,
                  find_spine=name in ("spine-link", "leaf-uplink", "controller+spine-link"))
    inject = {"spine-link": lambda p: _spine_link(p, False), "leaf-uplink": _leaf_uplink,
              "controller": _controller, "controller+spine-link": lambda p: _spine_link(p, True),
              "agent-kill": _kill("agent"), "forwarder-kill": _kill("forwarder"), "loss": _loss}[name]
    progress(f"fault {name}: {cfg.baseline:g} s of traffic, the fault for {hold:g} s, {cfg.after:g} s after")
    try:
        return phase.run(inject, progress)
    finally:
        faults.clear()
        time.sleep(SETTLE)


def wait_reachable(tb: Testbed, roles: Roles, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    host, dst = tb.host(roles.ping_src["name"]), roles.ping_dst["address"]
    while time.monotonic() < deadline:
        if " 0% packet loss" in host.cmd(f"ping -n -q -c 3 -i 0.05 -W 1 {dst}"):
            return True
        time.sleep(0.5)
    return False


def run(topology_path: Path, cfg: Config, prefix: str, run_root: str | None, outroot: Path,
        progress: Progress) -> tuple[Path, dict]:
    results = ResultsRun("faults", outroot)
    topology = load_topology(topology_path)
    roles = pick_roles(topology, cfg)
    progress(f"bringing up {topology.name} with prefix {prefix!r}")
    tb = Testbed(topology, prefix=prefix, run_root=run_root, progress=lambda m: progress("  " + m)).start()
    phases: list[dict] = []
    try:
        faults = Faults.for_testbed(tb)
        server = loadrun.serve(tb.host(roles.stream_dst["name"]))
        try:
            if not wait_reachable(tb, roles):
                raise ExperimentError(f"{roles.ping_src['name']} cannot reach {roles.ping_dst['name']} "
                                      f"before any fault")
            for name in cfg.faults:
                phases.append(run_fault(tb, faults, roles, cfg, name, progress))
                if not wait_reachable(tb, roles):
                    progress(f"  ({roles.ping_dst['name']} still unreachable 30 s after {name}; going on)")
        finally:
            server.stop()
        log = faults.log_path
    except (FaultError, loadrun.LoadError, introspect.IntrospectError) as exc:
        raise ExperimentError(str(exc).splitlines()[0]) from None
    finally:
        progress("tearing down")
        tb.stop()
    summary = report.summarize(phases, asdict(cfg))
    config = {"experiment": "faults", **asdict(cfg), "roles": asdict(roles), "topology_file": str(topology_path),
              "topology": topology.raw}
    outdir = results.write(report.PING_FIELDS, report.ping_rows(phases), summary, config,
                           lambda path: report.plot_overview(summary, path))
    write_csv(outdir / "connections.csv", report.CONNECTION_FIELDS, report.connection_rows(phases))
    write_csv(outdir / "intervals.csv", report.INTERVAL_FIELDS, report.interval_rows(phases))
    write_json(outdir / "phases.json", [report.phase_record(p) for p in phases])
    if Path(log).exists():
        shutil.copy(log, outdir / "faults.jsonl")
    for p in phases:
        report.plot_timeline(p, p["events"], outdir / f"faults_{p['fault'].replace('+', '_')}.png")
    return outdir, summary


def _faults(text: str) -> tuple[str, ...]:
    values = tuple(x.strip() for x in text.split(",") if x.strip())
    bad = [v for v in values if v not in FAULTS]
    if not values or bad:
        raise argparse.ArgumentTypeError(f"expected faults of {', '.join(FAULTS)}: {text}")
    return values


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m experiments.faults", description=__doc__.split("\n")[0],
                                 epilog="The faults, figures and targets: the module docstring and README.md.")
    d = Config()
    ap.add_argument("--quick", action="store_true",
                    help="short phases (2 s + 3 s fault + 2 s; the controller down 10 s, the loss 4 s)")
    ap.add_argument("--faults", type=_faults, default=d.faults, help=f"in order (default {','.join(FAULTS)})")
    ap.add_argument("--controller-seconds", type=float, default=None,
                    help=f"the controller paused this long (default {d.controller_seconds:g})")
    ap.add_argument("--loss-percent", type=float, default=d.loss_percent, help="the loss fault's loss (default 1)")
    ap.add_argument("--loss-seconds", type=float, default=None, help=f"the loss held (default {d.loss_seconds:g})")
    ap.add_argument("--stream-bitrate", default=d.stream_bitrate,
                    help=f"iperf3 -b of the stream (default {d.stream_bitrate}; 0 = unpaced bulk)")
    for role in ("ping_src", "ping_dst", "stream_src", "stream_dst"):
        ap.add_argument(f"--{role.replace('_', '-')}", default=getattr(d, role),
                        help=f"VM (default {getattr(d, role)})")
    add_run_arguments(ap, "faults", prefix="fx")
    return ap


def config_from(args: argparse.Namespace) -> tuple[Config, str | None]:
    cfg = Config(faults=args.faults, loss_percent=args.loss_percent, stream_bitrate=args.stream_bitrate,
                 ping_src=args.ping_src, ping_dst=args.ping_dst, stream_src=args.stream_src,
                 stream_dst=args.stream_dst)
    if args.quick:
        cfg = replace(cfg, **QUICK)
    if args.controller_seconds is not None:
        cfg = replace(cfg, controller_seconds=args.controller_seconds)
    if args.loss_seconds is not None:
        cfg = replace(cfg, loss_seconds=args.loss_seconds)
    invalid = None
    if not 0 < cfg.loss_percent <= 100:
        invalid = "--loss-percent must be in (0, 100]"
    elif cfg.controller_seconds <= 0 or cfg.loss_seconds <= 0:
        invalid = "--controller-seconds and --loss-seconds must be > 0"
    elif cfg.controller_seconds > 1800:
        invalid = "--controller-seconds must be at most 1800"
    return cfg, invalid


def main(argv: list[str] | None = None) -> int:
    return common.main(parser(), config_from, run, report.summary_lines, argv)


if __name__ == "__main__":
    sys.exit(main())
