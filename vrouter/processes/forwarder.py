"""The forwarding process of one server's vrouter: the shell around `vrouter.core.pipeline.Pipeline`.

    python -m vrouter.processes.forwarder --rundir RUNDIR --server srv1 [--gro on|off] [--gso on|off]

Runs in the server's network namespace. One selector loop over: the VMs' TAPs, the fabric sockets,
the agent channel (punts out, decisions and config pushes in) and the introspection socket.
The forwarder never decides a new flow itself: that is the agent's job (the slow path), exactly the
round trip that proactive reverse entries save. It starts with no configuration and forwards nothing
until the agent pushes one; TAPs of VMs it already served are re-attached, not re-created.
Offloads (TAP vnet header + TSO, UDP_GRO reads, UDP_SEGMENT sends, the GRO/GSO switches): see
vrouter/offload.py and docs/vrouter.md.
"""
from __future__ import annotations

import argparse
import collections
import logging
import os
import selectors
import socket
import sys
import time

from vrouter.io import ipc
from vrouter.io import tap
from vrouter.io import vm_interface
from vrouter.core.actions import Punt, ToTunnel, ToVif
from vrouter.core.codec import virtio
from vrouter.core.config import ConfigError, VrouterConfig
from vrouter.core.gro import vnet_for_frame
from vrouter.io.introspect import Introspector
from vrouter.core.offload import Offloads, vm_mtu
from vrouter.processes.launch import add_switch_arguments, serve
from vrouter.io.tunnel import Tunnels, TunnelError, enable_gro

log = logging.getLogger("forwarder")
EXPIRE_EVERY = 1.0
PENDING_RETRY = 0.5
PLAIN = virtio.PLAIN
VNET_LEN = virtio.HDR_LEN


class VifPort:
    """A VM interface: its TAP fds and packet counters (the `vif --list` columns). `queues`: every fd
    held for the device (several for a multi-queue TAP, vrouter/vm_interface.py); `fd`: the first,
    the one this process reads and writes."""

    def __init__(self, spec, queues: list, netns):
        self.spec = spec
        self.queues = queues
        self.fd = queues[0]
        self.netns = netns
        self.counters = collections.Counter()


class AgentChannel:
    """The forwarding side of the slow path, shared by the forwarder and the multi-core workers:
    punts go to the agent numbered, and the decision that comes back with the same number gives
    the slow-path round trip (punt sent -> decision installed).

    Its state is set here; `pipeline`, `clock`, `_close_agent` and `_execute_released` are the host's."""

    def __init__(self):
        self.agent: socket.socket | None = None     # the channel, or None
        self.agent_stats: dict = {}
        self.counters = collections.Counter()
        self.punt_seq = 0
        # Slow-path round trip (punt sent -> decision installed) of recent flows: the cost a
        # proactive reverse entry saves on the reply path, measured where it is paid.
        self.punt_sent: dict[int, float] = {}
        self.slowpath_rtt_us: collections.deque = collections.deque(maxlen=4096)

    def _on_agent(self, conn, _):
        for _ in range(64):
            try:
                data = conn.recv(ipc.SEQPACKET_MAX)
            except BlockingIOError:
                return
            if not data:
                self._close_agent(conn, "EOF")
                return
            self._on_agent_message(ipc.unpack(data))

    def _on_agent_message(self, msg):
        if msg.get("t") == "decision":
            self._install_decision(msg)

    def _install_decision(self, msg):
        self.agent_stats = msg.get("agent", self.agent_stats)
        if self.pipeline is not None:
            self.counters["decisions"] += 1
            self._execute_released(self.pipeline.install(msg["decision"], self.clock()))
            sent = self.punt_sent.pop(msg.get("id"), None)
            if sent is not None:
                self.slowpath_rtt_us.append((time.perf_counter() - sent) * 1e6)

    def _punt(self, request):
        self.counters["punts"] += 1
        if self.agent is None:
            self.counters["punts_no_agent"] += 1  # the held entry times out (hold_timeout) in the core
            return
        self.punt_seq += 1
        if len(self.punt_sent) > 8192:  # decisions that never came (agent restarted): forget them
            self.punt_sent.clear()
        self.punt_sent[self.punt_seq] = time.perf_counter()
        try:
            self.agent.send(ipc.pack({"t": "punt", "id": self.punt_seq, "request": request}))
        except BlockingIOError:
            self.counters["punts_agent_busy"] += 1
        except OSError as exc:
            self._close_agent(self.agent, exc)


class Forwarder(AgentChannel):
    tap_queues = 1      # fds per VM TAP (the multi-core vrouter's kernel mode: one per worker)

    def __init__(self, rundir: str, server: str, *, clock=time.monotonic, gro: bool = True, gso: bool = True):
        self.rundir = rundir
        self.server = server
        self.clock = clock
        self.sel = selectors.DefaultSelector()
        self.pipeline = None
        self.config = None          # VrouterConfig
        self.config_dict = None     # as pushed, for `config` introspection
        self.generation = None
        self.tunnels: Tunnels | None = None
        self.underlay_ip = None     # whose fabric sockets are open and whose interface has GRO
        self.vifs: dict[str, VifPort] = {}
        self.pending: dict[str, str] = {}   # vif name -> why it is not attached yet
        super().__init__()
        self.recent_punts: collections.deque = collections.deque(maxlen=256)  # (wall time, request)
        self.offloads = Offloads(gro, gso)
        self.running = True
        self.introspector = Introspector(self)
        self._listen()

    # --- sockets -------------------------------------------------------------------------------
    def _listen(self):
        self.agent_listener = ipc.listen(ipc.agent_socket(self.rundir, self.server), socket.SOCK_SEQPACKET)
        self.sel.register(self.agent_listener, selectors.EVENT_READ, ("agent_listen", None))
        self.intro_listener = ipc.listen(ipc.introspect_socket(self.rundir, self.server), socket.SOCK_STREAM)
        self.sel.register(self.intro_listener, selectors.EVENT_READ, ("intro_listen", None))

    def _open_tunnels(self, underlay_ip: str):
        """The fabric receive sockets of `underlay_ip` and kernel GRO on its interface, once per address."""
        if self.underlay_ip == underlay_ip:
            return
        self._open_rx(underlay_ip)
        self.underlay_ip = underlay_ip
        problem = enable_gro(underlay_ip)
        if problem:
            log.warning("no kernel GRO on the underlay interface (%s): one read per tunnel packet", problem)

    def _open_rx(self, underlay_ip: str):
        if self.tunnels:
            for s in self.tunnels.sockets():
                self.sel.unregister(s)
            self.tunnels.close()
        self.tunnels = Tunnels(underlay_ip, gro=self.offloads.gro_on)
        for s in self.tunnels.sockets():
            self.sel.register(s, selectors.EVENT_READ, ("fabric", s))

    # --- main loop -----------------------------------------------------------------------------
    def run(self):
        next_tick = next_retry = self.clock()
        while self.running:
            timeout = max(0.0, min(next_tick, next_retry) - self.clock())
            for key, _ in self.sel.select(timeout):
                kind, obj = key.data
                try:
                    getattr(self, f"_on_{kind}")(key.fileobj, obj)
                except (ConnectionError, OSError) as exc:
                    if kind in ("agent", "intro"):
                        self._drop_conn(key.fileobj, kind, exc)
                    elif kind == "tap":
                        self._lost_vif(obj, exc)
                    else:
                        raise
            now = self.clock()
            if now >= next_tick:
                self._tick(now)
                next_tick = now + EXPIRE_EVERY
            if now >= next_retry:
                if self.pending and self.config is not None:
                    self._attach_pending()
                next_retry = now + PENDING_RETRY
        self.close()

    def _tick(self, now):
        if self.pipeline is not None:
            self.counters["expired"] += self.pipeline.expire(now)

    def close(self):
        for port in self.vifs.values():
            for fd in port.queues:
                os.close(fd)  # the TAPs stay (persistent): a restarted forwarder re-attaches
        self.vifs.clear()
        if self.tunnels:
            self.tunnels.close()
        self._unlink_sockets()

    def _unlink_sockets(self):
        for path in (ipc.agent_socket(self.rundir, self.server), ipc.introspect_socket(self.rundir, self.server)):
            try:
                path.unlink()
            except FileNotFoundError:
                pass

    def _drop_conn(self, conn, kind, exc=None):
        try:
            self.sel.unregister(conn)
        except (KeyError, ValueError):
            pass  # already dropped by an earlier error on the same connection
        conn.close()
        if kind == "agent" and conn is self.agent:
            self.agent = None
            log.warning("agent disconnected (%s); new flows are held until it returns", exc or "EOF")

    # --- event handlers ------------------------------------------------------------------------
    def _on_agent_listen(self, listener, _):
        conn, _ = listener.accept()
        ipc.tune_seqpacket(conn)
        conn.setblocking(False)
        if self.agent is not None:
            self._drop_conn(self.agent, "agent", "replaced by a new connection")
        self.agent = conn
        self.sel.register(conn, selectors.EVENT_READ, ("agent", None))
        log.info("agent connected")

    def _on_intro_listen(self, listener, _):
        conn, _ = listener.accept()
        conn.setblocking(False)
        self.sel.register(conn, selectors.EVENT_READ, ("intro", ipc.msgpack.Unpacker(raw=False)))

    def _on_intro(self, conn, unpacker):
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

    def _close_agent(self, conn, why):
        self._drop_conn(conn, "agent", why)

    def _on_agent_message(self, msg):
        kind = msg.get("t")
        if kind == "decision":
            self._install_decision(msg)
        elif kind == "config":
            self.apply_config(msg["generation"], msg["config"])
        elif kind == "agent_stats":
            self.agent_stats = msg["agent"]
        else:
            log.warning("ignoring agent message of unknown type %r", kind)

    def _lost_vif(self, name, exc):
        """The VM's namespace went away under us (its host was stopped): wait for it to come back."""
        if name in self.vifs:
            self._remove_vif(name)
            self.pending[name] = f"interface lost: {exc.strerror or exc}"
            log.warning("vif %s lost (%s); waiting for the VM's namespace", name, exc)

    def _remove_vif(self, name, destroy=False):
        port = self.vifs.pop(name)
        self._unserve_vif(name, port)
        for fd in port.queues[1:]:
            os.close(fd)
        if destroy:
            tap.destroy_tap(port.fd)
            log.info("vif %s removed", name)
        else:
            os.close(port.fd)

    def _on_tap(self, fd, name):
        port = self.vifs.get(name)
        if port is None or self.pipeline is None:
            return
        self._from_tap(name, port.counters, tap.read_frames(fd))

    def _from_tap(self, name, c, frames):
        """Frames read from VIF `name`, each behind its virtio_net_hdr; `c`: the VIF's counters.
        Also the multi-core workers' TAP path (vrouter/worker.py)."""
        now = self.clock()
        c["rx_packets"] += len(frames)
        c["rx_bytes"] += sum(map(len, frames)) - VNET_LEN * len(frames)
        from_vif = self.pipeline.from_vif
        execute = self._execute
        for raw in frames:
            vnet = raw[:VNET_LEN]
            mss = 0
            if vnet != PLAIN:
                h = virtio.parse(vnet)
                if h.is_tcpv4_gso:
                    c["rx_super_frames"] += 1
                    mss = h.gso_size
            execute(from_vif(name, raw[VNET_LEN:], now), vnet, mss)

    def _on_fabric(self, sock, _):
        reads = self.tunnels.receive_gro(sock)
        if self.pipeline is None:
            self.counters["fabric_rx_unconfigured"] += len(reads)
            return
        if reads:
            self._from_reads(reads)

    def _from_reads(self, reads):
        """GRO and delivery of one drain of `receive_gro` reads (also a multi-core worker's batch)."""
        now = self.clock()
        g = self.offloads.gro
        # Merges are per outer source: a delivery does not carry it, and the core checks it
        # against the fabric peers. MPLSoGRE reads are one packet each (raw socket, no UDP_GRO).
        # Merge across the whole drain (NAPI's end of batch), not only within one coalesced read:
        # when the kernel did not coalesce, a backlog of single datagrams still merges here.
        src = reads[0][0]
        encap = reads[0][1]
        for s, _, data, seg in reads:
            if s != src:
                self._deliver(src, encap, g.flush(), now)
                src = s
            g.add_batch(encap, data, seg, now)
        self._deliver(src, encap, g.flush(), now)

    def _deliver(self, src, encap, deliveries, now):
        from_fabric = self.pipeline.from_fabric
        hist = self.offloads.hist
        execute = self._execute
        for payload, nsegs, gso_size, vnet in deliveries:
            hist[nsegs] += 1
            execute(from_fabric(src, encap, payload, now), vnet, gso_size)

    # --- actions -------------------------------------------------------------------------------
    def _execute(self, actions, vnet=PLAIN, mss=0):
        """Carry out the pipeline's actions for one packet. `vnet` is the virtio_net_hdr that goes
        with its frame (read from the TAP, or from the GRO delivery); `mss` > 0 says the packet is
        a TCP super-packet of segments of that size, which the tunnel must carry cut."""
        for action in actions:
            t = type(action)
            if t is ToTunnel:
                if mss:
                    self.offloads.send_split(self.tunnels, action, mss)
                else:
                    self.tunnels.send(action.peer, action.encap, action.sport, action.payload)
            elif t is ToVif:
                port = self.vifs.get(action.vif)
                if port is not None and tap.write_vnet(port.fd, vnet, action.frame):
                    port.counters["tx_packets"] += 1
                    port.counters["tx_bytes"] += len(action.frame)
                else:
                    self.counters["vif_tx_errors"] += 1
            elif t is Punt:
                self._punt(action.request)
            # Drop: nothing to do, the pipeline counted it (dropstats)

    def _execute_released(self, actions):
        """Packets held during a slow-path round trip come back from `install` without the virtio
        header they arrived with: derive it (ToVif) or the MSS of a super-frame (ToTunnel)."""
        off = self.offloads
        for action in actions:
            if type(action) is ToVif:
                vnet, frame = vnet_for_frame(action.frame, off.mtu)
                self._execute((ToVif(action.vif, frame),), vnet)
            elif type(action) is ToTunnel:
                self._execute((action,), PLAIN, off.released_mss(action.encap, action.payload))
            else:
                self._execute((action,))

    def set_offloads(self, gro=None, gso=None) -> dict:
        """Flip the GRO and/or GSO switch at run time (see vrouter/offload.py); returns both."""
        off = self.offloads
        if gro is not None:
            off.gro.enabled = bool(gro)
            if self.tunnels:
                self.tunnels.set_gro(off.gro_on)
        if gso is not None:
            off.gso_on = bool(gso)
            for port in self.vifs.values():
                tap.set_offloads(port.fd, off.gso_on)
        return {"gro": off.gro_on, "gso": off.gso_on}

    def _punt(self, request):
        self.recent_punts.append((time.time(), request))
        super()._punt(request)

    # --- configuration -------------------------------------------------------------------------
    def _accept_config(self, generation, config_dict):
        """The pushed configuration, parsed and with the fabric sockets open for it; None (logged and
        counted) if it is rejected."""
        try:
            config = VrouterConfig.from_dict(config_dict)
        except ConfigError as exc:
            log.error("rejected config generation %s: %s", generation, exc)
            self.counters["config_rejected"] += 1
            return None
        if config.server != self.server:
            log.error("rejected config for server %s (this is %s)", config.server, self.server)
            self.counters["config_rejected"] += 1
            return None
        try:
            self._open_tunnels(config.underlay_ip)
        except TunnelError as exc:
            log.error("%s", exc)
            self.counters["config_rejected"] += 1
            return None
        return config

    def apply_config(self, generation, config_dict):
        config = self._accept_config(generation, config_dict)
        if config is None:
            return
        if self.pipeline is None:
            from vrouter.core.pipeline import Pipeline
            self.pipeline = Pipeline(config)
        else:
            self.pipeline.apply_config(config)
        self.config, self.config_dict, self.generation = config, config_dict, generation
        mtu = vm_mtu(config)
        if mtu != self.offloads.mtu:
            self.offloads.mtu = mtu
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

    def reset(self):
        """Fresh pipeline with the same config: empty flow table, zeroed drop counters and stats."""
        self._reset_forwarding()
        self.recent_punts.clear()

    def _reset_forwarding(self):
        """The per-packet state's part of `reset` (also a multi-core worker's)."""
        if self.config is not None:
            from vrouter.core.pipeline import Pipeline
            self.pipeline = Pipeline(self.config)
        self.counters.clear()
        self.offloads.reset()
        if self.tunnels:
            self.tunnels.counters.clear()
        self.slowpath_rtt_us.clear()
        for port in self.vifs.values():
            port.counters.clear()

    def request_agent_reset(self):
        if self.agent is not None:
            try:
                self.agent.send(ipc.pack({"t": "reset"}))
            except OSError as exc:
                self._drop_conn(self.agent, "agent", exc)
        self.agent_stats = {}

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
                self.vifs[name].spec = spec
            else:
                self.pending[name] = "waiting for the VM's namespace"
        self._attach_pending()

    def _attach_pending(self):
        try:
            namespaces = ipc.read_vm_namespaces(self.rundir)
        except ipc.IpcError as exc:
            log.error("%s", exc)
            return
        for name in list(self.pending):
            entry = namespaces.get(name)
            if entry is None:
                continue
            spec = next(v for v in self.config.vifs if v.name == name)
            try:
                port = self._open_vif(spec, entry["netns"])
            except (tap.TapError, vm_interface.VmSetupError) as exc:
                self.pending[name] = str(exc)
                log.error("vif %s: %s", name, exc)
                continue
            del self.pending[name]
            self.vifs[name] = port
            self._serve_vif(name, port, entry)

    def _open_vif(self, spec, netns) -> VifPort:
        fds = vm_interface.attach(spec, netns, self._network_of(spec), self.offloads.mtu,
                                  queues=self.tap_queues, offloads=self.offloads.gso_on)
        return VifPort(spec, fds, netns)

    def _serve_vif(self, name, port, entry):
        self.sel.register(port.fd, selectors.EVENT_READ, ("tap", name))
        log.info("vif %s attached (VM %s)", name, entry.get("vm", "?"))

    def _unserve_vif(self, name, port):
        self.sel.unregister(port.fd)

    def _network_of(self, spec):
        return next(n for n in self.config.networks if n.name == spec.network)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m vrouter.processes.forwarder", description=__doc__.splitlines()[0])
    p.add_argument("--rundir", required=True)
    p.add_argument("--server", required=True)
    add_switch_arguments(p)
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, stream=sys.stderr,
                        format=f"%(asctime)s forwarder[{args.server}] %(levelname)s %(message)s")
    try:
        fwd = Forwarder(args.rundir, args.server, gro=args.gro, gso=args.gso)
    except (ipc.IpcError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    log.info("listening on %s", ipc.agent_socket(args.rundir, args.server))
    serve(fwd)
    return 0


if __name__ == "__main__":
    sys.exit(main())
