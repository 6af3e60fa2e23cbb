"""One worker process of a multi-core vrouter: a shard of the flow table on one pinned CPU.

Forked by `vrouter.processes.dispatcher` (one per worker CPU). It holds its own `Datapath`, whose flow
table holds exactly the flows the steering hash gives this worker, and executes the actions itself: tunnel
sends from its own sockets (`rps_kernel.Sender`), TAP writes on the fds the dispatcher passed it,
punts on its own channel to the server's one agent, which answers on the same channel, so the
proactive reverse entry lands on the worker that punted: the one the reply is steered to.

The per-packet path is the single forwarder's (the same `Datapath` class), offloads included
(docs/vrouter.md, "The offload path"): TAP frames carry their virtio_net_hdr, a TSO super-frame is
cut by `vrouter.core.gso` and sent with one UDP GSO send, tunnel reads (coalesced by UDP_GRO) are
merged by `vrouter.core.gro.Gro`, flushed at the end of each batch, and written to the VM as one
super-packet.

Inputs: packet batches from the dispatcher and relays (`rps_channel`), or in kernel mode its own
SO_REUSEPORT tunnel sockets and TAP queues; control messages from the dispatcher (config, TAP fds,
agent channel, introspection queries), answered on the control channel and nowhere else.
"""
from __future__ import annotations

import collections
import itertools
import logging
import os
import selectors
import socket
import time

from vrouter.core import rps_channel
from vrouter.core.config import ConfigError, VrouterConfig
from vrouter.core.offload import Offloads
from vrouter.io import ipc, rps_kernel, tap, tunnel
from vrouter.io.poller import Poller
from vrouter.processes.datapath import EXPIRE_EVERY, VNET_LEN, AgentLink, Datapath, VifPort
from vrouter.processes.launch import tune_gc

log = logging.getLogger("worker")
MAX_FDS = 64


def recv_ctrl(sock: socket.socket) -> tuple:
    data, fds, _flags, _addr = socket.recv_fds(sock, ipc.SEQPACKET_MAX, MAX_FDS)
    return (ipc.unpack(data) if data else None), fds


def _run_of(record) -> tuple:
    """Records of one run go through one call: fabric reads of one encapsulation, frames of one VIF."""
    kind = record[0]
    return kind, record[1] if kind == "tap" else None


class Worker:
    """One shard: its `Datapath` (pipeline, offloads, the TAP fds it writes, its tunnel sender and
    its own agent channel), fed by the dispatcher's batches or, in kernel mode, by its own sockets."""

    def __init__(self, cpu: int, ctrl: socket.socket, inputs: list, kernel: bool, first: bool,
                 clock=time.monotonic, gro: bool = True, gso: bool = True):
        self.cpu, self.ctrl, self.kernel, self.first, self.clock = cpu, ctrl, kernel, first, clock
        self.sel = Poller()     # epoll without selectors' per-event cost (vrouter/io/poller.py)
        self.counters: collections.Counter = collections.Counter()
        self.agent = AgentLink(self.counters, lambda _sock, why: self._drop_agent(why), self._agent_interest)
        self.datapath = Datapath(self.agent, Offloads(gro, gso), clock=clock)
        self.rx: dict = {}                     # kernel mode: own receive sockets -> encap
        self.running = True
        self.sel.register(ctrl, selectors.EVENT_READ, ("ctrl", None))
        for s in inputs:
            s.setblocking(False)
            self.sel.register(s, selectors.EVENT_READ, ("batch", None))

    def run(self):
        next_expire = self.clock() + EXPIRE_EVERY
        busy = False
        while self.running:
            timeout = 0.0 if busy else max(0.0, next_expire - self.clock())
            wait = self.datapath.punt_wait()    # a rate-capped setup queue drains without new input
            busy = self.poll(timeout if wait is None else min(timeout, wait))
            if wait is not None:
                self.datapath.flush_punts()
            now = self.clock()
            if now >= next_expire:
                self.datapath.expire(now)
                next_expire = now + EXPIRE_EVERY

    def poll(self, timeout: float) -> bool:
        """One loop round (as the forwarder's: every ready input once, within its weight, then up
        to DECISION_WEIGHT decisions); True if decisions are left for the next round."""
        for key, _ in self.sel.select(timeout):
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
        return self.datapath.service()

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
        """A batch from the dispatcher or a relay: ``rps_channel`` records."""
        for (kind, name), run in itertools.groupby(records, _run_of):
            if kind == "tap":
                self._tap_run(name, [r[2] for r in run])
            else:
                self._fabric_run([(r[1], kind, r[2], r[3]) for r in run])

    def _on_tap(self, fd, name):
        self._tap_run(name, tap.read_frames(fd, tap.VIF_WEIGHT))     # kernel mode: this worker's queue

    def _on_fabric(self, sock, encap):
        # kernel mode: this worker's SO_REUSEPORT socket
        self._fabric_run(tunnel.read_gro(sock, encap, self.datapath.sender.counters))

    def _agent_interest(self, on: bool) -> None:
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if on else 0)
        self.sel.modify(self.agent.sock, events, ("agent", None))

    def _on_agent(self, conn, _):
        """As the forwarder's: a blocked send goes out once writable; decisions wait for `service`."""
        if self.agent.writing:
            if self.agent.drain():
                self.datapath.flush_punts()
            if self.agent.sock is None:
                return
        msgs = self.agent.receive()
        if msgs is None:
            self._drop_agent("EOF")
            return
        for msg in msgs:
            log.warning("worker %d: ignoring agent message %r", self.cpu, msg.get("t"))

    def _tap_run(self, name, frames):
        c = self.counters
        if self.datapath.pipeline is None:
            c["rx_unconfigured"] += len(frames)
            return
        c["packets"] += len(frames)
        c["bytes"] += sum(map(len, frames)) - VNET_LEN * len(frames)    # frames, not their virtio headers
        self.datapath.from_tap(name, frames)

    def _fabric_run(self, reads):
        c = self.counters
        if self.datapath.pipeline is None:
            c["rx_unconfigured"] += len(reads)
            return
        if reads:
            c["packets"] += sum(-(-len(data) // seg) if seg else 1 for _src, _encap, data, seg in reads)
            c["bytes"] += sum(len(r[2]) for r in reads)
            self.datapath.from_reads(reads)

    def _on_ctrl(self, sock, _):
        msg, fds = recv_ctrl(sock)
        if msg is None:
            self.running = False
            return
        t = msg.get("t")
        if t == "config":
            if msg.get("rundir"):       # this shard's flow records file (vrouter/io/flowlog.py)
                self.datapath.flowlog.place(msg["rundir"], msg["server"], self.cpu)
            self._apply_config(msg["config"])
        elif t == "vif":
            self._forget_tap(msg["name"])
            self.datapath.vifs[msg["name"]] = VifPort(None, fds, None)
            if msg.get("read"):      # kernel mode: this worker reads its own queue
                self.sel.register(fds[0], selectors.EVENT_READ, ("tap", msg["name"]))
        elif t == "vif_gone":
            self._forget_tap(msg["name"])
        elif t == "agent":
            self._drop_agent("replaced")
            sock = socket.socket(fileno=fds[0])
            sock.setblocking(False)
            self.agent.attach(sock)
            self.sel.register(sock, selectors.EVENT_READ, ("agent", None))
        elif t == "query":
            self.ctrl.send(ipc.pack({"t": "reply", "id": msg.get("id"), "result": self._answer(msg)}))
        else:
            log.warning("worker %d: ignoring control message %r", self.cpu, t)

    # --- state ---------------------------------------------------------------------------------
    def _apply_config(self, config_dict):
        """The dispatcher accepted this configuration already; the worker opens what it sends
        through (and, in kernel mode, reads) for the underlay address, then configures its shard."""
        try:
            config = VrouterConfig.from_dict(config_dict)
        except ConfigError as exc:
            log.error("worker %d: rejected config: %s", self.cpu, exc)
            return
        dp = self.datapath
        if dp.sender is None or dp.sender.local_ip != config.underlay_ip:
            if dp.sender is not None:
                dp.sender.close()
            dp.sender = rps_kernel.Sender(config.underlay_ip)
            if self.kernel:
                for s in self.rx:
                    self.sel.unregister(s)
                    s.close()
                # Only one process may read raw GRE (each raw socket gets a copy): the first worker.
                self.rx = rps_kernel.open_rx(reuseport=True, gre=self.first, gro=dp.offloads.gro_on)
                for s, encap in self.rx.items():
                    self.sel.register(s, selectors.EVENT_READ, ("fabric", encap))
        dp.configure(config)

    def set_offloads(self, gro=None, gso=None) -> dict:
        """The dispatcher's `set`: this worker's merging and GSO sends (the TAP offloads and the
        dispatcher's sockets are the dispatcher's), and UDP_GRO on its own sockets in kernel mode."""
        off = self.datapath.offloads
        if gro is not None:
            off.gro.enabled = bool(gro)
            tunnel.set_udp_gro(self.rx, off.gro_on)
        if gso is not None:
            off.gso_on = bool(gso)
        return {"gro": off.gro_on, "gso": off.gso_on}

    def _forget_tap(self, name):
        port = self.datapath.vifs.pop(name, None)
        for fd in port.queues if port else []:
            try:
                self.sel.unregister(fd)
            except (KeyError, ValueError):
                pass
            os.close(fd)

    def _drop_agent(self, why):
        sock = self.agent.sock
        if sock is None:
            return
        try:
            self.sel.unregister(sock)
        except (KeyError, ValueError):
            pass
        sock.close()
        self.agent.detach()
        log.warning("worker %d: agent channel closed (%s)", self.cpu, why)

    def _answer(self, msg):
        op = msg["op"]
        dp = self.datapath
        if op == "flows":
            return dp.flows()
        if op == "dropstats":
            return dp.drop_stats()
        if op == "set":
            return self.set_offloads(msg.get("gro"), msg.get("gso"))
        if op == "reset":
            dp.reset()
            return True
        if op == "vifs":
            return {name: dict(port.counters) for name, port in dp.vifs.items()}
        if op == "stats":
            return {"cpu": self.cpu, "pid": os.getpid(), **dp.stats()}
        if op == "pressure":
            return dp.pressure()
        if op == "records":
            if msg.get("flush"):
                dp.flowlog.drain(dp.pipeline, end=msg.get("end"))
            return dp.flowlog.stats(dp.pipeline)
        return None


def run_worker(cpu: int, ctrl, inputs, kernel: bool, first: bool, gro: bool = True, gso: bool = True) -> int:
    rps_kernel.pin(cpu)
    tune_gc()
    Worker(cpu, ctrl, inputs, kernel, first, gro=gro, gso=gso).run()
    return 0
