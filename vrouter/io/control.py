"""The control protocol between the VNC and the vrouter agents: what both sides agree on, in one place.

The controller's server (controllers/vnc_rpc.py) and its clients - the agent's ``VncClient``
(vrouter/io/vnc_client.py) and the ``AdminClient`` below for the CLI and the experiments - import
the message names, the result shapes, the protocol version, the errors and the socket framing from
here, so neither side imports the other. This module imports neither. Transport: msgpack-RPC with
the codec of ``os_ken.lib.rpc`` over a unix stream socket in the run directory; every message is
documented in docs/control-protocol.md.
"""
from __future__ import annotations

import os
import socket
import threading
from types import TracebackType
from typing import Any, TypedDict, cast

from os_ken.lib import rpc  # type: ignore[import-untyped]

PROTOCOL_VERSION = 1
# The controller persists its overlay state under this name next to its socket; the testbed
# removes it at the start of a run so that a new run starts from its topology.
STATE_FILE = "vnc-state.json"
SUN_PATH_MAX = 107  # bytes of a pathname unix socket address (sun_path minus the NUL)

# Agent -> controller requests.
REGISTER = "register"
GET_CONFIG = "get_config"
HEARTBEAT = "heartbeat"
PATH_REPORT = "path_report"     # a vrouter repaired a path itself (vrouter/core/paths.py): dead/alive events
AGENT_METHODS = (REGISTER, GET_CONFIG, HEARTBEAT, PATH_REPORT)
# Admin requests (CLI, experiments).
ADD_VM = "add_vm"
REMOVE_VM = "remove_vm"
SET_POLICY = "set_policy"
SET_FLOW_MODE = "set_flow_mode"
SET_FLOW_LIMIT = "set_flow_limit"
SET_FLOATING_IP = "set_floating_ip"
SET_SNAT = "set_snat"
LIST_AGENTS = "list_agents"
DUMP = "dump"
PATH_REPORTS = "path_reports"
ADD_SERVICE = "add_service"                 # a load-balanced address (vrouter/core/ecmp.py)
REMOVE_SERVICE = "remove_service"
ADD_SERVICE_MEMBER = "add_service_member"
REMOVE_SERVICE_MEMBER = "remove_service_member"
SET_FLOOD = "set_flood"                     # the storm limit, flooding on/off (controllers/vnc_flood.py)
SET_FLOW_RECORDS = "set_flow_records"       # flow records on|off (controllers/vnc_records.py)
MIRROR = "mirror"                           # mirror sessions: add | remove | list (controllers/vnc_mirror.py)
BAREMETAL = "baremetal"                     # bare-metal hosts: add | remove | list (controllers/vnc_baremetal.py)
ADMIN_METHODS = (ADD_VM, REMOVE_VM, SET_POLICY, SET_FLOW_MODE, SET_FLOW_LIMIT, SET_FLOATING_IP, SET_SNAT,
                 LIST_AGENTS, DUMP, PATH_REPORTS, ADD_SERVICE, REMOVE_SERVICE, ADD_SERVICE_MEMBER,
                 REMOVE_SERVICE_MEMBER, SET_FLOOD, SET_FLOW_RECORDS, MIRROR, BAREMETAL)
# Controller -> agent notification: ``[generation, config]`` of that agent's server.
CONFIG = "config"

Config = dict[str, Any]  # the dict of ``VrouterConfig.from_dict`` (docs/vrouter-core-api.md)


class RegisterReply(TypedDict):
    protocol: int
    epoch: str
    generation: int
    config: Config


class ConfigReply(TypedDict):
    epoch: str
    generation: int
    config: Config


class HeartbeatReply(TypedDict):
    epoch: str
    generation: int
    server_generation: int


class PathEvent(TypedDict):
    """One path repair event of a vrouter, as the agent reports it (``path_report``) and the VNC keeps it."""
    id: str             # unique per vrouter incarnation: a report sent twice is recorded once
    event: str          # "dead" | "alive"
    peer: str           # the tunnel peer's underlay address
    encap: str
    slot: int
    port: int           # the outer source port that died (dead) or that gets through again (alive)
    flows: int          # flow entries on the slot when it happened
    time: float         # wall clock (the vrouter's)


class PathReports(TypedDict):
    """What the VNC recorded of one server's path reports (``path_reports``)."""
    events: list[PathEvent]     # the most recent, oldest first
    dead: list[PathEvent]       # per (peer, encap, slot) whose last event is "dead": that event
    received: int               # events recorded (duplicates not counted)


class ChangeReply(TypedDict):
    """Result of every accepted admin change: the servers listed each got a ``config`` push."""
    generation: int
    servers: list[str]


class AgentInfo(TypedDict):
    server: str
    pid: int | None
    connected_for: float
    heartbeat_age: float | None
    generation: int | None
    in_sync: bool
    stats: dict[str, Any]


class VncError(Exception):
    """A bad topology or a rejected request or change; the message is one line for the operator."""


class VncUnavailable(VncError):
    """The controller cannot be reached (not started, stopped, or connection lost)."""


def _unavailable(path: str) -> VncUnavailable:
    return VncUnavailable(f"controller not reachable at {path}: is the testbed up?")


def check_socket_path(path: str) -> None:
    """Refuse a socket path the kernel cannot bind or connect (it would fail with a vague error)."""
    if len(os.fsencode(path)) > SUN_PATH_MAX:
        raise VncError(f"socket path {path} is longer than {SUN_PATH_MAX} bytes; "
                       "use a shorter run directory")


class BlockingSocket:
    """Socket-like for rpc.EndPoint/Client that never leaves a message half sent.

    EndPoint sends once and keeps the rest for a later call that a pure client never makes,
    so a large request could stall; sendall avoids that.
    """

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def send(self, data: bytes) -> int:
        self._sock.sendall(data)
        return len(data)

    def recv(self, size: int) -> bytes:
        return self._sock.recv(size)

    def fileno(self) -> int:
        return self._sock.fileno()


def connect_unix(path: str, timeout: float) -> socket.socket:
    """A connected blocking unix socket, or ``VncUnavailable``."""
    check_socket_path(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(path)
    except OSError:
        sock.close()
        raise _unavailable(path) from None
    return sock


class AdminClient:
    """Synchronous client for the admin requests (the CLI and experiments use it).

    Raises ``VncUnavailable`` when nothing listens or the controller went away during a call, and
    ``VncError`` with the controller's one-line message for a rejected request. It does not
    reconnect by itself.
    """

    def __init__(self, socket_path: str, timeout: float = 5.0) -> None:
        self.socket_path = socket_path
        self._sock = connect_unix(socket_path, timeout)
        self._client = rpc.Client(BlockingSocket(self._sock))
        self._lock = threading.Lock()

    def call(self, method: str, *params: Any) -> Any:
        with self._lock:
            try:
                return self._client.call(method, list(params))
            except rpc.RPCError as e:
                raise VncError(str(e.get_value())) from None
            except (EOFError, OSError):
                raise _unavailable(self.socket_path) from None

    def add_vm(self, name: str, network: str, server: str, address: str,
               mac: str | None = None) -> ChangeReply:
        return cast("ChangeReply", self.call(ADD_VM, name, network, server, address, mac))

    def remove_vm(self, name: str) -> ChangeReply:
        return cast("ChangeReply", self.call(REMOVE_VM, name))

    def set_policy(self, network: str, policy: dict[str, Any] | None) -> ChangeReply:
        return cast("ChangeReply", self.call(SET_POLICY, network, policy))

    def set_flow_mode(self, mode: str) -> ChangeReply:
        return cast("ChangeReply", self.call(SET_FLOW_MODE, mode))

    def set_flow_limit(self, target_kind: str, name: str | None, limit: int | None) -> ChangeReply:
        """``target_kind``: "vm" | "network" (``name`` is the VM's or network's) | "default-vm" |
        "default-network" (``name`` unused, pass None); ``limit`` >= 1, or None for the default."""
        return cast("ChangeReply", self.call(SET_FLOW_LIMIT, target_kind, name, limit))

    def set_floating_ip(self, vm: str, address: str | None) -> ChangeReply:
        """``vm``'s floating IP (a gateway topology's floating range), or none (None)."""
        return cast("ChangeReply", self.call(SET_FLOATING_IP, vm, address))

    def set_snat(self, network: str, on: bool) -> ChangeReply:
        return cast("ChangeReply", self.call(SET_SNAT, network, on))
    def add_service(self, name: str, network: str, address: str, members: list[str]) -> ChangeReply:
        return cast("ChangeReply", self.call(ADD_SERVICE, name, network, address, members))

    def remove_service(self, name: str) -> ChangeReply:
        return cast("ChangeReply", self.call(REMOVE_SERVICE, name))

    def add_service_member(self, name: str, vm: str) -> ChangeReply:
        return cast("ChangeReply", self.call(ADD_SERVICE_MEMBER, name, vm))

    def remove_service_member(self, name: str, vm: str) -> ChangeReply:
        return cast("ChangeReply", self.call(REMOVE_SERVICE_MEMBER, name, vm))

    def set_flood(self, changes: dict[str, Any]) -> ChangeReply:
        """Some of the flood settings: enabled (bool), rate (frames/s per VM), burst, mac_age (s)."""
        return cast("ChangeReply", self.call(SET_FLOOD, changes))

    def set_flow_records(self, on: bool) -> ChangeReply:
        """Every vrouter's flow records on (True) or off (False)."""
        return cast("ChangeReply", self.call(SET_FLOW_RECORDS, on))
    def mirror(self, op: str, args: Any = None) -> Any:
        """A mirror session added ({name, source, to, ...}) or removed (its name): a ChangeReply; list: the sessions."""
        return self.call(MIRROR, op, args)

    def baremetal(self, op: str, args: Any = None) -> Any:
        """A bare-metal host joined ({name, leaf, address, network, overlay_address[, mac]}) or taken out
        (its name): a ChangeReply; list: {hosts: the joined ones with their entries, unjoined: [...]}."""
        return self.call(BAREMETAL, op, args)

    def list_agents(self) -> list[AgentInfo]:
        return cast("list[AgentInfo]", self.call(LIST_AGENTS))

    def dump(self) -> dict[str, Any]:
        return cast("dict[str, Any]", self.call(DUMP))

    def path_reports(self, server: str | None = None) -> dict[str, PathReports]:
        """{server: what the VNC recorded of its path reports}; one server, or all (None)."""
        return cast("dict[str, PathReports]", self.call(PATH_REPORTS, server))

    def get_config(self, server: str) -> ConfigReply:
        return cast("ConfigReply", self.call(GET_CONFIG, server))

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
