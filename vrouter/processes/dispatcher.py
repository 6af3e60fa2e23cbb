"""A multi-core vrouter: designated-core dispatcher, second-core relays and pinned worker processes.

    python -m vrouter.rps_dispatch --rundir RUNDIR --server srv1 --steering steering.json \
        [--gro on|off] [--gso on|off]

The forwarder's shell (`vrouter.processes.forwarder.Forwarder`: the same sockets, agent protocol and
introspection) with a `WorkerPool` engine instead of the in-process datapath: ``workers`` processes,
each with its own `Datapath`, behind it (docs/vrouter.md, "Multi-core"). Process tree::

    dispatcher (this process; agent.sock + introspect.sock; TAP setup; NIC fds in rps/extended mode)
      |-- worker CPU 0 (Datapath = shard of the flow table, own tunnel send sockets, own agent channel)
      |-- worker CPU 1
      `-- relay  CPU k (extended mode only: stage 2, inner hash -> worker, for tunnel packets)

rps: the dispatcher reads every NIC, runs ``Rps.steer`` and sends each worker one batch per NIC read.
extended: tunnel packets are steered by the outer header only (stage 1) to a relay, which runs the
inner hash (stage 2); TAP frames have no outer header and go straight to their worker.
kernel: the workers read their own SO_REUSEPORT sockets and TAP queues; the dispatcher only sets up.
Offloads as in the forwarder: TAP reads go to a worker whole (virtio_net_hdr first: a TSO super-frame
stays one record), a UDP_GRO read stays one record (steered by its first segment's inner header: the
kernel coalesces only one outer 4-tuple, i.e. one inner flow), and the workers merge and cut.
Workers and relays are forked children that die with the dispatcher; if one dies the dispatcher
exits too, and the supervisor restarts the whole vrouter (the agent reconnects by itself).
"""
from __future__ import annotations

import functools
import json
import logging
import os
import signal
import socket
import sys
import time

from vrouter.core import rps_channel
from vrouter.core.config import ConfigError
from vrouter.core.multicore import MulticoreConfig
from vrouter.core.offload import averages
from vrouter.core.rps_route import Outbox, Router
from vrouter.io import ipc, rps_kernel
from vrouter.io.introspect import IntrospectError, summary
from vrouter.processes.datapath import VNET_LEN
from vrouter.processes.forwarder import Forwarder
from vrouter.processes.launch import add_switch_arguments, die_with_parent, parser, serve, setup_logging
from vrouter.processes.worker import run_worker

log = logging.getLogger("rps")
QUERY_TIMEOUT = 5.0


def channel_pair() -> tuple:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    ipc.tune_seqpacket(a)
    ipc.tune_seqpacket(b)
    return a, b


class Children:
    """Sockets and PIDs of the workers and relays, created before the dispatcher exists."""

    def __init__(self, mc: MulticoreConfig, gro: bool = True, gso: bool = True):
        self.mc = mc
        self.offloads = {"gro": gro, "gso": gso}   # the workers' switches at start
        self.pids: dict = {}                       # pid -> "worker 0" | "relay 1"
        self.ctrl: dict = {}                       # cpu -> dispatcher end of the control channel
        self.data: dict = {}                       # cpu -> dispatcher end of its data channel
        self.relay_in: dict = {}                   # second core -> dispatcher end
        self._child_ends: list = []

    def spawn(self) -> Children:
        mc = self.mc
        kernel = mc.mode == "kernel"
        worker_inputs = {cpu: [] for cpu in mc.workers}
        for cpu in mc.workers:
            self.ctrl[cpu], c = channel_pair()
            worker_inputs[cpu].append(c)
            self._child_ends.append(c)
            if not kernel:
                self.data[cpu], d = channel_pair()
                worker_inputs[cpu].append(d)
                self._child_ends.append(d)
        relay_outputs = {}
        for core in mc.second_cores:
            self.relay_in[core], r_in = channel_pair()
            self._child_ends.append(r_in)
            outs = {}
            for cpu in mc.workers:
                o, w_in = channel_pair()
                outs[cpu] = o
                worker_inputs[cpu].append(w_in)
                self._child_ends += [o, w_in]
            relay_outputs[core] = (r_in, outs)
        for i, cpu in enumerate(mc.workers):
            ctrl, *inputs = worker_inputs[cpu]
            self._fork(f"worker {cpu}", [ctrl, *inputs],
                       lambda c=cpu, ct=ctrl, ins=inputs, first=(i == 0):
                       run_worker(c, ct, ins, kernel, first, **self.offloads))
        for core, (r_in, outs) in relay_outputs.items():
            self._fork(f"relay {core}", [r_in, *outs.values()],
                       lambda c=core, r=r_in, o=outs: run_relay(c, mc, r, o))
        for s in self._child_ends:
            s.close()
        self._child_ends = []
        return self

    def _fork(self, name: str, keep: list, target) -> None:
        pid = os.fork()
        if pid:
            self.pids[pid] = name
            return
        code = 1
        try:
            die_with_parent()
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            mine = {s.fileno() for s in keep}
            for s in [*self.ctrl.values(), *self.data.values(), *self.relay_in.values(), *self._child_ends]:
                if s.fileno() not in mine and s.fileno() >= 0:
                    s.close()
            code = target()
        except BaseException:
            logging.getLogger("rps").exception("%s failed", name)
        finally:
            os._exit(code)

    def dead(self) -> str | None:
        for pid, name in list(self.pids.items()):
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done, status = pid, 0
            if done:
                del self.pids[pid]
                return f"{name} (pid {pid}) exited with status {status}"
        return None

    def stop(self) -> None:
        for pid in list(self.pids):
            try:
                os.kill(pid, signal.SIGTERM)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
        self.pids.clear()


def run_relay(core: int, mc: MulticoreConfig, inbox: socket.socket, outs: dict) -> int:
    """Second core of extended RPS: inner hash (stage 2) of tunnel packets -> the owning worker."""
    rps_kernel.pin(core)
    router = Router(mc.steering)
    # blocking sends: back-pressure to the dispatcher, no loss
    outbox = Outbox(lambda cpu, parts, _n: outs[cpu].sendmsg(parts))
    decode = rps_channel.decode
    while True:
        data = inbox.recv(ipc.SEQPACKET_MAX)
        if not data:
            return 0
        for kind, tag, payload, seg in decode(data):
            outbox.add(router.stage2(kind, payload), kind, tag, payload, seg)
        outbox.flush()


class WorkerPool:
    """The multi-core vrouter's engine behind the forwarder's shell: packets are steered to the
    workers' datapaths (rps, extended) or read by the workers themselves (kernel); configuration,
    VIF fds, agent channels and introspection queries go to every worker."""

    stamping = False        # latency stamps are the single forwarder's (vrouter/core/latency.py)
    bulk = False            # the workers defer for themselves

    def __init__(self, shell: Forwarder, mc: MulticoreConfig, children: Children):
        self.shell, self.mc, self.children = shell, mc, children
        self.kernel = mc.mode == "kernel"
        self.tap_queues = len(children.ctrl) if self.kernel else 1   # kernel: one TAP queue per worker
        self.reads_taps = self.reads_fabric = not self.kernel      # kernel: the workers own SO_REUSEPORT sockets
        self.router = Router(mc.steering)
        self.outbox = Outbox(self._send)
        self.vrf_of: dict = {}
        self.queries = 0

    @property
    def configured(self) -> bool:
        return self.shell.config is not None

    # --- packets -------------------------------------------------------------------------------
    def on_tap(self, name: str, frames: list[bytes]) -> None:
        vrf = self.vrf_of.get(name)
        add, route = self.outbox.add, self.router.from_tap
        for f in frames:      # the worker counts them (vif counters) and reads the header
            add(route(name, vrf, f, VNET_LEN), "tap", name, f)
        self.outbox.flush()

    def on_fabric(self, tunnels, sock) -> None:
        reads = tunnels.receive_gro(sock, ports=True)
        if self.shell.config is None:
            self.shell.counters["fabric_rx_unconfigured"] += len(reads)
            return
        add, route = self.outbox.add, self.router.from_fabric
        for src, encap, data, seg, sport in reads:
            add(route(encap, src, sport, data), encap, src, data, seg)
        self.outbox.flush()

    def _send(self, dest, parts, n):
        """One datagram per destination and NIC read (more for a read of super-frames); a blocking send
        when a worker is behind is back-pressure to the NIC queue, not loss."""
        hop, cpu = dest
        self.shell.counters[f"to_{hop}_{cpu}"] += n
        (self.children.data[cpu] if hop == "worker" else self.children.relay_in[cpu]).sendmsg(parts)

    def flush_punts(self) -> None:
        """The dispatcher punts nothing: each worker has its own channel to the agent."""

    def punt_wait(self) -> float | None:
        return None

    def probe_wait(self) -> float | None:
        """No path repair in a multi-core vrouter (its workers send with per-flow entropy ports)."""
        return None

    def probe(self) -> None:
        pass

    def paths(self) -> dict:
        return {"enabled": False, "slots": 0, "paths": [],
                "why": "multi-core vrouters do not run path repair (docs/vrouter.md, \"Path repair\")"}

    def nat(self) -> dict:
        return {"enabled": False, "why": "NAT needs the single-process forwarder (this one runs worker processes)"}

    def service(self) -> bool:
        inbox = self.shell.agent.inbox
        if inbox:
            log.warning("%d decisions on the dispatcher's channel ignored: the agent answers each worker "
                        "on its own", len(inbox))
            inbox.clear()
        return False

    # --- agent ---------------------------------------------------------------------------------
    def agent_connected(self, conn: socket.socket) -> None:
        """One channel per worker: the agent answers each punt on the channel it came from."""
        agent_ends = []
        for ctrl in self.children.ctrl.values():
            a, b = channel_pair()
            socket.send_fds(ctrl, [ipc.pack({"t": "agent"})], [b.fileno()])
            b.close()
            agent_ends.append(a)
        socket.send_fds(conn, [ipc.pack({"t": "channels", "workers": list(self.children.ctrl)})],
                        [a.fileno() for a in agent_ends])
        for a in agent_ends:
            a.close()

    # --- configuration and VIFs ----------------------------------------------------------------
    def configure(self, generation, config, config_dict: dict, tunnels) -> None:
        self.router.local_ip = config.underlay_ip
        for ctrl in self.children.ctrl.values():
            ctrl.send(ipc.pack({"t": "config", "generation": generation, "config": config_dict,
                                "rundir": str(self.shell.rundir), "server": self.shell.server}))
        ids = {n.name: n.id for n in config.networks}
        self.vrf_of = {v.name: ids.get(v.network) for v in config.vifs}
        log.info("config generation %s sent to %d workers (%s)", generation, len(self.children.ctrl), self.mc.mode)

    def vif_up(self, name: str, port, entry: dict) -> None:
        fds = port.queues
        for i, ctrl in enumerate(self.children.ctrl.values()):
            # kernel: queue i is worker i's to read and write; else every worker writes the one fd
            fd = fds[i] if self.kernel else fds[0]
            socket.send_fds(ctrl, [ipc.pack({"t": "vif", "name": name, "read": self.kernel})], [fd])
        log.info("vif %s attached (VM %s, %d queue%s)", name, entry.get("vm", "?"), len(fds),
                 "s" if len(fds) > 1 else "")

    def vif_down(self, name: str, port) -> None:
        for ctrl in self.children.ctrl.values():
            ctrl.send(ipc.pack({"t": "vif_gone", "name": name}))

    def set_offloads(self, gro, gso) -> None:
        self.query("set", gro=gro, gso=gso)

    def reset(self) -> None:
        self.query("reset")

    def tick(self, now: float) -> bool:
        dead = self.children.dead()
        if dead:
            log.error("%s: stopping so the supervisor restarts the vrouter", dead)
        return dead is None

    def close(self) -> None:
        try:        # each worker writes its records file, the pairs still in its table included
            self.query("records", flush=True, end="shutdown")
        except IntrospectError as exc:
            log.warning("flow records at shutdown: %s", exc)
        self.children.stop()

    # --- workers -------------------------------------------------------------------------------
    def query(self, op: str, **args) -> dict:
        """{cpu: result} from every worker, asked in turn over its control channel."""
        out = {}
        for cpu, ctrl in self.children.ctrl.items():
            self.queries += 1
            qid = self.queries
            ctrl.send(ipc.pack({"t": "query", "id": qid, "op": op, **args}))
            deadline = time.monotonic() + QUERY_TIMEOUT
            while True:
                ctrl.settimeout(max(0.01, deadline - time.monotonic()))
                try:
                    data = ctrl.recv(ipc.SEQPACKET_MAX)
                except TimeoutError:
                    raise IntrospectError(f"worker {cpu} did not answer {op!r} within {QUERY_TIMEOUT:g} s") from None
                finally:
                    ctrl.settimeout(None)
                if not data:
                    raise IntrospectError(f"worker {cpu} is gone")
                msg = ipc.unpack(data)
                if msg.get("id") == qid:
                    out[cpu] = msg.get("result")
                    break
        return out

    # --- introspection: answers from all shards ------------------------------------------------
    def flows(self) -> list[dict]:
        out = []
        for cpu, flows in self.query("flows").items():
            for f in flows:
                f["worker"] = cpu
                out.append(f)
        return out

    def records(self, flush: bool) -> dict:
        """Flow records (vrouter/io/flowlog.py): every worker's counters summed, and per worker."""
        per = self.query("records", flush=flush)
        total: dict = {}
        for s in per.values():
            _sum_into(total, {k: v for k, v in s.items() if k not in ("file", "last_error")})
        total["files"] = [s.get("file") for s in per.values()]
        total["workers"] = per
        return total

    def drop_stats(self) -> dict:
        total: dict = {}
        for drops in self.query("dropstats").values():
            _sum_into(total, drops)
        return total

    def vif_counters(self) -> dict[str, dict]:
        """The workers count VIF traffic (they read the frames' headers and write the TAPs)."""
        total: dict = {}
        for vifs in self.query("vifs").values():
            for name, counters in vifs.items():
                _sum_into(total.setdefault(name, {}), counters)
        return total

    def rtts(self) -> list[float]:
        return [x for s in self.query("stats").values() for x in s["rtts"]]

    def pressure(self) -> dict:
        """Every shard's table and channel, summed (largest_batch and window: the largest)."""
        total: dict = {}
        largest = window = 0
        for p in self.query("pressure").values():
            largest = max(largest, p["channel"]["largest_batch"])
            window = max(window, p["channel"]["window"])
            _sum_into(total, p)
        if total:
            total["channel"].update(largest_batch=largest, window=window)
        return total

    def stats(self) -> dict:
        """Counters summed over the workers (plus this process's own), and a section per worker."""
        f = self.shell
        per = self.query("stats")
        pipeline: dict = {}
        forwarder, tunnels = dict(f.counters), dict(f.tunnels.counters) if f.tunnels else {}
        offloads: dict = {"gro": {}, "gso": {}}
        agent = dict(f.agent.agent_stats)
        rtts: list = []
        workers = {}
        for cpu, s in per.items():
            _sum_into(pipeline, s["pipeline"])
            _sum_into(forwarder, s["forwarder"])
            _sum_into(tunnels, s["tunnels"])
            _sum_into(offloads, {k: s[k] for k in offloads})
            if s["agent"].get("decisions", -1) > agent.get("decisions", -1):
                agent = s["agent"]
            rtts += s["rtts"]
            c = s["forwarder"]
            workers[cpu] = {"pid": s["pid"], "packets": c.get("packets", 0), "bytes": c.get("bytes", 0),
                            "punts": c.get("punts", 0), "decisions": c.get("decisions", 0),
                            "hits": s["pipeline"].get("hits", 0), "flows": s["pipeline"].get("entries", 0),
                            "agent_channel": s["agent_connected"]}
        if per:
            pipeline["mode"] = next(iter(per.values()))["pipeline"].get("mode")
            averages(offloads)
        offloads["gro"]["enabled"], offloads["gso"]["enabled"] = f.offloads.gro_on, f.offloads.gso_on
        return {"pipeline": pipeline, "forwarder": forwarder, "tunnels": tunnels, "agent": agent,
                "agent_connected": f.agent.sock is not None, "slowpath_rtt_us": summary(rtts),
                **offloads, "vm_mtu": f.offloads.mtu,
                "workers": workers, "steering": {"mode": self.mc.mode, "workers": self.mc.workers,
                                                 "second_cores": self.mc.second_cores,
                                                 "fields": list(self.mc.steering.fields)}}


def _sum_into(total: dict, part: dict) -> None:
    for k, v in part.items():
        if isinstance(v, dict):
            _sum_into(total.setdefault(k, {}), v)
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            total[k] = total.get(k, 0) + v
        else:
            total.setdefault(k, v)


def load(path: str) -> MulticoreConfig:
    try:
        with open(path, encoding="utf-8") as fh:
            d = json.load(fh)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None
    return MulticoreConfig.from_dict(d, available_cpus=os.sched_getaffinity(0))


def main(argv=None):
    p = parser("python -m vrouter.rps_dispatch", __doc__)
    p.add_argument("--steering", required=True, help="JSON file: mode, workers, ... (vrouter/core/multicore.py)")
    add_switch_arguments(p)
    args = p.parse_args(argv)
    setup_logging(args, "rps")
    try:
        mc = load(args.steering)
        rps_kernel.pin(mc.dispatcher_cpu)
    except (ConfigError, rps_kernel.NicError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    children = Children(mc, gro=args.gro, gso=args.gso).spawn()
    try:
        fwd = Forwarder(args.rundir, args.server, functools.partial(WorkerPool, mc=mc, children=children),
                        gro=args.gro, gso=args.gso, path_slots=0, defer_us=0.0)
    except (ipc.IpcError, OSError) as exc:
        children.stop()
        print(f"error: {exc}", file=sys.stderr)
        return 1
    log.info("%s mode, workers on CPUs %s%s", mc.mode, mc.workers,
             f", relays on {mc.second_cores}" if mc.second_cores else "")
    serve(fwd)
    return 0


if __name__ == "__main__":
    sys.exit(main())
