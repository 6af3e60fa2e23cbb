"""The vrouter agent of one server: the slow path and the control channel, in its own process.

    python -m vrouter.processes.agent --rundir RUNDIR --server srv1 [--vnc SOCKET | --config FILE]

As in the patent, the agent is separate from the forwarding plane: the forwarder punts the first
packet of every new flow, the agent runs `SlowPath.decide` (route lookup and policy, for the forward
and, in proactive mode, the reverse direction) and sends the decision back. It gets its configuration
from the VNC (`vrouter.io.vnc_client.VncClient`) and passes every new configuration on to the forwarder;
while the VNC is down it keeps deciding with the last configuration. `--config FILE` (YAML or JSON in
the vrouter config format) runs without a controller.
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


class Agent:
    def __init__(self, rundir: str, server: str, *, clock=time.monotonic):
        self.rundir = rundir
        self.server = server
        self.clock = clock
        self.slowpath = None
        self.generation = None
        self.config_dict = None
        self.counters = collections.Counter()
        self.conn: socket.socket | None = None
        self.channels: dict[socket.socket, int] = {}   # worker channels of a multi-core forwarder
        self._send_lock = threading.Lock()   # on_config arrives on the VNC client's thread
        self._config_lock = threading.Lock()
        self.running = True

    # --- configuration (called by the VNC client thread or at start-up) ------------------------
    def on_config(self, generation, config_dict):
        try:
            config = VrouterConfig.from_dict(config_dict)
        except ConfigError as exc:
            log.error("rejected config generation %s: %s", generation, exc)
            self.counters["config_rejected"] += 1
            return
        with self._config_lock:
            if self.slowpath is None:
                self.slowpath = SlowPath(config)
            else:
                self.slowpath.apply_config(config)
            self.generation, self.config_dict = generation, config_dict
        self.counters["configs"] += 1
        log.info("config generation %s: %d vifs, mode %s", generation, len(config.vifs), config.flow.mode)
        self._push_config()

    def _push_config(self):
        with self._config_lock:
            msg = {"t": "config", "generation": self.generation, "config": self.config_dict}
        if msg["config"] is not None:
            self._send(msg)

    def stats(self) -> dict:
        return dict(self.counters)

    # --- forwarder channel ---------------------------------------------------------------------
    def _send(self, msg) -> bool:
        with self._send_lock:
            if self.conn is None:
                return False
            try:
                self.conn.send(ipc.pack(msg))
                return True
            except OSError as exc:
                log.warning("forwarder channel: %s", exc)
                return False

    def _connect(self) -> bool:
        path = ipc.agent_socket(self.rundir, self.server)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        ipc.tune_seqpacket(s)
        try:
            s.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError):
            s.close()
            return False
        with self._send_lock:
            self.conn = s
        log.info("connected to forwarder at %s", path)
        self._push_config()  # a (re)started forwarder starts empty: give it what we know
        return True

    def run(self):
        sel = selectors.DefaultSelector()
        waiting_logged = False
        while self.running:
            if self.conn is None:
                if not self._connect():
                    if not waiting_logged:
                        log.info("waiting for the forwarder")
                        waiting_logged = True
                    time.sleep(RECONNECT_DELAY)
                    continue
                waiting_logged = False
                sel.register(self.conn, selectors.EVENT_READ, None)
            for key, _ in sel.select(0.5):
                if key.data is not None:
                    self._on_channel(sel, key.fileobj)
                    continue
                try:
                    data, fds, _flags, _addr = socket.recv_fds(self.conn, ipc.SEQPACKET_MAX, 64)
                except OSError as exc:
                    data, fds = b"", []
                    log.warning("forwarder channel: %s", exc)
                if not data:
                    log.warning("forwarder went away; reconnecting")
                    sel.unregister(self.conn)
                    self._close_channels(sel)
                    with self._send_lock:
                        self.conn.close()
                        self.conn = None
                    break
                msg = ipc.unpack(data)
                if msg.get("t") == "channels":
                    self._open_channels(sel, msg, fds)
                else:
                    for fd in fds:
                        os.close(fd)
                    self._handle(msg)

    # --- multi-core forwarders (vrouter.processes.dispatcher): one channel per worker --------------------
    def _open_channels(self, sel, msg, fds):
        """A multi-core forwarder passed one socket per worker: each worker punts on its own and the
        decision goes back on the same one, to the worker that will see the flow's reply too."""
        self._close_channels(sel)
        for worker, fd in zip(msg.get("workers", []), fds, strict=False):
            ch = socket.socket(fileno=fd)
            self.channels[ch] = worker
            sel.register(ch, selectors.EVENT_READ, worker)
        log.info("serving %d worker channels (CPUs %s)", len(fds), msg.get("workers"))

    def _close_channels(self, sel):
        for ch in list(self.channels):
            sel.unregister(ch)
            ch.close()
        self.channels.clear()

    def _on_channel(self, sel, ch):
        try:
            data = ch.recv(ipc.SEQPACKET_MAX)
        except OSError:
            data = b""
        if not data:
            sel.unregister(ch)
            self.channels.pop(ch, None)
            ch.close()
            return
        self._handle(ipc.unpack(data), ch)

    def _handle(self, msg, channel=None):
        kind = msg.get("t")
        if kind == "punt":
            with self._config_lock:
                slowpath = self.slowpath
            if slowpath is None:
                self.counters["punts_unconfigured"] += 1
                return
            decision = slowpath.decide(msg["request"], self.clock())
            self.counters["decisions"] += 1  # slow-path invocations: what the experiment counts
            reply = {"t": "decision", "id": msg.get("id"), "decision": decision, "agent": self.stats()}
            if channel is None:
                self._send(reply)
            else:
                try:
                    channel.send(ipc.pack(reply))
                except OSError as exc:
                    log.warning("worker %s channel: %s", self.channels.get(channel), exc)
        elif kind == "reset":
            self.counters.clear()
            self._send({"t": "agent_stats", "agent": self.stats()})
        else:
            log.warning("ignoring forwarder message of unknown type %r", kind)


def load_config_file(path: str) -> dict:
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if path.endswith(".json"):
        return json.loads(text)
    return yaml.safe_load(text)


def main(argv=None):
    p = parser("python -m vrouter.agent", __doc__)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--vnc", help="the VNC's control socket (default <rundir>/vnc.sock)", nargs="?",
                     const="", default=None)
    src.add_argument("--config", help="static vrouter config file (YAML/JSON), no controller")
    args = p.parse_args(argv)
    setup_logging(args, "agent")
    agent = Agent(args.rundir, args.server)
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
        client = VncClient(sock, args.server, agent.on_config, stats=agent.stats).start()

    try:
        serve(agent)
    finally:
        if client is not None:
            client.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
