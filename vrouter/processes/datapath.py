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
written to the VM as one super-packet. Packets held during a slow-path round trip lose their virtio
header in the core; `_execute_released` derives it again from the frame (the core keeps none).
"""
from __future__ import annotations

import collections
import socket
import time
from collections.abc import Callable

from vrouter.core.actions import ToTunnel, ToVif
from vrouter.core.codec import virtio
from vrouter.core.config import VrouterConfig
from vrouter.core.gro import vnet_for_frame
from vrouter.core.offload import Offloads, vm_mtu
from vrouter.core.pipeline import Pipeline
from vrouter.io import ipc, tap

PLAIN = virtio.PLAIN
VNET_LEN = virtio.HDR_LEN
EXPIRE_EVERY = 1.0      # seconds between two ageing scans of the flow table
PUNT_MEMORY = 8192      # punts awaiting their decision; past it (agent restarted) they are forgotten


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
    """The forwarding side of the slow-path channel: punts go to the agent numbered, and the
    decision that comes back with the same number gives the slow-path round trip (punt sent ->
    decision installed), the cost a proactive reverse entry saves on the reply path, measured where
    it is paid. `on_broken(sock, exc)` is the holder's: it unregisters and closes the socket."""

    def __init__(self, counters: collections.Counter, on_broken: Callable[[socket.socket, object], None]):
        self.sock: socket.socket | None = None
        self.counters = counters
        self.on_broken = on_broken
        self.agent_stats: dict = {}          # the agent's own counters, piggybacked on its messages
        self.seq = 0
        self.sent: dict[int, float] = {}
        self.rtt_us: collections.deque = collections.deque(maxlen=4096)
        self.recent: collections.deque = collections.deque(maxlen=256)    # (wall time, request)

    def punt(self, request: dict) -> None:
        c = self.counters
        c["punts"] += 1
        self.recent.append((time.time(), request))
        if self.sock is None:
            c["punts_no_agent"] += 1    # the held entry times out (hold_timeout) in the core
            return
        self.seq += 1
        if len(self.sent) > PUNT_MEMORY:
            self.sent.clear()
        self.sent[self.seq] = time.perf_counter()
        try:
            self.sock.send(ipc.pack({"t": "punt", "id": self.seq, "request": request}))
        except BlockingIOError:
            c["punts_agent_busy"] += 1
        except OSError as exc:
            self.on_broken(self.sock, exc)

    def receive(self, max_messages: int = 64) -> list[dict] | None:
        """The messages waiting on the channel; None once the agent closed it."""
        out = []
        for _ in range(max_messages):
            try:
                data = self.sock.recv(ipc.SEQPACKET_MAX)
            except BlockingIOError:
                break
            if not data:
                return None
            out.append(ipc.unpack(data))
        return out

    def settled(self, msg: dict) -> None:
        """A decision arrived and was installed: its round trip, and the agent's counters."""
        self.agent_stats = msg.get("agent", self.agent_stats)
        sent = self.sent.pop(msg.get("id"), None)
        if sent is not None:
            self.rtt_us.append((time.perf_counter() - sent) * 1e6)

    def reset(self) -> None:
        self.rtt_us.clear()
        self.recent.clear()
        self.agent_stats = {}


class Datapath:
    def __init__(self, link: AgentLink, offloads: Offloads, *, clock: Callable[[], float] = time.monotonic):
        self.link = link
        self.counters = link.counters
        self.offloads = offloads
        self.clock = clock
        self.config: VrouterConfig | None = None
        self.pipeline: Pipeline | None = None
        self.sender = None                  # Tunnels | rps_kernel.Sender: send, send_gso, counters
        self.vifs: dict[str, VifPort] = {}

    # --- configuration -------------------------------------------------------------------------
    def configure(self, config: VrouterConfig) -> None:
        """Take a new configuration; the flow table survives it (the pipeline re-evaluates it)."""
        if self.pipeline is None:
            self.pipeline = Pipeline(config)
        else:
            self.pipeline.apply_config(config)
        self.config = config
        self.offloads.mtu = vm_mtu(config)      # released super-frames are cut at the VMs' MSS

    def reset(self) -> None:
        """Fresh pipeline with the same config: empty flow table, zeroed drop counters and stats."""
        if self.config is not None:
            self.pipeline = Pipeline(self.config)
        self.counters.clear()
        self.offloads.reset()
        if self.sender is not None:
            self.sender.counters.clear()
        self.link.reset()
        for port in self.vifs.values():
            port.counters.clear()

    def expire(self, now: float) -> None:
        if self.pipeline is not None:
            self.counters["expired"] += self.pipeline.expire(now)
            self._punt(now)     # with flow.setup_rate, punts the bucket held back since the last batch

    # --- packets in ----------------------------------------------------------------------------
    def from_tap(self, name: str, frames: list[bytes]) -> None:
        """Frames read from VIF `name`, each behind its virtio_net_hdr."""
        port = self.vifs.get(name)
        # A worker's VIF fd comes on its control channel and may trail the first frames.
        c = port.counters if port is not None else collections.Counter()
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
        self._punt(now)

    def from_reads(self, reads: list[tuple]) -> None:
        """GRO and delivery of one drain of `read_gro` reads: (outer src, encap, data, segment size)."""
        now = self.clock()
        g = self.offloads.gro
        # Merges are per outer source: a delivery does not carry it, and the core checks it
        # against the fabric peers. MPLSoGRE reads are one packet each (raw socket, no UDP_GRO).
        # Merge across the whole drain, not only within one coalesced read: when the kernel did not
        # coalesce, a backlog of single datagrams still merges here.
        src = reads[0][0]
        encap = reads[0][1]
        for s, _, data, seg in reads:
            if s != src:
                self._deliver(src, encap, g.flush(), now)
                src = s
            g.add_batch(encap, data, seg, now)
        self._deliver(src, encap, g.flush(), now)
        self._punt(now)

    def _deliver(self, src: str, encap: str, deliveries, now: float) -> None:
        from_fabric = self.pipeline.from_fabric
        hist = self.offloads.hist
        execute = self._execute
        for payload, nsegs, gso_size, vnet in deliveries:
            hist[nsegs] += 1
            execute(from_fabric(src, encap, payload, now), vnet, gso_size)

    def on_decision(self, msg: dict) -> None:
        """The agent's decision for a punt: install it, release the held packets, time the trip."""
        if self.pipeline is None:
            return
        self.counters["decisions"] += 1
        now = self.clock()
        self._execute_released(self.pipeline.install(msg["decision"], now))
        self.link.settled(msg)
        self._punt(now)

    def _punt(self, now: float) -> None:
        """New flows' punt requests wait in the pipeline's setup queue; send what it lets go."""
        for request in self.pipeline.take_punts(now):
            self.link.punt(request)

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
            elif t is ToVif:
                port = self.vifs.get(action.vif)
                if port is not None and tap.write_vnet(port.fd, vnet, action.frame):
                    port.counters["tx_packets"] += 1
                    port.counters["tx_bytes"] += len(action.frame)
                else:
                    self.counters["vif_tx_errors"] += 1
            # Drop: nothing to do, the pipeline counted it (dropstats)

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

    def flows(self) -> list[dict]:
        return self.pipeline.flows(self.clock()) if self.pipeline else []

    def drop_stats(self) -> dict:
        return self.pipeline.drop_stats() if self.pipeline else {}
