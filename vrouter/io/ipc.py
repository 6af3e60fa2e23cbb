"""Local sockets of one vrouter: where they live in the run directory and how messages are framed.

  <rundir>/vr/<server>/agent.sock       SOCK_SEQPACKET, forwarder listens, agent connects.
                                        One msgpack map per datagram (SEQPACKET keeps boundaries).
  <rundir>/vr/<server>/introspect.sock  SOCK_STREAM, forwarder listens; request/reply msgpack maps
                                        on a stream (replies such as `flow -l` can be large).
  <rundir>/overlay/vms.json             which network namespace each VM interface (TAP) belongs in.
"""
from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import msgpack

UNIX_PATH_MAX = 107
SEQPACKET_MAX = 4 << 20  # largest agent<->forwarder message (a config push); SO_SNDBUF is raised to fit
SO_SNDBUFFORCE, SO_RCVBUFFORCE = 32, 33  # Linux values; the socket module does not name them


class IpcError(Exception):
    """A local socket could not be used; one line for the operator."""


def server_dir(rundir: str | Path, server: str) -> Path:
    return Path(rundir) / "vr" / server


def agent_socket(rundir, server) -> Path:
    return _checked(server_dir(rundir, server) / "agent.sock")


def introspect_socket(rundir, server) -> Path:
    return _checked(server_dir(rundir, server) / "introspect.sock")


def vm_namespaces_file(rundir) -> Path:
    return Path(rundir) / "overlay" / "vms.json"


def _checked(path: Path) -> Path:
    if len(os.fsencode(path)) > UNIX_PATH_MAX:
        raise IpcError(f"socket path {path} is longer than {UNIX_PATH_MAX} bytes: use a shorter run directory")
    return path


def read_vm_namespaces(rundir) -> dict:
    """{tap: {"vm": name, "netns": pid (int) or named netns (str)}}; empty if not written yet."""
    try:
        return json.loads(vm_namespaces_file(rundir).read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise IpcError(f"cannot read {vm_namespaces_file(rundir)}: {exc}") from None


def update_vm_namespaces(rundir, add: dict | None = None, remove: tuple = ()) -> None:
    """Atomic read-modify-write (rename), so a forwarder never reads half a file."""
    path = vm_namespaces_file(rundir)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = read_vm_namespaces(rundir)
    data.update(add or {})
    for tap in remove:
        data.pop(tap, None)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    os.replace(tmp, path)


def pack(msg: dict) -> bytes:
    return msgpack.packb(msg, use_bin_type=True)


def unpack(data: bytes) -> dict:
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


def listen(path: Path, kind: int) -> socket.socket:
    """Listening unix socket at `path`, replacing a stale one left by a crashed predecessor."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    s = socket.socket(socket.AF_UNIX, kind)
    s.bind(str(path))
    s.listen(8)
    s.setblocking(False)
    return s


def tune_seqpacket(s: socket.socket) -> None:
    # A datagram must fit the send buffer whole; the *FORCE variants (root) pass net.core.wmem_max.
    for force, plain in ((SO_SNDBUFFORCE, socket.SO_SNDBUF), (SO_RCVBUFFORCE, socket.SO_RCVBUF)):
        try:
            s.setsockopt(socket.SOL_SOCKET, force, SEQPACKET_MAX)
        except PermissionError:
            s.setsockopt(socket.SOL_SOCKET, plain, SEQPACKET_MAX)


def request(path: Path, msg: dict, timeout: float = 5.0) -> dict:
    """One request/reply on a stream socket (the introspection protocol)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        try:
            s.connect(str(path))
            s.sendall(pack(msg))
        except (FileNotFoundError, ConnectionError):
            raise IpcError(f"no vrouter is listening on {path} (is the testbed up?)") from None
        unpacker = msgpack.Unpacker(raw=False, strict_map_key=False, max_buffer_size=256 << 20)
        while True:
            try:
                chunk = s.recv(1 << 20)
            except TimeoutError:
                raise IpcError(f"vrouter on {path} did not answer within {timeout:g} s") from None
            except ConnectionError:
                chunk = b""
            if not chunk:
                raise IpcError(f"vrouter on {path} closed the connection without an answer")
            unpacker.feed(chunk)
            for reply in unpacker:
                return reply
    finally:
        s.close()
