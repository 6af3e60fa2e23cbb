"""Agent side of the control channel (a shell: it runs in the agent process, one per server).

The protocol it speaks (names, version, errors, framing) is vrouter/io/control.py, shared with
the controller's server; this module adds the agent's session: register, follow, reconnect.

``VncClient`` registers with the controller over its unix socket (msgpack-RPC, see
docs/control-protocol.md), hands every new configuration to ``on_config(generation, config)``,
heartbeats every second and, when the controller goes away, keeps the last configuration (the
caller goes on forwarding with it) while it reconnects with back-off and resyncs.

``on_config`` is called only when the configuration's content changes: after a controller
restart (new epoch, possibly a reset generation) the agent re-registers and compares content,
so an unchanged overlay does not disturb the flow tables.

``report_paths(events)`` (from the agent's thread, never blocking it) queues path repair events
(vrouter/core/paths.py) and wakes the session, which sends them (``path_report``) at once when the
controller is there and after the next successful register when it is not: a paused or absent
controller costs the data path nothing. The queue keeps the newest ``REPORT_QUEUE`` events
(``reports_dropped`` counts the rest); the VNC records an event once even if a report whose answer
was lost is sent again.
"""
from __future__ import annotations

import collections
import logging
import os
import select
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from os_ken.lib import rpc  # type: ignore[import-untyped]

from vrouter.io.control import (
    CONFIG,
    GET_CONFIG,
    HEARTBEAT,
    PATH_REPORT,
    PROTOCOL_VERSION,
    REGISTER,
    BlockingSocket,
    Config,
    VncError,
    VncUnavailable,
    connect_unix,
)

log = logging.getLogger("vrouter.io.vnc_client")
REPORT_QUEUE = 1024     # path events waiting for the controller; older ones are dropped (counted)


class VncClient:
    """Background connection of one server's agent to the controller.

    ``stats`` is an optional callable returning a msgpack-serialisable dict sent with each
    heartbeat. Counters: ``reconnects`` (sessions after the first), ``configs_applied``
    (``on_config`` calls), ``heartbeats``.
    ``last_error`` holds the last problem as one line, for the operator.
    """

    def __init__(self, socket_path: str, server: str, on_config: Callable[[int, Config], None],
                 stats: Callable[[], dict[str, Any]] | None = None, heartbeat_interval: float = 1.0,
                 backoff_min: float = 0.2, backoff_max: float = 2.0, timeout: float = 3.0,
                 version: int = PROTOCOL_VERSION, agent_pid: int | None = None) -> None:
        self.socket_path = socket_path
        self.server = server
        self._on_config = on_config
        self._stats = stats
        self.heartbeat_interval = heartbeat_interval
        self.backoff_min = backoff_min
        self.backoff_max = backoff_max
        self.timeout = timeout
        self.version = version
        self.agent_pid = os.getpid() if agent_pid is None else agent_pid
        self.config: Config | None = None
        self.generation: int | None = None
        self.epoch: str | None = None
        self.reconnects = 0
        self.configs_applied = 0
        self.heartbeats = 0
        self.reports_sent = self.reports_dropped = 0
        self._reports: collections.deque[dict[str, Any]] = collections.deque()
        self._reports_lock = threading.Lock()
        self.last_error: str | None = None
        self._connected = threading.Event()
        self._have_config = threading.Condition()
        self._stop = threading.Event()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)    # a wake-up never blocks the caller (a full pipe wakes too)
        self._ack_due = False
        self._sessions = 0
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name=f"vnc-client-{server}")

    # ---- public
    def start(self) -> VncClient:
        self._thread.start()
        return self

    def stop(self, timeout: float = 3.0) -> None:
        self._stop.set()
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass
        if self._thread.is_alive():
            self._thread.join(timeout)
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass

    def report_paths(self, events: list[dict[str, Any]]) -> None:
        """Queue path repair events for the controller (any thread; returns at once)."""
        with self._reports_lock:
            self._reports.extend(events)
            over = len(self._reports) - REPORT_QUEUE
            for _ in range(max(0, over)):
                self._reports.popleft()
            self.reports_dropped += max(0, over)
        try:
            os.write(self._wake_w, b"r")
        except (BlockingIOError, OSError):
            pass

    @property
    def reports_waiting(self) -> int:
        return len(self._reports)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def wait_for(self, predicate: Callable[[Config], bool], timeout: float) -> bool:
        """Wait until ``predicate(config)`` holds for the current config; returns whether it did."""
        deadline = time.monotonic() + timeout
        with self._have_config:
            while self.config is None or not predicate(self.config):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._have_config.wait(left)
            return True

    # ---- background thread
    def _run(self) -> None:
        delay = self.backoff_min
        while not self._stop.is_set():
            try:
                sock = connect_unix(self.socket_path, self.timeout)
            except (VncUnavailable, VncError) as e:
                self._note_error(str(e))
                self._stop.wait(delay)
                delay = min(delay * 2, self.backoff_max)
                continue
            try:
                self._session(sock)
            except rpc.RPCError as e:
                self._note_error(f"controller refused {self.server}: {e.get_value()}")
            except (EOFError, OSError) as e:
                self._note_error(f"lost controller at {self.socket_path}: "
                                 f"{e if str(e) else type(e).__name__}")
            finally:
                established = self._connected.is_set()
                self._connected.clear()
                sock.close()
            if established:
                delay = self.backoff_min
            if not self._stop.is_set():
                self._stop.wait(delay)
                delay = min(delay * 2, self.backoff_max)

    def _note_error(self, message: str) -> None:
        if message != self.last_error:
            log.warning("%s", message)
        self.last_error = message

    def _session(self, sock: socket.socket) -> None:
        ep = rpc.EndPoint(BlockingSocket(sock))
        reply = self._call(ep, REGISTER, [self.version, self.server, self.agent_pid])
        if self._sessions:
            self.reconnects += 1
        self._sessions += 1
        self.epoch = reply["epoch"]
        self.generation = None  # a new session accepts whatever generation the controller has
        self._deliver(reply["generation"], reply["config"])
        self._connected.set()
        self.last_error = None
        log.info("%s registered with controller (epoch %s, generation %s)",
                 self.server, self.epoch, self.generation)
        self._drain(ep)
        next_beat = 0.0
        watched: list[socket.socket | int] = [sock, self._wake_r]
        while not self._stop.is_set():
            self._send_reports(ep)
            now = time.monotonic()
            if self._ack_due or now >= next_beat:
                self._heartbeat(ep)
                next_beat = now + self.heartbeat_interval
                continue
            readable, _, _ = select.select(watched, [], [], next_beat - now)
            if self._wake_r in readable:
                os.read(self._wake_r, 4096)
            if sock in readable:
                if not ep.receive_messages():
                    raise EOFError("controller closed the connection")
                self._drain(ep)

    def _send_reports(self, ep: Any) -> None:
        """What ``report_paths`` queued, in one request; it leaves the queue only once the controller
        answered (a lost session sends it again in the next; the VNC drops the duplicates by id)."""
        with self._reports_lock:
            batch = list(self._reports)
        if not batch:
            return
        self._call(ep, PATH_REPORT, [self.server, batch])
        sent = {id(e) for e in batch}      # the queue may have dropped some of them meanwhile
        with self._reports_lock:
            self._reports = collections.deque(e for e in self._reports if id(e) not in sent)
        self.reports_sent += len(batch)

    def _heartbeat(self, ep: Any) -> None:
        self._ack_due = False
        stats: dict[str, Any] = {}
        if self._stats is not None:
            try:
                stats = self._stats()
            except Exception:  # a broken stats hook must not cost the agent its controller
                log.exception("stats callback failed; heartbeat sent without stats")
        reply = self._call(ep, HEARTBEAT, [self.server, self.generation, stats])
        self.heartbeats += 1
        self._drain(ep)
        # A push lost in transit, or a controller that restarted behind the same socket:
        # fetch the full config rather than trust our copy.
        if reply["epoch"] != self.epoch or reply["server_generation"] > (self.generation or 0):
            full = self._call(ep, GET_CONFIG, [self.server])
            self.epoch = full["epoch"]
            self.generation = None
            self._deliver(full["generation"], full["config"])
            self._drain(ep)

    def _call(self, ep: Any, method: str, params: list[Any]) -> Any:
        msgid = ep.send_request(method, params)
        while True:
            res = ep.get_response(msgid)
            if res is not None:
                result, error = res
                if error is not None:
                    raise rpc.RPCError(error)
                return result
            self._drain(ep)
            if not ep.receive_messages():
                raise EOFError("controller closed the connection")

    def _drain(self, ep: Any) -> None:
        while (note := ep.get_notification()) is not None:
            method, params = note
            if method == CONFIG and isinstance(params, list) and len(params) == 2:
                self._deliver(params[0], params[1])
            else:
                log.debug("ignoring notification %r", method)
        while ep.get_request() is not None:
            pass  # the controller sends no requests in protocol 1

    def _deliver(self, generation: int, config: Config) -> None:
        if self.generation is not None and generation < self.generation:
            return  # older than what this session already delivered
        self.generation = generation
        if config == self.config:
            return
        try:
            self._on_config(generation, config)
        except Exception:
            log.exception("on_config failed for generation %s", generation)
        self.configs_applied += 1
        self._ack_due = True  # heartbeat at once so the controller sees the agent in sync
        with self._have_config:  # published after the callback: waiters see an applied config
            self.config = config
            self._have_config.notify_all()
