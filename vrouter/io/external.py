"""The external port of a vrouter: a TUN device in the server's namespace for the default network.

Why a TUN and not a raw socket: NAT flows (vrouter/core/nat.py) leave without a tunnel, as plain IP
packets whose source is a floating IP or the server's SNAT address, neither of them an address of the
server's kernel. Written to a TUN, such a packet is routed by the server's kernel (IP forwarding on,
the default route toward the gateway: testbed/gateway.py), which also does ARP and fragmentation; and
packets to the floating range that the gateway routes to this server are forwarded by the kernel into
the TUN (a route of the floating range to it), where the vrouter reads them. A raw socket would see
them too, but the kernel would also answer them itself (a TCP RST for a SNAT port it knows nothing of).

Checksums and super-frames: a VM's frames may carry a partial TCP/UDP checksum or be TSO super-frames
(the TAPs' offloads); the TUN has no vnet header to say so, so `send` completes partial checksums
and cuts super-frames at the MSS here (core/gso.py), which only NAT flows pay for.
"""
from __future__ import annotations

import collections
import errno
import fcntl
import os
import struct
import subprocess

from vrouter.core import gso
from vrouter.core.codec.errors import Malformed
from vrouter.io.tap import IFF_NO_PI, TUNSETIFF, VIF_WEIGHT, TapError

IFF_TUN = 0x0001
NAME = "vgw0"               # inside the server's namespace only: never seen by another testbed
MTU = 1500
_IP_TCP = 6


class External:
    """The TUN device and its counters; `floating`: the CIDR routed into it."""

    def __init__(self, floating: str, name: str = NAME) -> None:
        self.name, self.floating = name, floating
        self.counters: collections.Counter = collections.Counter()
        self.fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            fcntl.ioctl(self.fd, TUNSETIFF, struct.pack("16sH22x", name.encode(), IFF_TUN | IFF_NO_PI))
            self._ip("link", "set", name, "up")
            self._ip("route", "replace", floating, "dev", name)
        except (OSError, TapError) as exc:
            os.close(self.fd)
            raise TapError(f"external port {name}: {getattr(exc, 'strerror', None) or exc}") from None
        # The kernel forwards between the underlay and the TUN; it must not filter by reverse path
        # the replies to a floating IP (their source is routed via the default route, not the TUN).
        for key in ("all", name):
            _sysctl(f"net/ipv4/conf/{key}/rp_filter", "0")
        _sysctl("net/ipv4/ip_forward", "1")

    @staticmethod
    def _ip(*argv: str) -> None:
        r = subprocess.run(["ip", *argv], capture_output=True, text=True)
        if r.returncode != 0:
            raise TapError(f"ip {' '.join(argv)}: {r.stderr.strip()}")

    def read(self, max_packets: int = VIF_WEIGHT) -> list[bytes]:
        out = []
        for _ in range(max_packets):
            try:
                out.append(os.read(self.fd, 65536))
            except BlockingIOError:
                break
        self.counters["rx_packets"] += len(out)
        return out

    def send(self, packet: bytes, mss: int = 0) -> None:
        """Write one translated IPv4 packet: cut at ``mss`` (a TSO super-frame, or one longer than
        the MTU), partial checksums completed."""
        if not mss and len(packet) > MTU and packet[9] == _IP_TCP:
            mss = MTU - 40
        parts = gso.segments(b"", packet, mss) if mss and packet[9] == _IP_TCP else [packet]
        for p in parts:
            try:
                if gso.partial_offset(p) is not None:
                    p = gso.complete_checksum(p)
                os.write(self.fd, p)
                self.counters["tx_packets"] += 1
            except Malformed:
                self.counters["tx_malformed"] += 1
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EIO, errno.ENOBUFS, errno.EINVAL):
                    raise
                self.counters["tx_errors"] += 1

    def close(self) -> None:
        try:
            os.close(self.fd)       # not persistent: the device and its route go with the fd
        except OSError:
            pass


def _sysctl(key: str, value: str) -> None:
    try:
        with open(f"/proc/sys/{key}", "w") as f:
            f.write(value)
    except OSError:
        pass
