"""The VNC's side of the control channel: the msgpack-RPC server (os_ken.lib.rpc) on a unix socket.

What the server and its clients agree on (message names, version, errors, framing) and the
clients themselves live in vrouter/io/control.py, so that the vrouter never imports this module.

Agents run inside Mininet hosts (their own network namespaces) but share the filesystem, so a
pathname unix socket in the run directory reaches them without any traffic leaving a namespace.
The protocol is documented in docs/control-protocol.md.

Threads, not os-ken's hub: one accept thread, and per connection a reader (decodes requests,
runs them under the model lock) and a writer (drains the connection's outgoing queue). Responses
and pushes are queued while the model lock is held, so every agent sees configs in generation
order even when an admin change races a register.

Path reports (``path_report``): a vrouter that repaired a path by itself (vrouter/core/paths.py: an
outer source port toward a peer died, its flows moved) says so; the server keeps per server the
most recent events and the slots whose last word was "dead" (``path_reports``), and logs each. They
are run-time state, not configuration: not persisted, gone with a controller restart.
"""
from __future__ import annotations

import collections
import inspect
import json
import logging
import os
import queue
import socket
import stat
import threading
import time
import uuid

from os_ken.lib import rpc

from controllers import vnc_baremetal, vnc_flood, vnc_records
from controllers.vnc_model import VncModel
from vrouter.io.control import (
    ADD_SERVICE,
    ADD_SERVICE_MEMBER,
    ADD_VM,
    BAREMETAL,
    CONFIG,
    DUMP,
    GET_CONFIG,
    HEARTBEAT,
    LIST_AGENTS,
    MIRROR,
    PATH_REPORT,
    PATH_REPORTS,
    PROTOCOL_VERSION,
    REGISTER,
    REMOVE_SERVICE,
    REMOVE_SERVICE_MEMBER,
    REMOVE_VM,
    SET_FLOATING_IP,
    SET_FLOOD,
    SET_FLOW_LIMIT,
    SET_FLOW_MODE,
    SET_FLOW_RECORDS,
    SET_POLICY,
    SET_SNAT,
    STATE_FILE,
    VncError,
    check_socket_path,
)

_ACCEPT_POLL = 0.2
PATH_EVENTS_KEPT = 256      # per server: the most recent path events
PATH_IDS_KEPT = 4096        # per server: event ids already recorded (a report sent twice counts once)

log = logging.getLogger("vnc.rpc")


class _QueuedSocket:
    """Socket-like for rpc.EndPoint whose sends go to the connection's writer thread."""

    def __init__(self, sock, outq):
        self._sock = sock
        self._outq = outq

    def send(self, data):
        self._outq.put(bytes(data))
        return len(data)

    def recv(self, size):
        return self._sock.recv(size)


class _Connection:
    """One client (agent or admin) connected to the controller."""

    def __init__(self, server, sock, number):
        self.server_obj = server
        self.sock = sock
        self.number = number
        self.outq = queue.Queue()
        self.endpoint = rpc.EndPoint(_QueuedSocket(sock, self.outq))
        self.send_lock = threading.Lock()  # the endpoint's encoder is not thread-safe
        self.agent_server = None
        self.agent_pid = None
        self.connected_at = time.time()
        self.last_heartbeat = None
        self.acked_generation = None
        self.stats = {}
        self.reader = threading.Thread(target=self._read_loop, daemon=True,
                                       name=f"vnc-conn{number}-rd")
        self.writer = threading.Thread(target=self._write_loop, daemon=True,
                                       name=f"vnc-conn{number}-wr")

    def start(self):
        self.writer.start()
        self.reader.start()

    def notify(self, method, params):
        with self.send_lock:
            self.endpoint.send_notification(method, params)

    def respond(self, msgid, error=None, result=None):
        with self.send_lock:
            self.endpoint.send_response(msgid, error=error, result=result)

    def _read_loop(self):
        try:
            while self.endpoint.receive_messages():
                while (req := self.endpoint.get_request()) is not None:
                    self.server_obj._handle(self, req)
                while self.endpoint.get_notification() is not None:
                    pass  # no client notifications are defined; ignore for forward compatibility
        except Exception as e:  # a garbled stream ends this connection, never the controller
            log.warning("connection %d: dropping after bad input: %s", self.number, e)
        finally:
            self.close()
            self.server_obj._forget(self)
            self.writer.join(timeout=2.0)
            self.sock.close()

    def _write_loop(self):
        while True:
            data = self.outq.get()
            if data is None:
                return
            try:
                self.sock.sendall(data)
            except OSError:
                self.close()
                return

    def close(self):
        """Wake both threads; the reader closes the socket once they are done."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.outq.put(None)


class VncServer:
    """The controller's RPC endpoint and its model. Thread-safe; ``stop()`` removes the socket.

    The change methods (``add_vm``...) are also callable in-process, e.g. by the os-ken app.
    """

    def __init__(self, topology, socket_path, prefix="vt", state_path=None, flow=None):
        check_socket_path(socket_path)
        self.socket_path = os.path.abspath(socket_path)
        self.state_path = state_path or os.path.join(os.path.dirname(self.socket_path),
                                                     STATE_FILE)
        self.epoch = uuid.uuid4().hex
        self._lock = threading.RLock()
        self.model = VncModel(topology, prefix=prefix, flow=flow)
        self.restored = self._load_state()
        self._conns = set()
        self._subscribers = {}  # server name -> set of _Connection
        self._listener = None
        self._listener_ino = None
        self._accepter = None
        self._stopping = threading.Event()
        self._conn_numbers = 0
        self._paths = {}    # server -> _PathLog

    # ---- life cycle
    def start(self):
        os.makedirs(os.path.dirname(self.socket_path), exist_ok=True)
        self._clear_stale_socket()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(self.socket_path)
            listener.listen(64)
        except OSError as e:
            listener.close()
            raise VncError(f"cannot listen on {self.socket_path}: {e.strerror}") from None
        listener.settimeout(_ACCEPT_POLL)  # lets the accept loop notice stop()
        self._listener = listener
        self._listener_ino = os.stat(self.socket_path).st_ino
        self._accepter = threading.Thread(target=self._accept_loop, daemon=True,
                                          name="vnc-accept")
        self._accepter.start()
        log.info("controller listening on %s (epoch %s, generation %d%s)", self.socket_path,
                 self.epoch, self.model.generation, ", state restored" if self.restored else "")
        return self

    def stop(self):
        if self._stopping.is_set():
            return
        self._stopping.set()
        if self._listener is not None:
            try:
                self._listener.shutdown(socket.SHUT_RDWR)  # wakes accept() at once on Linux
            except OSError:
                pass
        if self._accepter is not None:
            self._accepter.join(timeout=2.0)
        if self._listener is not None:
            self._listener.close()
            try:
                if os.stat(self.socket_path).st_ino == self._listener_ino:
                    os.unlink(self.socket_path)
            except FileNotFoundError:
                pass
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            conn.close()
        for conn in conns:
            conn.reader.join(timeout=2.0)

    def _clear_stale_socket(self):
        """A socket file left by a killed controller is removed; a live controller is an error."""
        try:
            mode = os.lstat(self.socket_path).st_mode
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(mode):
            raise VncError(f"{self.socket_path} exists and is not a socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.settimeout(1.0)
        try:
            probe.connect(self.socket_path)
        except (ConnectionRefusedError, FileNotFoundError):
            os.unlink(self.socket_path)
            log.info("removed stale controller socket %s", self.socket_path)
            return
        except OSError:
            pass
        finally:
            probe.close()
        raise VncError(f"another controller is already listening at {self.socket_path}")

    def _accept_loop(self):
        while not self._stopping.is_set():
            try:
                sock, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                if not self._stopping.is_set():
                    log.exception("accept failed; controller channel stops accepting")
                return
            sock.setblocking(True)
            with self._lock:
                if self._stopping.is_set():
                    sock.close()
                    return
                self._conn_numbers += 1
                conn = _Connection(self, sock, self._conn_numbers)
                self._conns.add(conn)
            conn.start()

    def _forget(self, conn):
        with self._lock:
            self._conns.discard(conn)
            if conn.agent_server is not None:
                self._subscribers.get(conn.agent_server, set()).discard(conn)
                log.info("agent of %s (pid %s) disconnected", conn.agent_server, conn.agent_pid)

    # ---- persistence
    def _load_state(self):
        try:
            with open(self.state_path, encoding="utf-8") as f:
                state = json.load(f)
        except FileNotFoundError:
            return False
        except (OSError, ValueError) as e:
            log.warning("ignoring unreadable controller state %s: %s", self.state_path, e)
            return False
        try:
            self.model.restore(state)
        except VncError as e:
            log.warning("ignoring controller state %s: %s", self.state_path, e)
            return False
        return True

    def _save_state(self):
        tmp = f"{self.state_path}.tmp{os.getpid()}"
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(self.model.state(), f, indent=1, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.state_path)  # atomic: a crash leaves the old or the new state
        except OSError as e:
            log.error("cannot persist controller state to %s: %s", self.state_path, e)

    # ---- changes (in-process API, also behind the admin RPCs)
    def _apply(self, change_fn, *args):
        with self._lock:
            change = change_fn(*args)
            self._save_state()
            for server in change.servers:
                config = self.model.config_for(server)
                for conn in self._subscribers.get(server, ()):
                    conn.notify(CONFIG, [change.generation, config])
            return {"generation": change.generation, "servers": list(change.servers)}

    def add_vm(self, name, network, server, address, mac=None):
        return self._apply(self.model.add_vm, name, network, server, address, mac)

    def remove_vm(self, name):
        return self._apply(self.model.remove_vm, name)

    def set_policy(self, network, policy):
        return self._apply(self.model.set_policy, network, policy)

    def set_flow_mode(self, mode):
        return self._apply(self.model.set_flow_mode, mode)

    def set_flow_limit(self, target_kind, name, limit):
        return self._apply(self.model.set_flow_limit, target_kind, name, limit)

    def set_floating_ip(self, vm, address):
        return self._apply(self.model.set_floating_ip, vm, address)

    def set_snat(self, network, on):
        return self._apply(self.model.set_snat, network, on)
    def add_service(self, name, network, address, members):
        return self._apply(self.model.add_service, name, network, address, members)

    def remove_service(self, name):
        return self._apply(self.model.remove_service, name)

    def add_service_member(self, name, vm):
        return self._apply(self.model.add_service_member, name, vm)

    def remove_service_member(self, name, vm):
        return self._apply(self.model.remove_service_member, name, vm)

    def list_agents(self):
        now = time.time()
        with self._lock:
            return sorted(({
                "server": c.agent_server, "pid": c.agent_pid,
                "connected_for": round(now - c.connected_at, 3),
                "heartbeat_age": (None if c.last_heartbeat is None
                                  else round(now - c.last_heartbeat, 3)),
                "generation": c.acked_generation,
                "in_sync": (c.acked_generation is not None and
                            c.acked_generation >= self.model.changed_at(c.agent_server)),
                "stats": c.stats,
            } for c in self._conns if c.agent_server is not None),
                key=lambda a: (a["server"], a["pid"] or 0))

    def path_reports(self, server=None):
        with self._lock:
            if server is not None and server not in self.model.servers():
                raise VncError(f"unknown server {server!r}")
            names = [server] if server is not None else sorted(self._paths)
            return {n: self._paths[n].describe() if n in self._paths else _PathLog().describe() for n in names}

    def dump(self):
        with self._lock:
            out = self.model.dump()
            out["epoch"] = self.epoch
            out["protocol"] = PROTOCOL_VERSION
            return out

    # ---- RPC dispatch
    def _handle(self, conn, request):
        try:
            msgid, method, params = request
        except (TypeError, ValueError):
            log.warning("connection %d: malformed request ignored", conn.number)
            return
        handler = self._HANDLERS.get(method)
        with self._lock:  # the response is queued under the lock: see the module docstring
            try:
                if handler is None:
                    raise VncError(f"unknown method {method!r}")
                if not isinstance(params, list):
                    raise VncError(f"{method}: parameters must be an array")
                try:
                    inspect.signature(handler).bind(self, conn, *params)
                except TypeError:
                    raise VncError(f"{method}: wrong number of parameters") from None
                result = handler(self, conn, *params)
            except VncError as e:
                conn.respond(msgid, error=str(e))
            except Exception as e:
                log.exception("%s failed", method)
                conn.respond(msgid, error=f"internal controller error in {method}: {e}")
            else:
                conn.respond(msgid, result=result)

    def _rpc_register(self, conn, version, server, agent_pid):
        if version != PROTOCOL_VERSION:
            raise VncError(f"protocol version mismatch: agent speaks {version}, "
                           f"controller speaks {PROTOCOL_VERSION}")
        config = self.model.config_for(server)
        if conn.agent_server is not None and conn.agent_server != server:
            self._subscribers.get(conn.agent_server, set()).discard(conn)
        conn.agent_server, conn.agent_pid = server, agent_pid
        self._subscribers.setdefault(server, set()).add(conn)
        log.info("agent of %s (pid %s) registered", server, agent_pid)
        return {"protocol": PROTOCOL_VERSION, "epoch": self.epoch,
                "generation": self.model.generation, "config": config}

    def _rpc_get_config(self, conn, server):
        return {"epoch": self.epoch, "generation": self.model.generation,
                "config": self.model.config_for(server)}

    def _rpc_heartbeat(self, conn, server, generation, stats):
        if conn.agent_server != server:
            raise VncError(f"heartbeat for {server!r} on a connection not registered for it")
        conn.last_heartbeat = time.time()
        conn.acked_generation = generation
        conn.stats = stats if isinstance(stats, dict) else {}
        return {"epoch": self.epoch, "generation": self.model.generation,
                "server_generation": self.model.changed_at(server)}

    def _rpc_path_report(self, conn, server, events):
        if conn.agent_server != server:
            raise VncError(f"path report for {server!r} on a connection not registered for it")
        if not isinstance(events, list):
            raise VncError("path_report: events must be an array")
        log_ = self._paths.setdefault(server, _PathLog())
        recorded = 0
        for ev in events:
            if isinstance(ev, dict) and log_.add(ev):
                recorded += 1
                log.info("vrouter %s: path via source port %s to %s (%s, slot %s) %s, %s flows", server,
                         ev.get("port"), ev.get("peer"), ev.get("encap"), ev.get("slot"), ev.get("event"),
                         ev.get("flows"))
        return {"recorded": recorded}

    def _rpc_path_reports(self, conn, server=None):
        return self.path_reports(server)

    def _rpc_add_vm(self, conn, name, network, server, address, mac=None):
        return self.add_vm(name, network, server, address, mac)

    def _rpc_remove_vm(self, conn, name):
        return self.remove_vm(name)

    def _rpc_set_policy(self, conn, network, policy):
        return self.set_policy(network, policy)

    def _rpc_set_flow_mode(self, conn, mode):
        return self.set_flow_mode(mode)

    def _rpc_set_flow_limit(self, conn, target_kind, name, limit):
        return self.set_flow_limit(target_kind, name, limit)

    def _rpc_set_floating_ip(self, conn, vm, address):
        return self.set_floating_ip(vm, address)

    def _rpc_set_snat(self, conn, network, on):
        return self.set_snat(network, on)
    def _rpc_add_service(self, conn, name, network, address, members):
        return self.add_service(name, network, address, members)

    def _rpc_remove_service(self, conn, name):
        return self.remove_service(name)

    def _rpc_add_service_member(self, conn, name, vm):
        return self.add_service_member(name, vm)

    def _rpc_remove_service_member(self, conn, name, vm):
        return self.remove_service_member(name, vm)

    def _rpc_set_flood(self, conn, changes):
        return self._apply(vnc_flood.set_flood, self.model, changes)
    def _rpc_set_flow_records(self, conn, on):      # controllers/vnc_records.py
        return self._apply(vnc_records.set_records, self.model, on)
    def _rpc_mirror(self, conn, op, args=None):    # controllers/vnc_mirror.py
        return self.model.mirrors.list() if op == "list" else self._apply(self.model.mirrors.change, op, args)
    def _rpc_baremetal(self, conn, op, args=None):    # controllers/vnc_baremetal.py
        return vnc_baremetal.listing(self.model) if op == "list" else self._apply(vnc_baremetal.change, self.model,
                                                                                  op, args)

    def _rpc_list_agents(self, conn):
        return self.list_agents()

    def _rpc_dump(self, conn):
        return self.dump()

    _HANDLERS = {
        REGISTER: _rpc_register, GET_CONFIG: _rpc_get_config, HEARTBEAT: _rpc_heartbeat,
        PATH_REPORT: _rpc_path_report, PATH_REPORTS: _rpc_path_reports,
        ADD_VM: _rpc_add_vm, REMOVE_VM: _rpc_remove_vm, SET_POLICY: _rpc_set_policy,
        SET_FLOW_MODE: _rpc_set_flow_mode, SET_FLOW_LIMIT: _rpc_set_flow_limit,
        SET_FLOATING_IP: _rpc_set_floating_ip, SET_SNAT: _rpc_set_snat,
        LIST_AGENTS: _rpc_list_agents, DUMP: _rpc_dump,
        ADD_SERVICE: _rpc_add_service, REMOVE_SERVICE: _rpc_remove_service,
        ADD_SERVICE_MEMBER: _rpc_add_service_member, REMOVE_SERVICE_MEMBER: _rpc_remove_service_member,
        SET_FLOOD: _rpc_set_flood, SET_FLOW_RECORDS: _rpc_set_flow_records,
        MIRROR: _rpc_mirror, BAREMETAL: _rpc_baremetal,
    }


class _PathLog:
    """One server's path reports: recent events, the slots last reported dead, ids seen."""

    def __init__(self):
        self.events = collections.deque(maxlen=PATH_EVENTS_KEPT)
        self.last = {}      # (peer, encap, slot) -> its last event
        self.ids = collections.OrderedDict()
        self.received = 0

    def add(self, ev) -> bool:
        """Record one event; False for one recorded already (same id)."""
        eid = ev.get("id")
        if eid in self.ids:
            return False
        self.ids[eid] = None
        if len(self.ids) > PATH_IDS_KEPT:
            self.ids.popitem(last=False)
        self.events.append(ev)
        self.last[(ev.get("peer"), ev.get("encap"), ev.get("slot"))] = ev
        self.received += 1
        return True

    def describe(self):
        dead = [ev for _k, ev in sorted(self.last.items(), key=lambda kv: str(kv[0])) if ev.get("event") == "dead"]
        return {"events": list(self.events), "dead": dead, "received": self.received}


def start_vnc_server(topology_path, socket_path, prefix="vt", state_path=None, flow=None):
    """Build the model from the topology (path or dict), restore saved state, start serving.

    Returns the running ``VncServer``; call ``.stop()`` on shutdown. Raises ``VncError``.
    """
    return VncServer(topology_path, socket_path, prefix=prefix, state_path=state_path,
                     flow=flow).start()

