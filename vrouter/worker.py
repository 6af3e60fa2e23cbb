"""One worker process of a multi-core vrouter: a shard of the flow table on one pinned CPU.

Forked by `vrouter.rps_dispatch` (one per worker CPU). It runs its own `Pipeline`, whose flow table
holds exactly the flows the steering hash gives this worker, and executes the actions itself: tunnel
sends from its own sockets (`rps_kernel.Sender`), TAP writes on the fds the dispatcher passed it,
punts on its own channel to the server's one agent, which answers on the same channel, so the
proactive reverse entry lands on the worker that punted: the one the reply is steered to.

Inputs: packet batches from the dispatcher and relays (`rps_channel`), or in kernel mode its own
SO_REUSEPORT tunnel sockets and TAP queues; control messages from the dispatcher (config, TAP fds,
agent channel, introspection queries), answered on the control channel and nowhere else.
"""
from __future__ import annotations

import collections
import logging
import os
import selectors
import socket
import time

from vrouter import ipc, rps_channel, rps_kernel, tap
from vrouter.actions import Punt, ToTunnel, ToVif
from vrouter.forwarder import EXPIRE_EVERY, AgentChannel

log = logging.getLogger("worker")
MAX_FDS = 64


def recv_ctrl(sock: socket.socket) -> tuple:
    data, fds, _flags, _addr = socket.recv_fds(sock, ipc.SEQPACKET_MAX, MAX_FDS)
    return (ipc.unpack(data) if data else None), fds


class Worker(AgentChannel):
    def __init__(self, cpu: int, ctrl: socket.socket, inputs: list, kernel: bool, first: bool,
                 clock=time.monotonic):
        self.cpu, self.ctrl, self.kernel, self.first, self.clock = cpu, ctrl, kernel, first, clock
        self.sel = selectors.DefaultSelector()
        self.pipeline = None
        self.config = None
        self.sender = None
        self.taps: dict[str, list] = {}        # vif name -> [fds]; fds[0] is where this worker writes
        self.rx: dict = {}                     # kernel mode: own receive sockets -> encap
        self.agent: socket.socket | None = None
        self.agent_stats: dict = {}
        self.counters = collections.Counter()
        self.punt_seq = 0
        self.punt_sent: dict = {}
        self.slowpath_rtt_us: collections.deque = collections.deque(maxlen=4096)
        self.running = True
        self.sel.register(ctrl, selectors.EVENT_READ, ("ctrl", None))
        for s in inputs:
            s.setblocking(False)
            self.sel.register(s, selectors.EVENT_READ, ("batch", None))

    def run(self):
        next_expire = self.clock() + EXPIRE_EVERY
        while self.running:
            for key, _ in self.sel.select(max(0.0, next_expire - self.clock())):
                kind, obj = key.data
                try:
                    getattr(self, f"_on_{kind}")(key.fileobj, obj)
                except (ConnectionError, OSError) as exc:
                    if kind == "ctrl":
                        log.warning("worker %d: dispatcher gone (%s)", self.cpu, exc)
                        self.running = False
                    elif kind == "agent":
                        self._drop_agent(exc)
                    elif kind == "tap":
                        self._forget_tap(obj)
                    else:
                        raise
            now = self.clock()
            if now >= next_expire:
                if self.pipeline is not None:
                    self.counters["expired"] += self.pipeline.expire(now)
                next_expire = now + EXPIRE_EVERY

    # --- inputs --------------------------------------------------------------------------------
    def _on_batch(self, sock, _):
        for _ in range(64):
            try:
                data = sock.recv(ipc.SEQPACKET_MAX)
            except BlockingIOError:
                return
            if not data:
                self.sel.unregister(sock)
                self.running = False   # the dispatcher (or a relay) died: the supervisor restarts us all
                return
            self._process(rps_channel.decode(data))

    def _process(self, records):
        pipe = self.pipeline
        if pipe is None:
            self.counters["rx_unconfigured"] += len(records)
            return
        now = self.clock()
        c = self.counters
        c["packets"] += len(records)
        execute = self._execute
        for kind, tag, payload in records:
            c["bytes"] += len(payload)
            if kind == "tap":
                execute(pipe.from_vif(tag, payload, now))
            else:
                execute(pipe.from_fabric(tag, kind, payload, now))

    def _on_tap(self, fd, name):
        frames = tap.read_frames(fd)
        self._process([("tap", name, f) for f in frames])

    def _on_fabric(self, sock, encap):
        pkts = rps_kernel.receive(sock, encap, self.counters)
        self._process([(encap, src, payload) for src, _sport, payload in pkts])

    def _on_ctrl(self, sock, _):
        msg, fds = recv_ctrl(sock)
        if msg is None:
            self.running = False
            return
        t = msg.get("t")
        if t == "config":
            self._apply_config(msg["config"])
        elif t == "vif":
            self._forget_tap(msg["name"])
            self.taps[msg["name"]] = fds
            if msg.get("read"):      # kernel mode: this worker reads its own queue
                self.sel.register(fds[0], selectors.EVENT_READ, ("tap", msg["name"]))
        elif t == "vif_gone":
            self._forget_tap(msg["name"])
        elif t == "agent":
            self._drop_agent("replaced")
            self.agent = socket.socket(fileno=fds[0])
            self.agent.setblocking(False)
            self.sel.register(self.agent, selectors.EVENT_READ, ("agent", None))
        elif t == "query":
            self.ctrl.send(ipc.pack({"t": "reply", "id": msg.get("id"), "result": self._answer(msg["op"])}))
        else:
            log.warning("worker %d: ignoring control message %r", self.cpu, t)

    # --- actions -------------------------------------------------------------------------------
    def _execute(self, actions):
        for a in actions:
            t = type(a)
            if t is ToTunnel:
                self.sender.send(a.peer, a.encap, a.sport, a.payload)
            elif t is ToVif:
                fds = self.taps.get(a.vif)
                if fds and tap.write_frame(fds[0], a.frame):
                    self.counters["vif_tx_packets"] += 1
                else:
                    self.counters["vif_tx_errors"] += 1
            elif t is Punt:
                self._punt(a.request)
            # Drop: nothing to do, the pipeline counted it (dropstats)

    # Frames here carry no virtio header: packets released by a decision go out as they came.
    _execute_released = _execute

    def _close_agent(self, conn, why):
        self._drop_agent(why)

    # --- state ---------------------------------------------------------------------------------
    def _apply_config(self, config_dict):
        from vrouter.config import ConfigError, VrouterConfig
        from vrouter.pipeline import Pipeline
        try:
            config = VrouterConfig.from_dict(config_dict)
        except ConfigError as exc:
            log.error("worker %d: rejected config: %s", self.cpu, exc)
            return
        if self.sender is None or self.sender.local_ip != config.underlay_ip:
            if self.sender is not None:
                self.sender.close()
            self.sender = rps_kernel.Sender(config.underlay_ip)
            if self.kernel:
                for s in self.rx:
                    self.sel.unregister(s)
                    s.close()
                # Only one process may read raw GRE (each raw socket gets a copy): the first worker.
                self.rx = rps_kernel.open_rx(reuseport=True, gre=self.first)
                for s, encap in self.rx.items():
                    self.sel.register(s, selectors.EVENT_READ, ("fabric", encap))
        if self.pipeline is None:
            self.pipeline = Pipeline(config)
        else:
            self.pipeline.apply_config(config)
        self.config = config

    def _forget_tap(self, name):
        for fd in self.taps.pop(name, []):
            try:
                self.sel.unregister(fd)
            except (KeyError, ValueError):
                pass
            os.close(fd)

    def _drop_agent(self, why):
        if self.agent is None:
            return
        try:
            self.sel.unregister(self.agent)
        except (KeyError, ValueError):
            pass
        self.agent.close()
        self.agent = None
        log.warning("worker %d: agent channel closed (%s)", self.cpu, why)

    def _answer(self, op):
        if op == "flows":
            return self.pipeline.flows(self.clock()) if self.pipeline else []
        if op == "dropstats":
            return self.pipeline.drop_stats() if self.pipeline else {}
        if op == "reset":
            if self.config is not None:
                from vrouter.pipeline import Pipeline
                self.pipeline = Pipeline(self.config)
            self.counters.clear()
            self.slowpath_rtt_us.clear()
            self.agent_stats = {}
            return True
        if op == "stats":
            tunnels = dict(self.sender.counters) if self.sender else {}
            for k in ("rx_mplsoudp", "rx_vxlan", "rx_mplsogre", "rx_icmp_errors", "rx_runts"):
                if k in self.counters:
                    tunnels[k] = self.counters[k]
            return {"cpu": self.cpu, "pid": os.getpid(), "counters": dict(self.counters),
                    "pipeline": self.pipeline.stats() if self.pipeline else {}, "tunnels": tunnels,
                    "agent": dict(self.agent_stats), "agent_connected": self.agent is not None,
                    "rtts": list(self.slowpath_rtt_us)}
        return None


def run_worker(cpu: int, ctrl, inputs, kernel: bool, first: bool) -> int:
    rps_kernel.pin(cpu)
    Worker(cpu, ctrl, inputs, kernel, first).run()
    return 0
