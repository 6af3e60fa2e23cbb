"""A multi-core vrouter: designated-core dispatcher, second-core relays and pinned worker processes.

    python -m vrouter.processes.dispatcher --rundir RUNDIR --server srv1 --steering steering.json [--gro on|off] [--gso on|off]

Same sockets, agent protocol and introspection as `vrouter.processes.forwarder` (which it extends), with
``workers`` processes behind it (docs/vrouter.md, "Multi-core"). Process tree::

    dispatcher (this process; agent.sock + introspect.sock; TAP setup; NIC fds in rps/extended mode)
      |-- worker CPU 0 (Pipeline = shard of the flow table, own tunnel send sockets, own agent channel)
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

import argparse
import collections
import json
import logging
import os
import selectors
import signal
import socket
import sys
import time

from vrouter.io import ipc
from vrouter.core import rps_channel
from vrouter.io import rps_kernel
from vrouter.io import tap
from vrouter.core.config import ConfigError
from vrouter.processes.forwarder import VNET_LEN, Forwarder
from vrouter.processes.launch import add_switch_arguments, die_with_parent, serve
from vrouter.io.introspect import Introspector, IntrospectError, _summary
from vrouter.core.multicore import MulticoreConfig
from vrouter.core.offload import averages, vm_mtu
from vrouter.core.rps_route import Outbox, Router

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

    def spawn(self) -> "Children":
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
        from vrouter.processes.worker import run_worker
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


class Dispatcher(Forwarder):
    """The forwarder's shell (agent and introspection sockets, TAP setup) over worker processes."""

    def __init__(self, rundir: str, server: str, mc: MulticoreConfig, children: Children, **kw):
        self.mc, self.children = mc, children
        self.kernel = mc.mode == "kernel"
        self.tap_queues = len(children.ctrl) if self.kernel else 1
        self.router = Router(mc.steering)
        self.outbox = Outbox(self._send)
        self.vrf_of: dict = {}
        self.queries = 0
        super().__init__(rundir, server, **kw)
        self.introspector = MultiIntrospector(self)

    # --- NICs ----------------------------------------------------------------------------------
    def _open_rx(self, underlay_ip: str):
        self.router.local_ip = underlay_ip
        # kernel mode: the workers own SO_REUSEPORT sockets (the underlay NIC's GRO is still set here)
        if not self.kernel:
            super()._open_rx(underlay_ip)

    def _on_tap(self, fd, name):
        if name not in self.vifs:
            return
        vrf = self.vrf_of.get(name)
        add, route = self.outbox.add, self.router.from_tap
        for f in tap.read_frames(fd):      # the worker counts them (vif counters) and reads the header
            add(route(name, vrf, f, VNET_LEN), "tap", name, f)
        self.outbox.flush()

    def _on_fabric(self, sock, _):
        reads = self.tunnels.receive_gro(sock, ports=True)
        if self.config is None:
            self.counters["fabric_rx_unconfigured"] += len(reads)
            return
        add, route = self.outbox.add, self.router.from_fabric
        for src, encap, data, seg, sport in reads:
            add(route(encap, src, sport, data), encap, src, data, seg)
        self.outbox.flush()

    def _send(self, dest, parts, n):
        """One datagram per destination and NIC read (more for a read of super-frames); a blocking send
        when a worker is behind is back-pressure to the NIC queue, not loss."""
        hop, cpu = dest
        self.counters[f"to_{hop}_{cpu}"] += n
        (self.children.data[cpu] if hop == "worker" else self.children.relay_in[cpu]).sendmsg(parts)

    # --- agent ---------------------------------------------------------------------------------
    def _on_agent_listen(self, listener, _):
        super()._on_agent_listen(listener, _)
        # One channel per worker: the agent answers each punt on the channel it came from.
        agent_ends = []
        for cpu, ctrl in self.children.ctrl.items():
            a, b = channel_pair()
            socket.send_fds(ctrl, [ipc.pack({"t": "agent"})], [b.fileno()])
            b.close()
            agent_ends.append(a)
        socket.send_fds(self.agent, [ipc.pack({"t": "channels", "workers": list(self.children.ctrl)})],
                        [a.fileno() for a in agent_ends])
        for a in agent_ends:
            a.close()

    # --- configuration and VIFs ----------------------------------------------------------------
    def apply_config(self, generation, config_dict):
        config = self._accept_config(generation, config_dict)
        if config is None:
            return
        for ctrl in self.children.ctrl.values():
            ctrl.send(ipc.pack({"t": "config", "generation": generation, "config": config_dict}))
        self.config, self.config_dict, self.generation = config, config_dict, generation
        ids = {n.name: n.id for n in config.networks}
        self.vrf_of = {v.name: ids.get(v.network) for v in config.vifs}
        mtu = vm_mtu(config)
        if mtu != self.offloads.mtu:
            self.offloads.mtu = mtu
            self._set_vif_mtus(mtu)
        self._reconcile_vifs()
        log.info("config generation %s applied on %d workers (%s): %d vifs, mode %s", generation,
                 len(self.children.ctrl), self.mc.mode, len(config.vifs), config.flow.mode)

    def _serve_vif(self, name, port, entry):
        fds = port.queues
        for i, cpu in enumerate(self.children.ctrl):
            # kernel: queue i is worker i's to read and write; else every worker writes the one fd
            fd = fds[i] if self.kernel else fds[0]
            socket.send_fds(self.children.ctrl[cpu], [ipc.pack({"t": "vif", "name": name, "read": self.kernel})],
                            [fd])
        if not self.kernel:
            self.sel.register(fds[0], selectors.EVENT_READ, ("tap", name))
        log.info("vif %s attached (VM %s, %d queue%s)", name, entry.get("vm", "?"), len(fds),
                 "s" if len(fds) > 1 else "")

    def _unserve_vif(self, name, port):
        for ctrl in self.children.ctrl.values():
            ctrl.send(ipc.pack({"t": "vif_gone", "name": name}))
        if not self.kernel:
            self.sel.unregister(port.fd)

    def set_offloads(self, gro=None, gso=None) -> dict:
        """The forwarder's switches on this process's sockets and the TAPs, then on every worker."""
        out = super().set_offloads(gro, gso)
        self.query_workers("set", gro=gro, gso=gso)
        return out

    # --- workers -------------------------------------------------------------------------------
    def query_workers(self, op: str, **args) -> dict:
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
                except socket.timeout:
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

    def reset(self):
        self.query_workers("reset")
        self.counters.clear()
        if self.tunnels:
            self.tunnels.counters.clear()

    def _tick(self, now):
        dead = self.children.dead()
        if dead:
            log.error("%s: stopping so the supervisor restarts the vrouter", dead)
            self.running = False

    def close(self):
        self.children.stop()
        super().close()


def _sum_into(total: dict, part: dict) -> None:
    for k, v in part.items():
        if isinstance(v, dict):
            _sum_into(total.setdefault(k, {}), v)
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            total[k] = total.get(k, 0) + v
        else:
            total.setdefault(k, v)


class MultiIntrospector(Introspector):
    """Answers from all shards: flows merged with a worker column, counters summed and per worker."""

    def _need_pipeline(self):
        if self.fwd.config is None:
            raise self._unconfigured()

    def _flows(self, req):
        self._need_pipeline()
        out = []
        for cpu, flows in self.fwd.query_workers("flows").items():
            for f in flows:
                f["worker"] = cpu
                out.append(f)
        return out

    def _dropstats(self, req):
        self._need_pipeline()
        total = {}
        for drops in self.fwd.query_workers("dropstats").values():
            _sum_into(total, drops)
        return total

    def _vifs(self, req):
        # The workers count VIF traffic (they read the frames' headers and write the TAPs).
        per = self.fwd.query_workers("vifs")
        for name, port in self.fwd.vifs.items():
            port.counters = collections.Counter()
            for vifs in per.values():
                port.counters.update(vifs.get(name, {}))
        return super()._vifs(req)

    def _rtts(self, req):
        return [round(x, 1) for s in self.fwd.query_workers("stats").values() for x in s["rtts"]]

    def _stats(self, req):
        f = self.fwd
        per = f.query_workers("stats")
        pipeline, forwarder, tunnels = {}, dict(f.counters), dict(f.tunnels.counters) if f.tunnels else {}
        offloads = {"gro": {}, "gso": {}}
        agent = dict(f.agent_stats)
        rtts = []
        workers = {}
        for cpu, s in per.items():
            _sum_into(pipeline, s["pipeline"])
            _sum_into(forwarder, s["counters"])
            _sum_into(tunnels, s["tunnels"])
            _sum_into(offloads, {k: s["offloads"][k] for k in offloads})
            if s["agent"].get("decisions", -1) > agent.get("decisions", -1):
                agent = s["agent"]
            rtts += s["rtts"]
            c = s["counters"]
            workers[cpu] = {"pid": s["pid"], "packets": c.get("packets", 0), "bytes": c.get("bytes", 0),
                            "punts": c.get("punts", 0), "decisions": c.get("decisions", 0),
                            "hits": s["pipeline"].get("hits", 0), "flows": s["pipeline"].get("entries", 0),
                            "agent_channel": s["agent_connected"]}
        if per:
            pipeline["mode"] = next(iter(per.values()))["pipeline"].get("mode")
            averages(offloads)
        offloads["gro"]["enabled"], offloads["gso"]["enabled"] = f.offloads.gro_on, f.offloads.gso_on
        return {"server": f.server, "generation": f.generation, "mode": f.config.flow.mode if f.config else None,
                "pipeline": pipeline, "forwarder": forwarder, "tunnels": tunnels, "agent": agent,
                "agent_connected": f.agent is not None, "slowpath_rtt_us": _summary(rtts),
                **offloads, "vm_mtu": f.offloads.mtu,
                "workers": workers, "steering": {"mode": f.mc.mode, "workers": f.mc.workers,
                                                 "second_cores": f.mc.second_cores,
                                                 "fields": list(f.mc.steering.fields)}}


def load(path: str) -> MulticoreConfig:
    try:
        with open(path, encoding="utf-8") as fh:
            d = json.load(fh)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None
    return MulticoreConfig.from_dict(d, available_cpus=os.sched_getaffinity(0))


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m vrouter.processes.dispatcher", description=__doc__.splitlines()[0])
    p.add_argument("--rundir", required=True)
    p.add_argument("--server", required=True)
    p.add_argument("--steering", required=True, help="JSON file: mode, workers, ... (vrouter.core.multicore)")
    add_switch_arguments(p)
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, stream=sys.stderr,
                        format=f"%(asctime)s rps[{args.server}] %(process)d %(levelname)s %(message)s")
    try:
        mc = load(args.steering)
        rps_kernel.pin(mc.dispatcher_cpu)
    except (ConfigError, rps_kernel.NicError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    children = Children(mc, gro=args.gro, gso=args.gso).spawn()
    try:
        fwd = Dispatcher(args.rundir, args.server, mc, children, gro=args.gro, gso=args.gso)
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
