"""The forwarding process of one server's vrouter: the shell around the per-packet path.

    python -m vrouter.forwarder --rundir RUNDIR --server srv1 [--gro on|off] [--gso on|off] [--path-slots K]

Runs in the server's network namespace. One selector loop over: the VMs' TAPs, the fabric sockets,
the agent channel (punts out, decisions and config pushes in) and the introspection socket.
The forwarder never decides a new flow itself: that is the agent's job (the slow path), exactly the
round trip that proactive reverse entries save. It starts with no configuration and forwards nothing
until the agent pushes one; TAPs of VMs it already served are re-attached, not re-created.

`Forwarder` is the shell every vrouter process facing a server shares: listeners, the accepted
configuration, the VM interfaces (attach, MTU, re-attach) and the fabric receive sockets. What is
done with packets is its `engine`'s: `InProcess` runs the one `Datapath` here (the single
forwarder); `vrouter.processes.dispatcher.WorkerPool` steers them to worker processes. Offloads
(TAP vnet header + TSO, UDP_GRO reads, UDP_SEGMENT sends, the GRO/GSO switches): see
vrouter/core/offload.py and docs/vrouter.md. Path repair (`--path-slots`, vrouter/core/paths.py): the
loop runs a probe round whenever the engine says one is due.
"""
from __future__ import annotations

import collections
import logging
import os
import selectors
import socket
import sys
import time

from vrouter.core import schema
from vrouter.core.coalesce import BULK_FRAME, DEFER_US, Coalesce
from vrouter.core.config import ConfigError, VrouterConfig
from vrouter.core.offload import Offloads, vm_mtu
from vrouter.core.paths import SLOTS
from vrouter.core.priority import NORMAL, REALTIME, RT_PRIORITY, Priority
from vrouter.core.spin import SPIN_BUDGET, SPIN_US, Spin
from vrouter.core.warm import WARM_US, KeepWarm
from vrouter.io import ipc, tap, vm_interface
from vrouter.io.external import External
from vrouter.io.poller import Poller
from vrouter.io.tunnel import TunnelError, Tunnels, enable_gro
from vrouter.processes.datapath import EXPIRE_EVERY, AgentLink, VifPort
from vrouter.processes.inprocess import InProcess
from vrouter.processes.introspect import Introspector
from vrouter.processes.launch import (
    add_loop_arguments,
    add_switch_arguments,
    parser,
    serve,
    set_scheduler,
    setup_logging,
)

log = logging.getLogger("forwarder")
PENDING_RETRY = 0.5
PACKET_KINDS = frozenset(("tap", "fabric", "external"))    # the fds whose events are packets (keep-warm's input)
# A wait that slept this long found every queue empty: the packet that woke it is most likely alone
# (a ping, a request), and the reads that would drain its queue are left out (`Forwarder.from_idle`).
IDLE_WAKE = 200e-6


class Forwarder:
    def __init__(self, rundir: str, server: str, engine=InProcess, *, clock=time.monotonic,
                 gro: bool = True, gso: bool = True, path_slots: int = SLOTS, spin_us: float = SPIN_US,
                 spin_budget: float = SPIN_BUDGET, defer_us: float = DEFER_US, rt_priority: int = RT_PRIORITY,
                 warm_us: float = WARM_US):
        """`engine(shell)` makes what handles the packets (`InProcess`, or the dispatcher's
        `WorkerPool`), given this shell once its sockets, counters and offload switches exist.
        `path_slots`: path repair's K (0: off), for an engine that runs it (`InProcess`)."""
        self.rundir = rundir
        self.path_slots = path_slots
        self.server = server
        self.clock = clock
        self.sel = Poller()     # epoll without selectors' per-event cost (vrouter/io/poller.py)
        self.counters: collections.Counter = collections.Counter()
        self.started = clock()                   # `pressure` reports the uptime
        self.agent = AgentLink(self.counters, lambda conn, why: self._drop_conn(conn, "agent", why),
                               self._agent_interest)
        self.offloads = Offloads(gro, gso)
        self.config: VrouterConfig | None = None
        self.config_dict: dict | None = None     # as pushed, for `config` introspection
        self.generation = None
        self.tunnels: Tunnels | None = None
        self.external: External | None = None   # the NAT flows' TUN (a config with nat), vrouter/io/external.py
        self.underlay_ip: str | None = None      # whose fabric sockets are open and whose interface has GRO
        self.vifs: dict[str, VifPort] = {}
        self.pending: dict[str, str] = {}        # vif name -> why it is not attached yet
        self.running = True
        self.spin = Spin(spin_us, spin_budget)
        self.coalesce = Coalesce(defer_us)
        self.priority = Priority(rt_priority)    # real-time while idle (vrouter/core/priority.py)
        self.warm = KeepWarm(warm_us)            # short waits while flows are active (vrouter/core/warm.py)
        self._had_events = False                 # the last loop round had input (a spin may follow)
        self._woke = 0.0                         # when the last epoll wait returned
        self.from_idle = False                   # ... after sleeping IDLE_WAKE or more (no drain reads)
        self._control = 0.0                      # of this round: seconds answering introspection, taking configs
        self.engine = engine(self)
        self.introspector = Introspector(self)
        self._handlers = {kind: getattr(self, f"_on_{kind}")
                          for kind in ("agent_listen", "intro_listen", "agent", "intro", "tap", "fabric", "external")}
        self._listen()

    # --- sockets -------------------------------------------------------------------------------
    def _listen(self):
        self.agent_listener = ipc.listen(ipc.agent_socket(self.rundir, self.server), socket.SOCK_SEQPACKET)
        self.sel.register(self.agent_listener, selectors.EVENT_READ, ("agent_listen", None))
        self.intro_listener = ipc.listen(ipc.introspect_socket(self.rundir, self.server), socket.SOCK_STREAM)
        self.sel.register(self.intro_listener, selectors.EVENT_READ, ("intro_listen", None))

    def _open_tunnels(self, underlay_ip: str):
        """The fabric sockets of `underlay_ip` (receive sockets only where the engine reads them) and
        kernel GRO on its interface, once per address."""
        if self.underlay_ip == underlay_ip:
            return
        if self.tunnels:
            for s in self.tunnels.sockets():
                self.sel.unregister(s)
            self.tunnels.close()
            self.tunnels = None
        if self.engine.reads_fabric:
            self.tunnels = Tunnels(underlay_ip, gro=self.offloads.gro_on)
            for s in self.tunnels.sockets():
                self.sel.register(s, selectors.EVENT_READ, ("fabric", s))
        self.underlay_ip = underlay_ip
        problem = enable_gro(underlay_ip)
        if problem:
            log.warning("no kernel GRO on the underlay interface (%s): one read per tunnel packet", problem)

    # --- main loop -----------------------------------------------------------------------------
    def run(self):
        next_tick = next_retry = self.clock()
        busy = False
        self._schedule(self.priority.start(next_tick))
        while self.running:
            start = self.clock()
            # The timers (ageing tick, attach retry, the setup-rate bucket's next punt, path repair's
            # next probe round) are read once per round; the work they call for runs only in a round
            # that ends past the first of them. On the answering hop everything this loop does before
            # it sleeps again delays the answer (docs/vrouter.md "The scheduler's view").
            due = min(next_tick, next_retry)
            timeout = 0.0 if busy else max(0.0, due - start)
            if self.warm.enabled and not busy:
                timeout = self.warm.timeout(timeout, start)
            wait = self.engine.punt_wait()
            if wait is not None:
                timeout = min(timeout, wait)
                due = min(due, start + wait)
            probe = self.engine.probe_wait()
            if probe is not None:
                timeout = min(timeout, probe)
                due = min(due, start + probe)
            if self._had_events and self.spin.enabled:
                busy = self._spin_then_poll(timeout)
            else:
                busy = self.poll(timeout)
            now = self.clock()
            if self.priority.enabled and \
                    (mode := self.priority.round(now, now - self._woke - self._control)) is not None:
                self._schedule(mode)
            self._control = 0.0
            if now >= due:
                if wait is not None:
                    self.engine.flush_punts()
                if probe is not None and self.engine.probe_wait() == 0.0:
                    self.engine.probe()
                if now >= next_tick:
                    self.running = self.engine.tick(now) and self.running
                    next_tick = now + EXPIRE_EVERY
                if now >= next_retry:
                    if self.pending and self.config is not None:
                        self._attach_pending()
                    next_retry = now + PENDING_RETRY
            if self.engine.bulk:        # sleep after a bulk round so the next read finds more
                self.engine.bulk = False
                if self.coalesce.enabled and (delay := self.coalesce.after_round(True, busy, now)):
                    start = self.clock()
                    time.sleep(delay)
                    self.coalesce.woke(delay, self.clock() - start, start)
        self.close()

    def poll(self, timeout: float) -> bool:
        """One loop round: every ready fd once, each TAP for at most tap.VIF_WEIGHT frames and each
        fabric socket for at most 64 reads (a VM that floods gets its weight per round like every
        other VM; epoll hands back a socket still ready at the end of its list, so the order
        rotates), then up to DECISION_WEIGHT decisions. True if work was left for the next round."""
        waited = self.clock()
        events = self.sel.select(timeout)
        self._woke = self.clock()
        self.from_idle = self._woke - waited >= IDLE_WAKE
        self._had_events = bool(events)
        if self.engine.stamping:
            self.engine.datapath.woke_ns = time.time_ns()
        handlers = self._handlers
        for key, _ in events:
            kind, obj = key.data
            try:
                handlers[kind](key.fileobj, obj)
            except (ConnectionError, OSError) as exc:
                if kind in ("agent", "intro"):
                    self._drop_conn(key.fileobj, kind, exc)
                elif kind == "tap":
                    self._lost_vif(obj, exc)
                else:
                    raise
        if self.warm.enabled and any(key.data[0] in PACKET_KINDS for key, _ in events):
            self.warm.last_input = self._woke       # once per round, and only with keep-warm on
        return self.engine.service()

    def _spin_then_poll(self, timeout: float) -> bool:
        """The bounded adaptive spin (vrouter/core/spin.py): poll without blocking until input comes
        or the spin window ends, then, if none came, wait as `poll` would for what is left."""
        start = self.clock()
        until = self.spin.deadline(start)
        if until is None or timeout == 0.0:
            return self.poll(timeout)
        while True:
            busy = self.poll(0.0)
            now = self.clock()
            if self._had_events or busy or now >= until:
                break
        self.spin.spent(now - start, self._had_events)
        if self._had_events or busy:
            return busy
        return self.poll(max(0.0, timeout - (now - start)))

    def close(self):
        self.engine.close()
        for port in self.vifs.values():
            for fd in port.queues:
                os.close(fd)  # the TAPs stay (persistent): a restarted forwarder re-attaches
        self.vifs.clear()
        if self.tunnels:
            self.tunnels.close()
        if self.external is not None:
            self.external.close()
        for path in (ipc.agent_socket(self.rundir, self.server), ipc.introspect_socket(self.rundir, self.server)):
            path.unlink(missing_ok=True)

    def _drop_conn(self, conn, kind, exc=None):
        try:
            self.sel.unregister(conn)
        except (KeyError, ValueError):
            pass  # already dropped by an earlier error on the same connection
        conn.close()
        if kind == "agent" and conn is self.agent.sock:
            self.agent.detach()
            log.warning("agent disconnected (%s); new flows are held until it returns", exc or "EOF")

    # --- event handlers ------------------------------------------------------------------------
    def _on_agent_listen(self, listener, _):
        conn, _ = listener.accept()
        ipc.tune_seqpacket(conn)
        conn.setblocking(False)
        if self.agent.sock is not None:
            self._drop_conn(self.agent.sock, "agent", "replaced by a new connection")
        self.agent.attach(conn)
        self.sel.register(conn, selectors.EVENT_READ, ("agent", None))
        self.engine.agent_connected(conn)
        log.info("agent connected")

    def _agent_interest(self, on: bool) -> None:
        """The agent channel is full (watch for writability) or has room again (stop watching)."""
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if on else 0)
        self.sel.modify(self.agent.sock, events, ("agent", None))

    def _on_agent(self, conn, _):
        """Readable or, after a send that would block, writable: what waits goes out (and then the
        punts the core holds), and what came in is read (decisions are installed by `service`)."""
        if self.agent.writing:
            if self.agent.drain():
                self.engine.flush_punts()
            if self.agent.sock is None:
                return
        msgs = self.agent.receive()
        if msgs is None:
            self._drop_conn(conn, "agent", "EOF")
            return
        for msg in msgs:
            kind = msg.get("t")
            if kind == "config":
                start = self.clock()
                self.apply_config(msg["generation"], msg["config"])
                self._control += self.clock() - start       # not load either (see _on_intro)
            else:
                log.warning("ignoring agent message of unknown type %r", kind)

    def _on_intro_listen(self, listener, _):
        conn, _ = listener.accept()
        conn.setblocking(False)
        self.sel.register(conn, selectors.EVENT_READ, ("intro", ipc.msgpack.Unpacker(raw=False)))

    def _on_intro(self, conn, unpacker):
        start = self.clock()
        try:
            self._answer_intro(conn, unpacker)
        finally:
            # Not load: a `stats` answer takes milliseconds, and an experiment that reads counters
            # between exchanges would otherwise keep the loop off real-time priority (core/priority.py).
            self._control += self.clock() - start

    def _answer_intro(self, conn, unpacker):
        data = conn.recv(65536)
        if not data:
            self._drop_conn(conn, "intro")
            return
        unpacker.feed(data)
        for req in unpacker:
            reply = self.introspector.handle(req)
            conn.setblocking(True)  # replies are written whole; a CLI reader is quick
            conn.settimeout(5.0)
            conn.sendall(ipc.pack(reply))
            conn.setblocking(False)

    def _on_tap(self, fd, name) -> bool:
        """Forward what the VM sent; True if a frame was read."""
        if name in self.vifs:
            # The first frame is forwarded before the reads that drain the queue: a ping (one frame
            # per wake-up) does not wait for the read that finds the queue empty. Measured here by
            # the latency stamps: that read and the batch around it were 50-90 us of a hop after 20 ms
            # of sleep (vrouter/core/latency.py, docs/vrouter.md "Latency").
            first = tap.read_frames(fd, 1)
            if first:
                bulk = len(first[0]) > BULK_FRAME
                self.engine.bulk |= bulk
                self.engine.on_tap(name, first)
                # After an idle wait a small frame is most likely alone: the drain would find the queue
                # empty, and on the answering hop that read runs while the answer waits in OVS
                # (docs/vrouter.md "The scheduler's view"). Epoll is level-triggered, so what is
                # left is reported in the next round.
                if bulk or not self.from_idle:
                    rest = tap.read_frames(fd, tap.VIF_WEIGHT - 1)
                    if rest:
                        self.engine.on_tap(name, rest)
                return True
        return False

    def read_answer(self, name: str) -> bool:
        """Read a VM's TAP straight after a lone packet was written to it: the VM's kernel runs in the
        write, so an echo reply or a SYN-ACK is queued when it returns, and goes out now rather than
        after another epoll round (36-47 us after 20 ms idle, docs/vrouter.md "Latency"). If nothing
        came, one read found the queue empty; the TAP stays in the epoll set for a later answer.
        True if a frame was read (the engine counts it)."""
        port = self.vifs.get(name)
        if port is None:
            return False
        try:
            return self._on_tap(port.fd, name)
        except OSError as exc:
            self._lost_vif(name, exc)
            return False

    def _on_fabric(self, sock, _):
        self.engine.on_fabric(self.tunnels, sock)

    def _open_external(self, config: VrouterConfig) -> None:
        """The external port of a config with NAT (once; the single-process engine only: a worker
        shard could not keep a SNAT port's reply on the worker that holds its flow)."""
        if config.nat is None or self.external is not None:
            return
        if not hasattr(self.engine, "on_external"):
            raise tap.TapError("NAT (floating IPs, source NAT) needs the single-process forwarder")
        self.external = External(schema.prefix_text(config.nat.floating))
        self.sel.register(self.external.fd, selectors.EVENT_READ, ("external", None))

    def _on_external(self, fd, _):
        self.engine.on_external(self.external.read())

    # --- run-time switches ---------------------------------------------------------------------
    def set_warm(self, warm_us: float) -> dict:
        """The keep-warm interval at run time (vrouter/core/warm.py; 0: off), same activity window."""
        self.warm = KeepWarm(warm_us, self.warm.active)
        return self.warm.stats()

    def set_spin(self, spin_us: float) -> dict:
        """The spin window at run time (vrouter/core/spin.py), same budget."""
        self.spin = Spin(spin_us, self.spin.budget)
        return self.spin.stats()

    def _schedule(self, mode: str | None) -> None:
        """Carry out Priority's answer: SCHED_FIFO at its priority, or the normal scheduler. A refusal
        (no CAP_SYS_NICE, or a cgroup without real-time time) leaves the loop normal, said in `stats`."""
        if mode is None:
            return
        try:
            set_scheduler(self.priority.rt_priority if mode == REALTIME else 0)
        except OSError as exc:
            why = f"SCHED_FIFO refused: {exc.strerror or exc}"
            log.warning("%s; the loop keeps the normal scheduler", why)
            self.priority.failed(why)

    def set_priority(self, rt_priority: int) -> dict:
        """The real-time priority of the idle loop at run time (0: normal scheduling always)."""
        old = self.priority
        self.priority = Priority(rt_priority, old.window, old.busy_limit, old.calm)
        self._schedule(self.priority.start(self.clock()) or NORMAL)
        return self.priority.stats()

    def set_offloads(self, gro=None, gso=None) -> dict:
        """Flip the GRO and/or GSO switch at run time (see vrouter/core/offload.py); returns both."""
        off = self.offloads
        if gro is not None:
            off.gro.enabled = bool(gro)
            if self.tunnels:
                self.tunnels.set_gro(off.gro_on)
        if gso is not None:
            off.gso_on = bool(gso)
            for port in self.vifs.values():
                tap.set_offloads(port.fd, off.gso_on)
        self.engine.set_offloads(gro, gso)
        return {"gro": off.gro_on, "gso": off.gso_on}

    def reset(self):
        """Empty flow tables, zeroed counters (the engine's shards and this shell's own)."""
        self.engine.reset()
        self.counters.clear()
        self.agent.reset()
        if self.tunnels:
            self.tunnels.counters.clear()

    def request_agent_reset(self):
        self.agent.send_message({"t": "reset"})
        self.agent.agent_stats = {}

    # --- configuration -------------------------------------------------------------------------
    def _accept_config(self, generation, config_dict) -> VrouterConfig | None:
        """The pushed configuration, parsed and with the fabric sockets open for it; None (logged and
        counted) if it is rejected."""
        try:
            config = VrouterConfig.from_dict(config_dict)
            if config.server != self.server:
                raise ConfigError(f"config for server {config.server} (this is {self.server})")
            self._open_tunnels(config.underlay_ip)
            self._open_external(config)
        except (ConfigError, TunnelError, tap.TapError) as exc:
            log.error("rejected config generation %s: %s", generation, exc)
            self.counters["config_rejected"] += 1
            return None
        return config

    def apply_config(self, generation, config_dict):
        config = self._accept_config(generation, config_dict)
        if config is None:
            return
        mtu = vm_mtu(config)
        moved = mtu != self.offloads.mtu
        self.engine.configure(generation, config, config_dict, self.tunnels)
        self.config, self.config_dict, self.generation = config, config_dict, generation
        self.offloads.mtu = mtu
        if moved:
            self._set_vif_mtus(mtu)
        self._reconcile_vifs()
        log.info("config generation %s applied: %d vifs, %d routes, mode %s", generation,
                 len(config.vifs), len(config.routes), config.flow.mode)

    def _set_vif_mtus(self, mtu: int):
        """An encapsulation change moved the VM MTU: attached VMs follow (new ones get it at attach)."""
        for name, port in self.vifs.items():
            try:
                vm_interface.set_mtu(name, port.netns, mtu)
            except (tap.TapError, vm_interface.VmSetupError) as exc:
                log.error("vif %s: MTU %d not set: %s", name, mtu, exc)

    # --- VM interfaces -------------------------------------------------------------------------
    def _reconcile_vifs(self):
        wanted = {v.name: v for v in self.config.vifs}
        for name in list(self.vifs):
            if name not in wanted:
                self._remove_vif(name, destroy=True)
        for name in list(self.pending):
            if name not in wanted:
                del self.pending[name]
        for name, spec in wanted.items():
            if name in self.vifs:
                self._sync_services(self.vifs[name], self.vifs[name].spec, spec)
                self.vifs[name].spec = spec
            else:
                self.pending[name] = "waiting for the VM's namespace"
        self._attach_pending()

    def _sync_services(self, port, old, spec):
        error = vm_interface.sync_services(old, spec, port.netns)     # a member VM's addresses (core/ecmp.py)
        if error:
            log.error("%s", error)

    def _attach_pending(self):
        try:
            namespaces = ipc.read_vm_namespaces(self.rundir)
        except ipc.IpcError as exc:
            log.error("%s", exc)
            return
        specs = {v.name: v for v in self.config.vifs}
        for name in list(self.pending):
            entry = namespaces.get(name)
            if entry is None:
                continue
            spec = specs[name]
            network = next(n for n in self.config.networks if n.name == spec.network)
            try:
                fds = vm_interface.attach(spec, entry["netns"], network, self.offloads.mtu,
                                          queues=self.engine.tap_queues, offloads=self.offloads.gso_on)
            except (tap.TapError, vm_interface.VmSetupError) as exc:
                self.pending[name] = str(exc)
                log.error("vif %s: %s", name, exc)
                continue
            del self.pending[name]
            port = self.vifs[name] = VifPort(spec, fds, entry["netns"])
            self._sync_services(port, None, spec)
            if self.engine.reads_taps:
                self.sel.register(port.fd, selectors.EVENT_READ, ("tap", name))
            self.engine.vif_up(name, port, entry)

    def _lost_vif(self, name, exc):
        """The VM's namespace went away under us (its host was stopped): wait for it to come back."""
        if name in self.vifs:
            self._remove_vif(name)
            self.pending[name] = f"interface lost: {exc.strerror or exc}"
            log.warning("vif %s lost (%s); waiting for the VM's namespace", name, exc)

    def _remove_vif(self, name, destroy=False):
        port = self.vifs.pop(name)
        self.engine.vif_down(name, port)
        if self.engine.reads_taps:
            self.sel.unregister(port.fd)
        for fd in port.queues[1:]:
            os.close(fd)
        if destroy:
            tap.destroy_tap(port.fd)
            log.info("vif %s removed", name)
        else:
            os.close(port.fd)


def main(argv=None):
    p = parser("python -m vrouter.forwarder", __doc__)
    add_switch_arguments(p)
    add_loop_arguments(p)
    args = p.parse_args(argv)
    setup_logging(args, "forwarder")
    try:
        fwd = Forwarder(args.rundir, args.server, gro=args.gro, gso=args.gso, path_slots=args.path_slots,
                        spin_us=args.spin_us, defer_us=args.defer_us, rt_priority=args.rt_priority,
                        warm_us=args.warm_us)
    except (ipc.IpcError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    log.info("listening on %s", ipc.agent_socket(args.rundir, args.server))
    serve(fwd)
    return 0


if __name__ == "__main__":
    sys.exit(main())
