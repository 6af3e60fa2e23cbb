"""Switch-port buffers deep enough for bursts: the receive buffers of the packet sockets through
which OVS's userspace datapath reads the testbed's switch ports.

The userspace datapath (no kernel module here) reads each veth port through an AF_PACKET socket
that OVS opens with the system default buffer (net.core.rmem_default, 212,992 bytes: a few GSO
super-packets or ~150 small ones) and has no setting for. Whenever ovs-vswitchd's one thread is
late, what arrives on a full socket is dropped, and only the socket counts it (`ss -0 -m`, skmem
d). Measured in issue 11's flow flood (red1 flooding new flows, a 50 Mbit/s stream and 20 new
connections/s beside it, `experiments/flow_pressure.py`): 281-590 packets lost per 5 s phase on the
leaf port from the flooder's server, among them a neighbour's pings; the vrouters had dropped
none of them. With 4 MB on the testbed's port sockets, interleaved on the same testbed: 0, 0, 0
(against 0, 422, 281 with the default). A hardware leaf buffers megabytes per port, so the deeper
buffer is the faithful model, not a crutch.

Set per socket, only on the testbed's own ports (interfaces named `<prefix>-...`): the socket is
ovs-vswitchd's, so we borrow its descriptor with pidfd_getfd(2) (Linux >= 5.6, root) and set
SO_RCVBUFFORCE on it, which the kernel then holds for OVS (it doubles the value, as for every
SO_RCVBUF). Nothing system-wide changes. Where it cannot be done, the testbed says so and runs
with the default buffers.
"""
from __future__ import annotations

import ctypes
import os
import re
import socket
import subprocess
from dataclasses import dataclass

PORT_RCVBUF = 4 * 1024 * 1024
SO_RCVBUFFORCE = 33
SYS_PIDFD_GETFD = 438  # the same number on every architecture (the unified syscall table)


@dataclass(frozen=True)
class PortSocket:
    ifname: str
    pid: int
    fd: int


def parse_port_sockets(text: str, prefix: str) -> list[PortSocket]:
    """`ss -0 -a -p` -> the packet sockets ovs-vswitchd holds on interfaces named `prefix`..."""
    out = []
    for line in text.splitlines():
        m = re.search(r"\s\*:(\S+)\s.*\"ovs-vswitchd\",pid=(\d+),fd=(\d+)", line)
        if m and m.group(1).startswith(prefix):
            out.append(PortSocket(m.group(1), int(m.group(2)), int(m.group(3))))
    return out


def port_sockets(prefix: str) -> list[PortSocket]:
    r = subprocess.run(["ss", "-0", "-a", "-p"], capture_output=True, text=True)
    return parse_port_sockets(r.stdout, prefix)


def _borrow(pid: int, fd: int) -> int:
    """A descriptor of our own for process `pid`'s `fd` (the same socket)."""
    libc = ctypes.CDLL(None, use_errno=True)
    pidfd = os.pidfd_open(pid)
    try:
        dup = libc.syscall(SYS_PIDFD_GETFD, pidfd, fd, 0)
        if dup < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
        return int(dup)
    finally:
        os.close(pidfd)


def deepen(prefix: str, size: int = PORT_RCVBUF) -> tuple[int, str | None]:
    """Give the testbed's switch-port sockets `size` bytes of receive buffer: (how many, why not
    all of them, or None)."""
    done, why = 0, None
    for ps in port_sockets(f"{prefix}-"):
        try:
            with socket.socket(fileno=_borrow(ps.pid, ps.fd)) as s:
                s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, size)
            done += 1
        except OSError as exc:
            why = why or f"{ps.ifname}: {exc.strerror or exc}"
    return done, why
