"""The vrouter agent of one server: the slow path and the control channel, in its own process.

    python -m vrouter.processes.agent --rundir RUNDIR --server srv1 [--vnc SOCKET | --config FILE]

As in the patent, the agent is separate from the forwarding plane: the forwarder punts the first
packet of every new flow, the agent runs `SlowPath.decide` (route lookup and policy, for the forward
and, in proactive mode, the reverse direction) and sends the decision back. It gets its configuration
from the VNC (`vrouter.io.vnc_client.VncClient`) and passes every new configuration on to the forwarder;
while the VNC is down it keeps deciding with the last configuration (Tungsten Fabric's headless mode).
It also keeps that configuration on disk (`<rundir>/vr/<server>/agent-config.json`): an agent that
starts while the VNC does not answer (a server rebooted during a controller outage) starts from it
after CACHE_FALLBACK seconds, and the VNC's configuration replaces it once the VNC answers.
`--config FILE` (YAML or JSON in the vrouter config format) runs without a controller. Path repair
events of the forwarder (`{"t": "paths"}`: a path to a peer died or came back, vrouter/core/paths.py)
go on to the VNC (`VncClient.report_paths`, queued there while the VNC is away); without a VNC they
are counted only.
"""
from __future__ import annotations

import collections
import json
import logging
import os
import selectors
import socket
import sys
import threading
import time

import yaml

from vrouter.core.config import ConfigError, VrouterConfig
from vrouter.core.slowpath import SlowPath
from vrouter.io import ipc
from vrouter.io.vnc_client import VncClient
from vrouter.processes.launch import parser, serve, setup_logging

log = logging.getLogger("agent")
RECONNECT_DELAY = 0.2
# A live VNC registers an agent in milliseconds; a stopped one (SIGSTOP, or a host too busy to run
# it) leaves the agent's register unanswered until the client's 3 s timeout, and a starting agent
# serves nothing meanwhile.
CACHE_FALLBACK = 2.0
READ_MAX = 256      # messages read from one channel per round: everything waiting, the window bounds it
MAX_FDS = 64        # worker channels one message may pass


class Peer:
    """One channel to the forwarding plane: the forwarder's (which also carries configuration) or a
    multi-core worker's. Sends go through its writer, which never blocks; `lock` because the VNC
    client's thread pushes configurations on the forwarder's channel too."""

    def __init__(self, sock: socket.socket, name: str):
        sock.setblocking(False)
        self.sock = sock
        self.name = name
        self.writer = ipc.SeqpacketWriter(sock)
        self.lock = threading.Lock()

    def send(self, data: bytes, items: int = 1) -> bool:
        with self.lock:
            try:
                self.writer.send(data, items)
                return True
            except OSError as exc:
                log.warning("%s channel: %s", self.name, exc)
                return False

    def drain(self) -> None:
        with self.lock:
            try:
                self.writer.flush()
            except OSError as exc:
                log.warning("%s channel: %s", self.name, exc)   # the next read sees the channel closed


class Agent:
    def __init__(self, rundir: str, server: str, *, clock=time.monotonic, cache=None):
        self.rundir = rundir
        self.server = server
        self.clock = clock
        self.cache = cache                       # Path of the cached configuration, or None: no cache
        self.slowpath = None
        self.generation = None
        self.config_dict = None
        self.counters = collections.Counter()
        self.main: Peer | None = None            # the forwarder's channel
        self.channels: dict[socket.socket, Peer] = {}   # worker channels of a multi-core forwarder
        self._main_lock = threading.Lock()   # on_config arrives on the VNC client's thread
        self._config_lock = threading.Lock()
        self._buf = bytearray(ipc.SEQPACKET_MAX)
        self.message_max = ipc.SEQPACKET_MAX     # decision batches larger than this are split
        self.report_paths = None                 # events -> the VNC (VncClient.report_paths), if there is one
        self.running = True

    # --- configuration (called by the VNC client thread or at start-up) ------------------------
    def on_config(self, generation, config_dict):
        """A configuration from the VNC (or the --config file): applied, passed on, cached."""
        if self._apply(generation, config_dict, source="vnc"):
            self._save_cache(generation, config_dict)

    def use_cached_config(self) -> bool:
        """Start from the cached configuration if nothing newer came meanwhile; False if none."""
        if self.cache is None:
            return False
        try:
            cached = json.loads(self.cache.read_text())
            generation, config_dict = cached["generation"], cached["config"]
        except FileNotFoundError:
            log.warning("the VNC does not answer and there is no cached configuration (%s): "
                        "deciding nothing until the VNC answers", self.cache)
            return False
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring the cached configuration %s: %s", self.cache, exc)
            return False
        return self._apply(generation, config_dict, source="cache")

    def _apply(self, generation, config_dict, source):
        try:
            config = VrouterConfig.from_dict(config_dict)
        except ConfigError as exc:
            log.error("rejected config generation %s: %s", generation, exc)
            self.counters["config_rejected"] += 1
            return False
        with self._config_lock:
            if source == "cache" and self.slowpath is not None:
                return False             # the VNC answered after all: its configuration stays
            if self.slowpath is None:
                self.slowpath = SlowPath(config)
            else:
                self.slowpath.apply_config(config)
            self.generation, self.config_dict = generation, config_dict
        self.counters["configs" if source == "vnc" else "configs_from_cache"] += 1
        log.info("config generation %s%s: %d vifs, mode %s", generation,
                 " (cached: the VNC does not answer)" if source == "cache" else "",
                 len(config.vifs), config.flow.mode)
        self._push_config()
        return True

    def _save_cache(self, generation, config_dict):
        """Atomically (rename), so a restarted agent reads the old file or the new one."""
        if self.cache is None:
            return
        tmp = self.cache.with_name(f"{self.cache.name}.tmp{os.getpid()}")
        try:
            self.cache.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps({"generation": generation, "config": config_dict}))
            tmp.replace(self.cache)
        except (OSError, TypeError, ValueError) as exc:
            log.warning("cannot cache the configuration in %s: %s", self.cache, exc)

    def _push_config(self):
        with self._config_lock:
            msg = {"t": "config", "generation": self.generation, "config": self.config_dict}
        if msg["config"] is not None:
            self._send(msg)

    def stats(self) -> dict:
        return dict(self.counters)

    # --- forwarder channel ---------------------------------------------------------------------
    def _send(self, msg) -> bool:
        with self._main_lock:
            main = self.main
        return main is not None and main.send(ipc.pack(msg))

    def _connect(self) -> bool:
        path = ipc.agent_socket(self.rundir, self.server)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        ipc.tune_seqpacket(s)
        try:
            s.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError):
            s.close()
            return False
        with self._main_lock:
            self.main = Peer(s, "forwarder")
        log.info("connected to forwarder at %s", path)
        self._push_config()  # a (re)started forwarder starts empty: give it what we know
        return True

    def run(self):
        sel = selectors.DefaultSelector()
        waiting_logged = False
        while self.running:
            if self.main is None:
                if not self._connect():
                    if not waiting_logged:
                        log.info("waiting for the forwarder")
                        waiting_logged = True
                    time.sleep(RECONNECT_DELAY)
                    continue
                waiting_logged = False
                sel.register(self.main.sock, selectors.EVENT_READ, None)
            for key, mask in sel.select(0.5):
                peer = self.main if key.data is None else key.data
                if mask & selectors.EVENT_WRITE:
                    peer.drain()
                if not mask & selectors.EVENT_READ:
                    continue
                if peer is not self.main:
                    self._on_channel(sel, peer)
                elif not self._on_forwarder(sel):
                    break
            self._watch_writes(sel)

    def _watch_writes(self, sel):
        """Watch a channel for writability exactly while its writer holds what it could not send."""
        peers = [*self.channels.values(), *([self.main] if self.main else [])]
        for peer in peers:
            key = sel.get_key(peer.sock)
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if peer.writer.pending else 0)
            if key.events != events:
                sel.modify(peer.sock, events, key.data)

    def _on_forwarder(self, sel) -> bool:
        """Everything waiting on the forwarder's channel; False once the forwarder went away."""
        main, punts = self.main, []
        for _ in range(READ_MAX):
            try:
                msg, fds = ipc.recv_message(main.sock, self._buf, MAX_FDS)
            except BlockingIOError:
                break
            except OSError as exc:
                log.warning("forwarder channel: %s", exc)
                msg, fds = None, []
            if msg is None:
                log.warning("forwarder went away; reconnecting")
                sel.unregister(main.sock)
                self._close_channels(sel)
                with self._main_lock:
                    main.sock.close()
                    self.main = None
                return False
            kind = msg.get("t")
            if kind == "channels":
                self._open_channels(sel, msg, fds)
                continue
            for fd in fds:
                os.close(fd)
            if kind == "punts":
                punts += msg["punts"]
            elif kind == "paths":
                self._paths(msg.get("events") or [])
            elif kind == "reset":
                self._answer(punts, main)
                punts = []
                self.counters.clear()
                self._send({"t": "agent_stats", "agent": self.stats()})
            else:
                log.warning("ignoring forwarder message of unknown type %r", kind)
        self._answer(punts, main)
        return True

    def _paths(self, events: list) -> None:
        """The forwarder repaired paths (or saw them come back): tell the VNC, never waiting for it."""
        self.counters["path_events"] += len(events)
        if self.report_paths is None:
            self.counters["path_events_unreported"] += len(events)
            return
        self.report_paths(events)

    # --- multi-core forwarders (vrouter.processes.dispatcher): one channel per worker --------------------
    def _open_channels(self, sel, msg, fds):
        """A multi-core forwarder passed one socket per worker: each worker punts on its own and the
        decision goes back on the same one, to the worker that will see the flow's reply too."""
        self._close_channels(sel)
        for worker, fd in zip(msg.get("workers", []), fds, strict=False):
            peer = Peer(socket.socket(fileno=fd), f"worker {worker}")
            self.channels[peer.sock] = peer
            sel.register(peer.sock, selectors.EVENT_READ, peer)
        log.info("serving %d worker channels (CPUs %s)", len(fds), msg.get("workers"))

    def _close_channels(self, sel):
        for ch in list(self.channels):
            sel.unregister(ch)
            ch.close()
        self.channels.clear()

    def _on_channel(self, sel, peer):
        """Every punt batch waiting on a worker's channel, decided and answered as one batch."""
        punts = []
        for _ in range(READ_MAX):
            try:
                msg, _fds = ipc.recv_message(peer.sock, self._buf)
            except BlockingIOError:
                break
            except OSError:
                msg = None
            if msg is None:
                sel.unregister(peer.sock)
                self.channels.pop(peer.sock, None)
                peer.sock.close()
                return
            if msg.get("t") == "punts":
                punts += msg["punts"]
            else:
                log.warning("ignoring %s message of unknown type %r", peer.name, msg.get("t"))
        self._answer(punts, peer)

    # --- the slow path -------------------------------------------------------------------------
    def _answer(self, punts: list, peer: Peer) -> None:
        """Decide `punts` ([id, request] each) and send the decisions back on `peer` as one batch
        (split only if it would not fit one message). Without a configuration nothing is decided:
        the ids come back as `undecided`, so the forwarder frees its window at once."""
        if not punts:
            return
        with self._config_lock:
            slowpath = self.slowpath
        c = self.counters
        if slowpath is None:
            c["punts_unconfigured"] += len(punts)
            head = {"t": "decisions", "undecided": [pid for pid, _request in punts]}
            decisions = []
        else:
            now, decide = self.clock(), slowpath.decide
            decisions = [(pid, decide(request, now)) for pid, request in punts]
            c["decisions"] += len(decisions)      # slow-path invocations: what the experiments count
            c["decision_batches"] += 1
            head = {"t": "decisions"}
        head["agent"] = self.stats()
        dropped = peer.writer.dropped
        for data, n in ipc.pack_batches(head, "decisions", decisions, self.message_max):
            peer.send(data, n)
        c["decisions_dropped"] += peer.writer.dropped - dropped     # the forwarder stopped reading


def load_config_file(path: str) -> dict:
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if path.endswith(".json"):
        return json.loads(text)
    return yaml.safe_load(text)


def main(argv=None):
    p = parser("python -m vrouter.agent", __doc__)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--vnc", help="the VNC's control socket (default <rundir>/vnc.sock); the last "
                     "configuration is cached in <rundir>/vr/<server>/agent-config.json", nargs="?",
                     const="", default=None)
    src.add_argument("--config", help="static vrouter config file (YAML/JSON), no controller")
    args = p.parse_args(argv)
    setup_logging(args, "agent")
    cache = None if args.config else ipc.config_cache(args.rundir, args.server)
    agent = Agent(args.rundir, args.server, cache=cache)
    client = None
    if args.config:
        try:
            agent.on_config(0, load_config_file(args.config))
        except (OSError, ValueError) as exc:
            print(f"error: cannot read {args.config}: {exc}", file=sys.stderr)
            return 1
        if agent.slowpath is None:
            print(f"error: {args.config} is not a valid vrouter config (see the log above)", file=sys.stderr)
            return 1
    else:
        sock = args.vnc or f"{args.rundir}/vnc.sock"
        client = VncClient(sock, args.server, agent.on_config, stats=agent.stats)
        agent.report_paths = client.report_paths
        client.start()
        if not client.wait_for(lambda _config: True, CACHE_FALLBACK):
            agent.use_cached_config()

    try:
        serve(agent)
    finally:
        if client is not None:
            client.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
