"""The per-packet path of one vrouter shard, in one object: TAP frames -> pipeline -> tunnels, tunnel
reads -> GRO -> pipeline -> TAPs, punts to the agent and the installs that come back.

The single forwarder holds one (vrouter/processes/forwarder.py), each multi-core worker holds one
for its shard of the flow table (vrouter/processes/worker.py); the dispatcher holds none, it steers
packets to the workers' datapaths. Nothing here owns a selector or a listener: the holder reads its
fds and hands the frames and reads over, and gives the datapath what it sends through (`sender`,
a `Tunnels` or a worker's `rps_kernel.Sender`) and the VIFs it writes (`vifs`).

Offloads (docs/vrouter.md, "The offload path"): every TAP frame carries its virtio_net_hdr; a TSO
super-frame goes through the pipeline once and is cut at its MSS on the way out (one UDP GSO send),
tunnel reads are merged by `vrouter.core.gro.Gro` over the whole drain (NAPI's end of batch) and
written to the VM as one super-packet: a merge that hits its flow entry is one writev of the virtio
header, the frame's headers and the merge's data (`ToVifParts`), not copied into one frame first.
Packets held during a slow-path round trip lose their virtio header in the core; `_execute_released`
derives it again from the frame (the core keeps none).

Path repair (vrouter/core/paths.py, docs/vrouter.md "Path repair"): with `path_slots` > 0 the pipeline's
tunnel entries take their outer source port from path slots; `probe` runs a round when `paths_wait`
says it is due (the holder's loop asks), sends its messages through the sender, and hands the
deaths and revivals of paths to the agent (`{"t": "paths"}`), which reports them to the VNC.

The slow path (docs/vrouter.md, "The slow-path channel"): a miss leaves its punt request in the
core's setup queue; after each batch of input the datapath hands the agent, in one message, what
the queue lets go (`flush_punts`), and `service` installs the decisions that came back, a bounded
number per loop round. No timer: a lone punt at low load leaves with the batch that made it.
"""
from __future__ import annotations

import collections
import itertools
import logging
import os
import socket
import time
from collections.abc import Callable

from vrouter.core import gso, latency
from vrouter.core.actions import ToExternal, ToTunnel, ToVif, ToVifParts
from vrouter.core.codec import virtio
from vrouter.core.config import VrouterConfig
from vrouter.core.gro import lone_icmp, vnet_for_frame
from vrouter.core.offload import Offloads, vm_mtu
from vrouter.core.paths import Paths
from vrouter.core.pipeline import Pipeline
from vrouter.io import ipc, tap, vtep
from vrouter.io.flowlog import FlowLog
from vrouter.processes import mirror_out

log = logging.getLogger("datapath")
PLAIN = virtio.PLAIN
VNET_LEN = virtio.HDR_LEN
EXPIRE_EVERY = 1.0      # seconds between two ageing scans of the flow table
PUNT_WINDOW = 1024      # punts taken and not decided yet; more wait in the core's setup queue
DECISION_WEIGHT = 64    # decisions installed per loop round (NAPI's weight): the inputs get their turn
UNANSWERED_AFTER = 10.0     # seconds: a punt still undecided then was lost by the agent, it leaves the window
REPORTS_KEPT = 256      # path events waiting for the agent channel; older ones are dropped (counted)
STAMPS_KEPT = 4096      # latency stamps kept while stamping is on (the newest)


class VifPort:
    """A VM interface: its TAP fds and packet counters (the `vif --list` columns). `queues`: every fd
    held for the device (several for a multi-queue TAP, vrouter/io/vm_interface.py); `fd`: the one
    this process writes (and reads, where it reads)."""

    def __init__(self, spec, queues: list[int], netns):
        self.spec = spec
        self.queues = queues
        self.fd = queues[0]
        self.netns = netns
        self.counters: collections.Counter = collections.Counter()


class AgentLink:
    """The forwarding side of the slow-path channel (docs/vrouter.md, "The slow-path channel").

    Punts leave in batches, numbered: `flush` takes what the core's setup queue lets go
    (`Pipeline.take_punts`) while the window has room and sends it as one `punts` message (split
    when it would not fit one datagram). A send that would block leaves its messages in the writer,
    the holder watches the socket for writability (`want_write`) and nothing new is taken meanwhile,
    so what waits keeps waiting in the core's fair, token-limited queue rather than here. Decisions
    come back in batches; `receive` puts them in `inbox`, and the datapath installs them
    DECISION_WEIGHT a round. The number that comes back with a decision gives the slow-path round
    trip (taken from the core -> decision installed), measured where it is paid.
    `on_broken(sock, exc)` and `want_write(on)` are the holder's: it owns the socket and the selector."""

    def __init__(self, counters: collections.Counter, on_broken: Callable[[socket.socket, object], None],
                 want_write: Callable[[bool], None] | None = None):
        self.sock: socket.socket | None = None
        self.writer: ipc.SeqpacketWriter | None = None
        self.counters = counters
        self.on_broken = on_broken
        self.want_write = want_write or (lambda on: None)
        self.writing = False                 # the holder watches the socket for writability
        self.window = PUNT_WINDOW
        self.message_max = ipc.SEQPACKET_MAX
        self.agent_stats: dict = {}          # the agent's own counters, piggybacked on its messages
        self.seq = 0
        self.sent: dict[int, float] = {}     # the window: punt id -> when it was taken, until decided
        self.inbox: collections.deque = collections.deque()     # [id, decision] received, not installed
        self.largest_batch = 0
        self.blocked = 0                     # sends that would block, of writers closed since the reset
        self.rtt_us: collections.deque = collections.deque(maxlen=4096)
        self.recent: collections.deque = collections.deque(maxlen=256)    # (wall time, request)
        self._buf = bytearray(ipc.SEQPACKET_MAX)      # one receive buffer, not 4 MB allocated per read

    # --- the connection ------------------------------------------------------------------------
    def attach(self, sock: socket.socket) -> None:
        """A (new) agent connection, non-blocking; the holder has registered it for reading."""
        self.detach()
        self.sock = sock
        self.writer = ipc.SeqpacketWriter(sock)

    def detach(self) -> None:
        """The agent went away: punts it did not answer are lost (their held entries time out in the
        core); decisions already received are still installed."""
        if self.writer is not None:
            self.blocked += self.writer.blocked
            self.counters["punts_lost"] += len(self.sent)
        self.sent.clear()
        self.sock = self.writer = None
        self.writing = False

    def send_message(self, msg: dict) -> None:
        """A control message (e.g. reset) on the channel, behind whatever waits."""
        if self.writer is None:
            return
        try:
            self.writer.send(ipc.pack(msg))
        except OSError as exc:
            self.on_broken(self.sock, exc)
            return
        self._interest(self.writer.pending)

    # --- punts out -----------------------------------------------------------------------------
    def flush(self, take: Callable[[int], list]) -> None:
        """Send what a blocked send left, then, if the channel took it, `take(room)` new punts."""
        w = self.writer
        if w is None or (w.pending and not self.drain()):
            return
        room = self.window - len(self.sent)
        if room <= 0:
            self.counters["punt_window_full"] += 1
            return
        requests = take(room)
        if not requests:
            return
        taken = time.perf_counter()
        sent, seq, items = self.sent, self.seq, []
        for r in requests:
            seq += 1
            sent[seq] = taken
            items.append((seq, r))
        self.seq = seq
        wall = time.time()
        self.recent.extend((wall, r) for r in requests[-self.recent.maxlen:])
        c = self.counters
        c["punts"] += len(requests)
        try:
            for data, n in ipc.pack_batches({"t": "punts"}, "punts", items, self.message_max):
                c["punt_batches"] += 1
                self.largest_batch = max(self.largest_batch, n)
                w.send(data, n)
        except OSError as exc:
            self.on_broken(self.sock, exc)
            return
        self._interest(w.pending)

    def drain(self) -> bool:
        """The writer's waiting messages, as far as the socket takes them; True when none is left."""
        try:
            done = self.writer.flush()
        except OSError as exc:
            self.on_broken(self.sock, exc)
            return False
        self._interest(not done)
        return done

    def _interest(self, on: bool) -> None:
        if on != self.writing:
            self.writing = on
            self.want_write(on)

    # --- decisions in --------------------------------------------------------------------------
    def receive(self, max_messages: int = 64) -> list[dict] | None:
        """Read the messages waiting on the channel, in order: decisions go to `inbox`, the agent's
        counters (on every message that has them) to `agent_stats`, the rest (config) is returned.
        None once the agent closed the channel."""
        out = []
        for _ in range(max_messages):
            try:
                msg, _fds = ipc.recv_message(self.sock, self._buf)
            except BlockingIOError:
                break
            if msg is None:
                return None
            kind = msg.get("t")
            if kind == "decisions":
                self._decisions(msg)
            elif kind == "agent_stats":      # here, not by the holder: a later decision's counters win
                self.agent_stats = msg["agent"]
            else:
                out.append(msg)
        return out

    def _decisions(self, msg: dict) -> None:
        self.counters["decision_batches"] += 1
        self.agent_stats = msg.get("agent", self.agent_stats)
        self.inbox.extend(msg["decisions"])
        undecided = [pid for pid in msg.get("undecided", ()) if self.sent.pop(pid, None) is not None]
        self.counters["punts_undecided"] += len(undecided)   # the agent has no configuration yet

    def settled(self, pid: int) -> None:
        """Punt `pid`'s decision is installed: it leaves the window, and its round trip is recorded."""
        taken = self.sent.pop(pid, None)
        if taken is not None:
            self.rtt_us.append((time.perf_counter() - taken) * 1e6)

    def prune(self) -> None:
        """Punts unanswered for UNANSWERED_AFTER leave the window (their held entries timed out)."""
        old = time.perf_counter() - UNANSWERED_AFTER
        stale = [pid for pid, taken in itertools.takewhile(lambda kv: kv[1] < old, self.sent.items())]
        for pid in stale:
            del self.sent[pid]
        self.counters["punts_unanswered"] += len(stale)

    # --- introspection -------------------------------------------------------------------------
    def stats(self) -> dict:
        """The channel's own counters (the `pressure` op; counts since the last reset)."""
        c, w = self.counters, self.writer
        return {"punt_batches": c["punt_batches"], "punts_sent": c["punts"], "largest_batch": self.largest_batch,
                "sends_blocked": self.blocked + (w.blocked if w else 0),
                "queued": w.queued_items if w else 0, "in_flight": len(self.sent), "window": self.window,
                "window_full": c["punt_window_full"], "decision_batches": c["decision_batches"],
                "decisions_waiting": len(self.inbox), "punts_lost": c["punts_lost"],
                "punts_undecided": c["punts_undecided"], "punts_unanswered": c["punts_unanswered"],
                "agent_connected": self.sock is not None}

    def reset(self) -> None:
        self.rtt_us.clear()
        self.recent.clear()
        self.agent_stats = {}
        self.largest_batch = self.blocked = 0
        if self.writer is not None:
            self.writer.blocked = 0


def _tso_mss(vnet: bytes, counters) -> int:
    """The MSS of a TCP super-frame behind this (non-zero) virtio header, counted; else 0."""
    h = virtio.parse(vnet)
    if h.is_tcpv4_gso:
        counters["rx_super_frames"] += 1
        return h.gso_size
    return 0


def random_seed() -> int:
    return int.from_bytes(os.urandom(8), "big")


class Datapath:
    def __init__(self, link: AgentLink, offloads: Offloads, *, clock: Callable[[], float] = time.monotonic,
                 path_slots: int = 0, seed: Callable[[], int] = random_seed):
        """`path_slots`: K path slots per tunnel peer (path repair); 0: per-flow entropy ports, no probes
        (multi-core workers: each is its own sender, and one vrouter must speak with one voice)."""
        self.link = link
        self.path_slots = path_slots
        self.seed = seed
        self.path_reports: collections.deque = collections.deque(maxlen=REPORTS_KEPT)
        self.counters = link.counters
        self.offloads = offloads
        self.clock = clock
        self.config: VrouterConfig | None = None
        self.pipeline: Pipeline | None = None
        self.sender = None                  # Tunnels | rps_kernel.Sender: send, send_gso, counters
        self.vifs: dict[str, VifPort] = {}
        self.external = None                # vrouter/io/external.py External: NAT flows' way out, or None
        # Latency stamps of ICMP echoes while `stamp on` (vrouter/core/latency.py), else None: the
        # per-packet loops are the plain ones unless stamping is on.
        self.stamps: collections.deque | None = None
        self.woke_ns = 0                    # while stamping: when the holder's epoll wait last returned
        self.wrote_vif: str | None = None   # the last VM interface a frame was written to (the answer read)
        self.mirror_sink = None             # vrouter/io/mirror_pcap.py PcapFiles of the holder, or None
        self.flowlog = FlowLog(clock)       # flow records to <rundir>/flows/ once the holder places it

    # --- configuration -------------------------------------------------------------------------
    def configure(self, config: VrouterConfig) -> None:
        """Take a new configuration; the flow table survives it (the pipeline re-evaluates it)."""
        if self.pipeline is None:
            self.pipeline = Pipeline(config, self._new_paths())
        else:
            self.pipeline.apply_config(config)
        self.config = config
        self.offloads.mtu = vm_mtu(config)      # released super-frames are cut at the VMs' MSS
        self.sender = vtep.wrap(self.sender, config)    # bare-metal peers get complete checksums

    def reset(self) -> None:
        """Fresh pipeline with the same config: empty flow table, zeroed drop counters and stats."""
        self.flowlog.drain(self.pipeline, end="flush")     # the old table's pairs are records first
        if self.config is not None:
            self.pipeline = Pipeline(self.config, self._new_paths())
        self.path_reports.clear()
        self.counters.clear()
        self.offloads.reset()
        if self.sender is not None:
            self.sender.counters.clear()
        self.link.reset()
        for port in self.vifs.values():
            port.counters.clear()

    def _new_paths(self) -> Paths | None:
        return Paths(self.path_slots, seed=self.seed()) if self.path_slots else None

    def expire(self, now: float) -> None:
        if self.pipeline is not None:
            self.counters["expired"] += self.pipeline.expire(now)
            self.flowlog.drain(self.pipeline)
            if self.pipeline.paths is not None:
                self._report(self.pipeline.paths)   # also what waited for an agent to connect
        self.link.prune()
        self.flush_punts()  # with flow.setup_rate: what the bucket held back since the last batch

    # --- packets in ----------------------------------------------------------------------------
    def from_tap(self, name: str, frames: list[bytes]) -> None:
        """Frames read from VIF `name`, each behind its virtio_net_hdr."""
        port = self.vifs.get(name)
        # A worker's VIF fd comes on its control channel and may trail the first frames.
        c = port.counters if port is not None else collections.Counter()
        now = self.clock()
        c["rx_packets"] += len(frames)
        c["rx_bytes"] += sum(map(len, frames)) - VNET_LEN * len(frames)
        if self.stamps is not None:
            self._from_tap_stamped(name, frames, c, now)
            return
        from_vif = self.pipeline.from_vif
        execute = self._execute
        for raw in frames:
            vnet = raw[:VNET_LEN]
            execute(from_vif(name, raw, now, VNET_LEN), vnet, 0 if vnet == PLAIN else _tso_mss(vnet, c))
        self.flush_punts()

    def from_external(self, packets: list[bytes]) -> None:
        """IPv4 packets read from the external port (NAT flows: vrouter/core/nat.py)."""
        now = self.clock()
        for packet in packets:
            self._execute(self.pipeline.nat.from_external(packet, now))
        self.flush_punts()

    def from_reads(self, reads: list[tuple], kernel_ns: list[int] | None = None) -> None:
        """GRO and delivery of one drain of `read_gro` reads: (outer src, encap, data, segment size);
        `kernel_ns`: the reads' kernel receive times, while stamping."""
        now = self.clock()
        if self.stamps is not None:
            self._from_reads_stamped(reads, kernel_ns or [], now)
            return
        g = self.offloads.gro
        # Merges are per outer source: a delivery does not carry it, and the core checks it
        # against the fabric peers. MPLSoGRE reads are one packet each (raw socket, no UDP_GRO).
        # Merge across the whole drain, not only within one coalesced read: when the kernel did not
        # coalesce, a backlog of single datagrams still merges here.
        if len(reads) == 1 and not reads[0][3] and lone_icmp(reads[0][1], reads[0][2]):
            self.from_lone_icmp(*reads[0][:3])
            return
        src = reads[0][0]
        encap = reads[0][1]
        for s, _, data, seg in reads:
            if s != src:
                self._deliver(src, encap, g.flush(), now)
                src = s
            g.add_batch(encap, data, seg, now)
        self._deliver(src, encap, g.flush(), now)
        self.flush_punts()

    def from_lone_icmp(self, src: str, encap: str, data: bytes) -> None:
        """One read holding one ICMP datagram (a ping), not stamping: nothing to merge and no partial
        checksum to flag, so it skips the GRO engine (its dispatch was a third of a cold ping's
        pipeline leg here). The single forwarder calls it straight from its fabric read."""
        self.offloads.hist[1] += 1
        self._execute(self.pipeline.from_fabric(src, encap, data, self.clock()))
        self.flush_punts()

    def _deliver(self, src: str, encap: str, deliveries, now: float) -> None:
        from_fabric = self.pipeline.from_fabric
        hist = self.offloads.hist
        execute = self._execute
        for head, tail, nsegs, gso_size, vnet in deliveries:
            hist[nsegs] += 1
            execute(from_fabric(src, encap, head, now, tail), vnet, gso_size)

    # --- latency stamps (issue 13: where a round trip spends its time) ------------------------
    def set_stamping(self, on: bool) -> None:
        self.stamps = collections.deque(maxlen=STAMPS_KEPT) if on else None

    def take_stamps(self) -> list[tuple]:
        """The stamps taken since the last call: (ingress, icmp type, id, seq, t_in, t_woke, t_read, t_pipe,
        t_sent)."""
        out = list(self.stamps or ())
        if self.stamps:
            self.stamps.clear()
        return out

    def _from_tap_stamped(self, name: str, frames: list[bytes], c, now: float) -> None:
        """`from_tap` with a stamp per ICMP echo; the read returned just before this was called."""
        t_read = time.time_ns()
        from_vif, execute, stamps, clock = self.pipeline.from_vif, self._execute, self.stamps, time.time_ns
        for raw in frames:
            vnet = raw[:VNET_LEN]
            mss = 0 if vnet == PLAIN else _tso_mss(vnet, c)
            actions = from_vif(name, raw, now, VNET_LEN)
            t_pipe = clock()
            execute(actions, vnet, mss)
            t_sent = clock()
            e = latency.echo(raw, VNET_LEN + 14)
            if e is not None:
                t_in = latency.ping_sent_ns(raw, e[3], t_read) if e[0] == latency.ICMP_ECHO else 0
                stamps.append(("vif", e[0], e[1], e[2], t_in, self.woke_ns, t_read, t_pipe, t_sent))
        self.flush_punts()

    def _from_reads_stamped(self, reads: list[tuple], kernel_ns: list[int], now: float) -> None:
        """`from_reads` with a stamp per ICMP echo. Merges never hold an echo, so each delivery is
        stamped with the earliest kernel receive time of its drain (a ping's drain is one read)."""
        t_read = time.time_ns()
        t_in = min((t for t in kernel_ns if t), default=0)
        g, stamps, clock = self.offloads.gro, self.stamps, time.time_ns
        from_fabric, execute, hist = self.pipeline.from_fabric, self._execute, self.offloads.hist
        for src, encap, data, seg in reads:
            if not seg and lone_icmp(encap, data):     # as from_reads: no GRO for a lone ICMP datagram
                deliveries = [(data, None, 1, 0, PLAIN)]
            else:
                g.add_batch(encap, data, seg, now)
                deliveries = g.flush()
            for payload, tail, nsegs, gso_size, vnet in deliveries:
                hist[nsegs] += 1
                actions = from_fabric(src, encap, payload, now, tail)
                t_pipe = clock()
                execute(actions, vnet, gso_size)
                t_sent = clock()
                e = latency.echo(payload, gso.PREFIX_LEN.get(encap, 0))
                if e is not None:
                    stamps.append(("fabric", e[0], e[1], e[2], t_in, self.woke_ns, t_read, t_pipe, t_sent))
        self.flush_punts()

    # --- the slow path -------------------------------------------------------------------------
    def flush_punts(self) -> None:
        """After a batch of input, or once the channel is writable or the window has room again:
        the punts the core lets go now, as one batch (nothing is taken while the channel is blocked)."""
        pipe, link = self.pipeline, self.link
        if pipe is not None and pipe.mirror.out:    # this batch's mirror copies (core/mirror.py)
            mirror_out.drain(self, pipe.mirror)
        if pipe is not None and link.writer is not None and (link.writer.pending or pipe.punts_waiting()):
            link.flush(lambda room: pipe.take_punts(self.clock(), room))

    def punt_wait(self) -> float | None:
        """How long the holder may sleep before `flush_punts` has work (None: as long as it likes);
        with flow.setup_rate the queue then drains at the bucket's rate even when no packet comes."""
        pipe, link = self.pipeline, self.link
        if pipe is None or link.writer is None or link.writer.pending or len(link.sent) >= link.window:
            return None     # a socket event wakes the holder: the channel writable, decisions back
        return pipe.punt_wait(self.clock())

    def service(self, budget: int = DECISION_WEIGHT) -> bool:
        """Once per loop round: install up to `budget` received decisions (releasing their held
        packets), the rest in the next rounds; True while decisions are left (the holder then polls
        instead of waiting). A flood's decisions thus take turns with the inputs, as NAPI's weight does."""
        inbox = self.link.inbox
        if not inbox:
            return False
        pipe = self.pipeline
        if pipe is None:
            inbox.clear()
            return False
        now = self.clock()
        install, settled, execute = pipe.install, self.link.settled, self._execute_released
        n = min(budget, len(inbox))
        for _ in range(n):
            pid, decision = inbox.popleft()
            execute(install(decision, now))
            settled(pid)
        self.counters["decisions"] += n
        self.flush_punts()
        return bool(inbox)

    # --- path repair ---------------------------------------------------------------------------
    def paths_wait(self) -> float | None:
        """Seconds until the next probe round is due (0: now), None while no path is active."""
        paths = self.pipeline.paths if self.pipeline is not None else None
        due = paths.due() if paths is not None else None
        return None if due is None else max(0.0, due - self.clock())

    def probe(self) -> None:
        """One probe round: every active path's slot messages, then the path events for the agent."""
        paths = self.pipeline.paths if self.pipeline is not None else None
        if paths is None:
            return
        messages = paths.round(self.clock())    # a round even without a sender: it moves `due` on
        if self.sender is not None:
            send = self.sender.send_probe
            for peer, encap, sport, payload in messages:
                send(peer, encap, sport, payload)
        self._report(paths)

    def _report(self, paths: Paths) -> None:
        """Path deaths and revivals to the log and, through the agent, to the VNC; while no agent is
        connected they wait here (the newest REPORTS_KEPT), never in the packet path."""
        events = paths.take_events()
        if events:
            now, wall = self.clock(), time.time()
            for ev in events:
                ev["time"] = round(wall - (now - ev.pop("at")), 3)
                log.warning("path via source port %d to %s (%s, slot %d) %s, %d flows", ev["port"], ev["peer"],
                            ev["encap"], ev["slot"], ev["event"], ev["flows"])
            dropped = max(0, len(self.path_reports) + len(events) - REPORTS_KEPT)
            self.counters["path_reports_dropped"] += dropped
            self.path_reports.extend(events)
        if self.path_reports and self.link.writer is not None:
            self.counters["path_reports"] += len(self.path_reports)
            self.link.send_message({"t": "paths", "events": list(self.path_reports)})
            self.path_reports.clear()

    def paths_view(self) -> dict:
        """The `paths` introspection op: every path's slots, ports, health and counters."""
        paths = self.pipeline.paths if self.pipeline is not None else None
        if paths is None:
            return {"enabled": False, "slots": 0, "paths": [],
                    "why": "path repair is off (--path-slots 0)" if self.pipeline is not None else "no configuration"}
        return {"enabled": True, **paths.describe(self.clock()), "reports_waiting": len(self.path_reports),
                "reports_sent": self.counters["path_reports"], "reports_dropped": self.counters["path_reports_dropped"]}

    # --- actions -------------------------------------------------------------------------------
    def _execute(self, actions, vnet: bytes = PLAIN, mss: int = 0) -> None:
        """Carry out the pipeline's actions for one packet. `vnet` is the virtio_net_hdr that goes
        with its frame (read from the TAP, or from the GRO delivery); `mss` > 0 says the packet is
        a TCP super-packet of segments of that size, which the tunnel must carry cut."""
        for action in actions:
            t = type(action)
            if t is ToTunnel:
                if mss:
                    self.offloads.send_split(self.sender, action, mss)
                else:
                    self.sender.send(action.peer, action.encap, action.sport, action.payload)
            elif t is ToVif or t is ToVifParts:
                port = self.vifs.get(action.vif)
                tail = action.tail if t is ToVifParts else b""      # a merge's data, behind its headers
                if port is not None and tap.write_vnet(port.fd, vnet, action.frame, tail):
                    self.wrote_vif = action.vif
                    port.counters["tx_packets"] += 1
                    port.counters["tx_bytes"] += len(action.frame) + len(tail)
                else:
                    self.counters["vif_tx_errors"] += 1
            elif t is ToExternal:
                if self.external is not None:
                    self.external.send(action.packet, mss)
                else:
                    self.counters["external_tx_unconfigured"] += 1
            # Drop: nothing to do, the pipeline counted it (dropstats). A miss's punt request waits in
            # the core's setup queue: flush_punts takes it after the batch.

    def _execute_released(self, actions) -> None:
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

    # --- introspection -------------------------------------------------------------------------
    def stats(self) -> dict:
        """The counters of this shard, as `stats` reports them (vrouter/io/introspect.py)."""
        tunnels = dict(self.sender.counters) if self.sender is not None else {}
        return {"pipeline": self.pipeline.stats() if self.pipeline else {}, "forwarder": dict(self.counters),
                "tunnels": tunnels, "agent": dict(self.link.agent_stats),
                "agent_connected": self.link.sock is not None, "rtts": list(self.link.rtt_us),
                **self.offloads.stats(tunnels)}

    def pressure(self) -> dict:
        """The flow table under pressure (the core's `pressure`) and this shard's channel counters."""
        table = self.pipeline.pressure(self.clock()) if self.pipeline else {}
        return {**table, "channel": self.link.stats()}

    def flows(self) -> list[dict]:
        return self.pipeline.flows(self.clock()) if self.pipeline else []

    def drop_stats(self) -> dict:
        return self.pipeline.drop_stats() if self.pipeline else {}
