"""What one userspace process hop costs on this machine: the floor under the overlay's RTT overhead.

A round trip VM to VM through our overlay crosses four vrouter process hops (out and in on each
side), each a wake-up, a read and a send in Python; the underlay and kernel VXLAN cross none. On a
VM whose idle vCPUs halt, the first system calls after a pause are slow, so the hop costs far more
at ping spacing than back to back. This measures it directly on loopback, with one Python client
for both sides of the subtraction:

    hop = median RTT(UDP echo by a Python process) - median RTT(ICMP echo by the kernel)

both at the same spacing as the bench's pings, alternated one by one. Four of them are what no
Python overlay can go below here. Needs root (raw ICMP socket); traffic stays on 127.0.0.1.
"""
from __future__ import annotations

import os
import selectors
import socket
import statistics
import struct
import time

from vrouter.core.codec.ipv4 import checksum

LOOPBACK = "127.0.0.1"


def echo_request(ident: int, seq: int) -> bytes:
    """An ICMP echo request (type 8) with its checksum."""
    head = struct.pack("!BBHHH", 8, 0, 0, ident, seq) + b"vnet-hop"
    return head[:2] + struct.pack("!H", checksum(head)) + head[4:]


def _kernel_echo(s: socket.socket, ident: int, seq: int) -> float:
    """One ICMP echo to 127.0.0.1 answered by the kernel: its RTT in us."""
    pkt = echo_request(ident, seq)
    t = time.perf_counter()
    s.sendto(pkt, (LOOPBACK, 0))
    while True:  # the raw socket also sees our own request and other echoes
        d = s.recv(2048)
        ihl = (d[0] & 0x0F) * 4
        if d[ihl] == 0 and struct.unpack_from("!HH", d, ihl + 4) == (ident, seq):
            return (time.perf_counter() - t) * 1e6


def _python_echo(client: socket.socket, where: tuple) -> float:
    """One UDP datagram echoed by the forked Python process: its RTT in us."""
    t = time.perf_counter()
    client.sendto(b"vnet-hop-floor!!", where)
    client.recv(2048)
    return (time.perf_counter() - t) * 1e6


def _echo_forever(sock: socket.socket) -> None:
    # Same shape as the forwarder's loop: a selector wait, a non-blocking read, a send.
    sock.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(sock, selectors.EVENT_READ)
    while True:
        sel.select()
        data, addr = sock.recvfrom(2048)
        if data == b"quit":
            return
        sock.sendto(data, addr)


def _with_echo_process(body):
    """Run ``body(client, where)`` against a forked Python UDP echo process on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as echo:
        client.bind((LOOPBACK, 0))
        echo.bind((LOOPBACK, 0))
        client.settimeout(1.0)
        where = echo.getsockname()
        pid = os.fork()
        if pid == 0:
            try:
                _echo_forever(echo)
            finally:
                os._exit(0)
        try:
            return body(client, where)
        finally:
            client.sendto(b"quit", where)
            os.waitpid(pid, 0)


def interleaved_rtts(count: int, gap: float) -> tuple[list[float], list[float]]:
    """(kernel echo RTTs, Python echo RTTs), alternated one by one with `gap` before each, so both
    sides see the machine in the same state (back to back runs of each differed by more than the hop
    on this shared VM, and once gave a negative hop)."""
    ident = os.getpid() & 0xFFFF

    def body(client: socket.socket, where: tuple) -> tuple[list[float], list[float]]:
        kernel, python = [], []
        with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) as s:
            s.settimeout(1.0)
            for seq in range(count):
                time.sleep(gap)
                kernel.append(_kernel_echo(s, ident, seq))
                time.sleep(gap)
                python.append(_python_echo(client, where))
        return kernel, python
    return _with_echo_process(body)


def hop_floor_us(count: int = 50, gap: float = 0.02) -> dict:
    """{'kernel_echo', 'python_echo', 'hop'} medians in us; 'hop' is one Python process hop."""
    kernel_rtts, python_rtts = interleaved_rtts(count, gap)
    kernel, python = statistics.median(kernel_rtts), statistics.median(python_rtts)
    return {"kernel_echo": kernel, "python_echo": python, "hop": python - kernel}
