"""Local sockets of one vrouter: where they live in the run directory and how messages are framed.

  <rundir>/vr/<server>/agent.sock       SOCK_SEQPACKET, forwarder listens, agent connects.
                                        One msgpack map per datagram (SEQPACKET keeps boundaries).
  <rundir>/vr/<server>/introspect.sock  SOCK_STREAM, forwarder listens; request/reply msgpack maps
                                        on a stream (replies such as `flow -l` can be large).
  <rundir>/vr/<server>/agent-config.json  the agent's last configuration from the VNC (JSON), which a
                                        restarted agent starts from if the VNC does not answer.
  <rundir>/overlay/vms.json             which network namespace each VM interface (TAP) belongs in.
"""
from __future__ import annotations

import collections
import json
import os
import socket
import sys
from pathlib import Path

import msgpack

UNIX_PATH_MAX = 107
SEQPACKET_MAX = 4 << 20  # largest agent<->forwarder message (a config push); SO_SNDBUF is raised to fit
WRITER_QUEUE_MAX = 1024  # messages a SeqpacketWriter holds while its socket is full; beyond, dropped
SO_SNDBUFFORCE, SO_RCVBUFFORCE = 32, 33  # Linux values; the socket module does not name them


class IpcError(Exception):
    """A local socket could not be used; one line for the operator."""


def server_dir(rundir: str | Path, server: str) -> Path:
    return Path(rundir) / "vr" / server


def agent_socket(rundir, server) -> Path:
    return _checked(server_dir(rundir, server) / "agent.sock")


def introspect_socket(rundir, server) -> Path:
    return _checked(server_dir(rundir, server) / "introspect.sock")


def config_cache(rundir, server) -> Path:
    return server_dir(rundir, server) / "agent-config.json"


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


def recv_message(sock: socket.socket, buf: bytearray, max_fds: int = 0) -> tuple[dict | None, list[int]]:
    """One message from a SEQPACKET socket into `buf` (kept by the caller: a 4 MB buffer allocated per
    read costs more than the read), with the fds passed along it (SCM_RIGHTS, at most `max_fds`);
    (None, []) once the peer closed the socket. BlockingIOError when nothing waits."""
    n, anc, _flags, _addr = sock.recvmsg_into([buf], socket.CMSG_SPACE(max_fds * 4) if max_fds else 0)
    fds: list[int] = []
    for level, kind, data in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds += [int.from_bytes(data[i:i + 4], sys.byteorder, signed=True) for i in range(0, len(data) - 3, 4)]
    if not n:
        for fd in fds:
            os.close(fd)
        return None, []
    return unpack(memoryview(buf)[:n]), fds


def pack_batches(head: dict, key: str, items: list, limit: int = SEQPACKET_MAX) -> list[tuple[bytes, int]]:
    """`{**head, key: items}` as messages of at most `limit` bytes: [(message, items in it)]. One
    message when the batch fits (the usual case, packed once); else the items are halved until each
    part fits, every part with the same `head`."""
    data = pack({**head, key: items})
    if len(data) <= limit:
        return [(data, len(items))]
    if len(items) < 2:
        raise IpcError(f"one {key} item packs to {len(data)} bytes, more than a {limit}-byte message")
    half = len(items) // 2
    return pack_batches(head, key, items[:half], limit) + pack_batches(head, key, items[half:], limit)


class SeqpacketWriter:
    """The sending side of one non-blocking SOCK_SEQPACKET socket, which never blocks its process:
    a message the socket cannot take now (EAGAIN) waits here, and so does everything after it, in
    order, until `flush` gets them out once the socket is writable (the holder watches for that
    while `pending`). At most `limit` messages wait; more are dropped and counted (`dropped`, in
    items). Errors other than EAGAIN are raised: the channel is broken."""

    def __init__(self, sock: socket.socket, limit: int = WRITER_QUEUE_MAX):
        self.sock = sock
        self.limit = limit
        self.queue: collections.deque[tuple[bytes, int]] = collections.deque()
        self.queued_items = 0      # items (punts, decisions) in the waiting messages
        self.blocked = 0           # sends that would have blocked
        self.dropped = 0           # items dropped because `limit` messages were waiting

    @property
    def pending(self) -> bool:
        return bool(self.queue)

    def send(self, data: bytes, items: int = 1) -> bool:
        """Send now, or queue behind what waits; False if the message had to wait (or was dropped)."""
        if not self.queue:
            try:
                self.sock.send(data)
                return True
            except BlockingIOError:
                self.blocked += 1
        if len(self.queue) >= self.limit:
            self.dropped += items
            return False
        self.queue.append((data, items))
        self.queued_items += items
        return False

    def flush(self) -> bool:
        """Send what waits, in order, as far as the socket takes it; True once nothing is left."""
        q = self.queue
        while q:
            data, items = q[0]
            try:
                self.sock.send(data)
            except BlockingIOError:
                self.blocked += 1
                return False
            q.popleft()
            self.queued_items -= items
        return True


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
