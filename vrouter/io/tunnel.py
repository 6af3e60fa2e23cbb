"""Fabric I/O of one vrouter: MPLSoUDP (UDP 6635), VXLAN (UDP 4789) and MPLSoGRE (IP protocol 47).

Receive: one UDP socket per UDP encapsulation and one raw GRE socket; every packet is handed on with
its outer source address, because the core drops tunnel packets from hosts that are not fabric peers.

Send with an entropy source port: the core picks `sport` from the inner flow hash so that the fabric's
ECMP spreads overlay flows (the port of the flow's path slot, vrouter/core/paths.py; `send_probe` sends
that module's probes from the slots' ports). We send from a real UDP socket bound to that source port, kept in a small
LRU pool. Chosen over a raw IP_HDRINCL socket because the kernel keeps doing routing, ARP, the UDP
checksum and fragmentation for us, and because UDP_SEGMENT (GSO) only exists on real UDP sockets
(sends are batched with it, see below). Measured on this machine (100 B datagrams over loopback in a
private netns, 64 source ports, CPython 3.11): pooled bound socket 4.4-4.6 us per send, raw socket with a
Python-built IP/UDP header and checksum 5.6-5.9 us. If a source port cannot be bound (taken by something else) that flow
falls back to the receive socket's port and the fallback is counted.
A port gets its socket when it first needs one for a UDP_SEGMENT send; a single packet from a port
that has none (a new flow's first packet, a flow that never sends super-frames) goes out on one
raw IPPROTO_UDP socket (the kernel still routes, resolves and builds the IP header) behind a UDP
header we write with checksum 0 (allowed for IPv4; RFC 7510 and RFC 7348 provide for it). Measured
here (loopback in a private netns, 80 B): 1.7-1.9 us per raw send, 1.4-2.5 us from a pooled socket,
6.5-7.4 us when a socket is made, bound and closed for the packet, as a flood of new flows did.

Offloads. Receive: the UDP sockets set UDP_GRO, so one read returns the datagrams the kernel's GRO
coalesced (same outer 4-tuple: one inner flow, thanks to the entropy port) with their segment size
in a cmsg; `receive_gro` hands them on unsplit for `vrouter.core.gro`. The kernel only coalesces on a NIC
that runs GRO: a veth does so only with `gro on` (it then uses NAPI) and, for packets from a sender
with TSO (the OVS side of the link), `rx-udp-gro-forwarding on`: `enable_gro` sets both.
Send: `send_gso` sends a buffer of equal-size tunnel packets (`vrouter.core.gso`) with one UDP_SEGMENT
sendmsg per slice of at most 64 segments / 65,507 bytes (one buffer, not the segments' parts: the
kernel's copy from many small iovecs measured slower than the join). MPLSoGRE goes through a raw IP
socket, which has no UDP_SEGMENT: its fallback is one sendto per segment (slices of the same buffer),
and receive is one read per packet (the forwarder merges those in Python with `Gro.add`).
"""
from __future__ import annotations

import collections
import ctypes
import errno
import socket
import struct
import subprocess

from vrouter.core import gso
from vrouter.core.codec.ipv4 import IPPROTO_GRE
from vrouter.core.codec.outer import ENCAPS, MPLSOUDP_PORT, VXLAN_PORT

UDP_PORTS = {"mplsoudp": MPLSOUDP_PORT, "vxlan": VXLAN_PORT}
_TX_COUNTER = {encap: f"tx_{encap}" for encap in ENCAPS}   # per-packet counter keys, built once
SOL_UDP = 17
UDP_SEGMENT = 103
UDP_GRO = 104
GRO_FLUSH_TIMEOUT_NS = 0     # flush at the end of each NAPI poll, as Linux does by default: see enable_gro
_CMSG_INT = socket.CMSG_SPACE(4)
_INT = struct.Struct("=i")
# Latency stamps (vrouter/core/latency.py): the kernel's receive time of every read, SO_TIMESTAMPNS.
SO_TIMESTAMPNS = 35
_CMSG_STAMPED = socket.CMSG_SPACE(4) + socket.CMSG_SPACE(16)
_TIMESPEC = struct.Struct("=qq")
_SEG = struct.Struct("=H")
_UDP_HEADER = struct.Struct("!HHHH").pack      # source port, destination port, length, checksum
SO_ATTACH_FILTER = 26
_SEND_ERRORS = (errno.EAGAIN, errno.ENOBUFS, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ECONNREFUSED,
                errno.EMSGSIZE, errno.EINVAL)


class TunnelError(Exception):
    """The fabric sockets could not be opened; the message names the socket and the reason."""


class EntropySender:
    """Sends tunnel payloads: UDP encapsulations from a socket bound to the flow's entropy source
    port (LRU pool of `pool_size`), MPLSoGRE from the raw socket `_gre`. The forwarder's `Tunnels`
    and the multi-core workers' `rps_kernel.Sender` both send this way."""

    SEND_ERRORS = _SEND_ERRORS    # refused by the kernel: counted as tx_errors (a NIC drop), not raised
    REUSEPORT = False             # share entropy ports with other processes sending the same flows

    def __init__(self, local_ip: str, pool_size: int):
        self.local_ip = local_ip
        self.pool_size = pool_size
        self._pool: collections.OrderedDict[int, socket.socket] = collections.OrderedDict()
        self._gre: socket.socket | None = None
        self._raw_udp: socket.socket | None = None     # sends from a port that has no socket (yet)
        self.counters = collections.Counter()

    def send(self, peer: str, encap: str, sport: int, payload: bytes) -> bool:
        """Send one tunnel payload to `peer`; False if the kernel refused it (counted, like a NIC drop)."""
        try:
            if encap == "mplsogre":
                self._gre.sendto(payload, (peer, 0))
            elif sport in self._pool or self._raw_udp is None:
                self._sender(encap, sport).sendto(payload, (peer, UDP_PORTS[encap]))
            else:
                # A new flow's first packets: no socket is bound for one packet (socket + bind + the
                # LRU's close cost 5 us more than the send; a flood of new flows spent ~15% of the
                # forwarder there). The kernel builds the IP header; the UDP checksum is zero, which
                # IPv4 allows and MPLSoUDP (RFC 7510) and VXLAN (RFC 7348) provide for.
                dport = UDP_PORTS[encap]
                self._raw_udp.sendmsg((_UDP_HEADER(sport, dport, 8 + len(payload), 0), payload), (), 0, (peer, 0))
                self.counters["tx_unbound"] += 1
        except KeyError:
            raise TunnelError(f"unknown encapsulation {encap!r} (known: {', '.join(ENCAPS)})") from None
        except OSError as exc:
            if exc.errno in self.SEND_ERRORS:
                self.counters["tx_errors"] += 1
                return False
            raise
        self.counters[_TX_COUNTER[encap]] += 1
        return True

    def send_probe(self, peer: str, encap: str, sport: int, payload: bytes) -> bool:
        """A path message (vrouter/core/paths.py) from source port `sport`: sent like a flow's single
        packet (the port's pooled socket, else the raw UDP socket), counted apart (`tx_path_probes`)
        so that the tunnel counters stay the VMs' traffic."""
        dport = UDP_PORTS[encap]
        try:
            if sport in self._pool or self._raw_udp is None:
                self._sender(encap, sport).sendto(payload, (peer, dport))
            else:
                self._raw_udp.sendmsg((_UDP_HEADER(sport, dport, 8 + len(payload), 0), payload), (), 0, (peer, 0))
        except OSError as exc:
            if exc.errno in self.SEND_ERRORS:
                self.counters["tx_path_probe_errors"] += 1
                return False
            raise
        self.counters["tx_path_probes"] += 1
        return True

    def send_gso(self, peer: str, encap: str, sport: int, buffer, chunk: int, n: int) -> int:
        """Send `n` tunnel packets of `chunk` bytes (the last may be shorter) laid out in `buffer`
        by `gso.segment`; returns the number of send calls. UDP: one UDP_SEGMENT sendmsg per slice
        from `gso.sends`. MPLSoGRE: not possible, the caller uses `send` per segment instead."""
        if n == 1:
            self.send(peer, encap, sport, buffer)
            return 1
        try:
            sock = self._sender(encap, sport)
            dst = (peer, UDP_PORTS[encap])
        except KeyError:
            raise TunnelError(f"no GSO send for encapsulation {encap!r} (UDP only: mplsoudp, vxlan)") from None
        cmsg = [(SOL_UDP, UDP_SEGMENT, _SEG.pack(chunk))]
        calls = sends = segments = 0
        c = self.counters
        for part in gso.sends(buffer, chunk):
            calls += 1
            carried = -(-len(part) // chunk)
            try:
                if len(part) <= chunk:
                    sock.sendto(part, dst)
                else:
                    sock.sendmsg((part,), cmsg, 0, dst)
            except OSError as exc:
                if exc.errno in self.SEND_ERRORS:
                    c["tx_errors"] += carried     # packets lost, as `send` counts them
                    continue
                raise
            sends += 1
            segments += carried
        # Only what the kernel took was sent: a refused slice's segments are tx_errors, not tx_<encap>.
        c[_TX_COUNTER[encap]] += segments
        c["tx_gso_sends"] += sends
        c["tx_gso_segments"] += segments
        return calls

    def _sender(self, encap: str, sport: int) -> socket.socket:
        s = self._pool.get(sport)
        if s is not None:
            self._pool.move_to_end(sport)
            return s
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            if self.REUSEPORT:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            s.bind((self.local_ip, sport))
        except OSError:
            s.close()
            self.counters["tx_sport_fallback"] += 1
            return self._fallback(encap)
        s.setblocking(False)
        # Nothing is ever sent to these ports; a tiny buffer keeps stray datagrams from piling up.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
        self._pool[sport] = s
        if len(self._pool) > self.pool_size:
            self._pool.popitem(last=False)[1].close()
        return s

    def _fallback(self, encap: str) -> socket.socket:
        """Where a flow's packets go out when its entropy port cannot be bound."""
        raise NotImplementedError


def drop_all_filter(sock: socket.socket) -> None:
    """Attach a one-instruction classic BPF program (``ret #0``): the socket receives nothing."""
    insn = ctypes.create_string_buffer(struct.pack("HBBI", 0x06, 0, 0, 0))
    prog = struct.pack("HL", 1, ctypes.addressof(insn))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, prog)


def open_raw_udp(local_ip: str) -> socket.socket | None:
    """A send-only raw UDP socket with source address `local_ip` (a raw socket gets a copy of every
    UDP packet of the namespace: the filter drops them); None without CAP_NET_RAW."""
    try:
        s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP)
    except PermissionError:
        return None
    try:
        drop_all_filter(s)
        s.bind((local_ip, 0))
        s.setblocking(False)
    except OSError:
        s.close()
        raise
    return s


def open_rx(*, reuseport: bool = False, gre: bool = True, rcvbuf: int = 4 << 20,
            gro: bool = False) -> dict[socket.socket, str]:
    """{socket: encap} receive sockets on UDP 6635 and 4789 (`gro`: with UDP_GRO) and, unless `gre` is
    False, a raw GRE socket. `reuseport`: SO_REUSEPORT (one socket per multi-core worker, the kernel
    picks) instead of SO_REUSEADDR. OSError with every socket closed if one cannot be opened."""
    out = {}
    try:
        for encap, port in UDP_PORTS.items():
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            out[s] = encap
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT if reuseport else socket.SO_REUSEADDR, 1)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            if gro:
                s.setsockopt(SOL_UDP, UDP_GRO, 1)
            s.bind(("0.0.0.0", port))
            s.setblocking(False)
        if gre:
            g = socket.socket(socket.AF_INET, socket.SOCK_RAW, IPPROTO_GRE)
            out[g] = "mplsogre"
            g.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            g.setblocking(False)
    except OSError:
        for s in out:
            s.close()
        raise
    return out


def read_gro(sock: socket.socket, encap: str, counters, max_reads: int = 64, ports: bool = False,
             stamps: list | None = None) -> list[tuple]:
    """Drain up to `max_reads` reads of receive socket `sock` (of `encap`): [(outer_src, encap, data,
    seg_size)], with the outer source port appended if `ports` (the multi-core dispatcher's outer hash).

    `data` holds one or more tunnel payloads of `seg_size` bytes (the last may be shorter);
    seg_size 0 means one payload (no coalescing, or a raw MPLSoGRE read). With `stamps` (a list;
    the socket has SO_TIMESTAMPNS, see `set_stamping`) the kernel's receive time of each read, in ns,
    is appended to it (0 if the kernel gave none).
    """
    out = []
    gre = encap == "mplsogre"
    anc_size = _CMSG_STAMPED if stamps is not None else 0 if gre else _CMSG_INT
    for _ in range(max_reads):
        try:
            data, anc, _flags, (src, port) = sock.recvmsg(65535, anc_size)
        except BlockingIOError:
            break
        except OSError as exc:  # ICMP errors queued on the socket surface here; they are not packets
            if exc.errno in (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH):
                counters["rx_icmp_errors"] += 1
                continue
            raise
        if stamps is None:
            seg = _INT.unpack(anc[0][2])[0] if anc else 0
        else:
            seg, t = _stamped_cmsgs(anc)
        if gre:
            if len(data) < 20:
                counters["rx_runts"] += 1
                continue
            data = data[(data[0] & 0x0F) * 4:]  # raw sockets hand over the outer IPv4 header too
        out.append((src, encap, data, seg, port) if ports else (src, encap, data, seg))
        if stamps is not None:
            stamps.append(t)
    counters[f"rx_reads_{encap}"] += len(out)
    return out


def _stamped_cmsgs(anc) -> tuple[int, int]:
    """(UDP_GRO segment size or 0, SO_TIMESTAMPNS receive time in ns or 0) of one read's cmsgs."""
    seg = t = 0
    for level, kind, value in anc:
        if level == SOL_UDP and kind == UDP_GRO:
            seg = _INT.unpack(value[:4])[0]
        elif level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
            sec, nsec = _TIMESPEC.unpack(value[:16])
            t = sec * 1_000_000_000 + nsec
    return seg, t


def set_stamping(rx, on: bool) -> None:
    """SO_TIMESTAMPNS on or off on receive sockets (the kernel's receive time comes with each read)."""
    for s in rx:
        s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1 if on else 0)


def set_udp_gro(rx: dict, on: bool) -> None:
    """UDP_GRO on or off on the UDP sockets of ``{socket: encap}`` (off: every read is one datagram)."""
    for s, encap in rx.items():
        if encap != "mplsogre":
            s.setsockopt(SOL_UDP, UDP_GRO, 1 if on else 0)


class Tunnels(EntropySender):
    """The fabric sockets of one server. `sockets()` are what the forwarder's selector watches."""

    def __init__(self, local_ip: str, *, pool_size: int = 512, rcvbuf: int = 4 << 20, gro: bool = True):
        super().__init__(local_ip, pool_size)
        try:
            self._rx: dict[socket.socket, str] = open_rx(rcvbuf=rcvbuf, gro=gro)
        except OSError as exc:
            raise TunnelError(f"cannot open fabric sockets on {local_ip}: {exc.strerror}") from None
        self._tx_fallback = {encap: s for s, encap in self._rx.items()}
        self._gre = self._tx_fallback["mplsogre"]
        try:
            self._raw_udp = open_raw_udp(local_ip)
        except OSError as exc:
            self.close()
            raise TunnelError(f"cannot open the raw UDP send socket on {local_ip}: {exc.strerror}") from None

    def sockets(self) -> list[socket.socket]:
        return list(self._rx)

    def set_gro(self, on: bool) -> None:
        """UDP_GRO on or off on the UDP receive sockets (off: every read is one datagram)."""
        set_udp_gro(self._rx, on)

    def close(self) -> None:
        for s in list(self._rx) + list(self._pool.values()) + ([self._raw_udp] if self._raw_udp else []):
            s.close()
        self._rx.clear()
        self._pool.clear()
        self._raw_udp = None

    # --- receive -------------------------------------------------------------------------------
    def receive_gro(self, sock: socket.socket, max_reads: int = 64, ports: bool = False,
                    stamps: list | None = None) -> list[tuple]:
        """`read_gro` of one of this server's receive sockets."""
        return read_gro(sock, self._rx[sock], self.counters, max_reads, ports, stamps)

    def set_stamping(self, on: bool) -> None:
        set_stamping(self._rx, on)

    def receive(self, sock: socket.socket, max_packets: int = 64) -> list[tuple[str, str, bytes]]:
        """Drain `sock`: [(outer_src, encap, payload)], one entry per tunnel packet (GRO reads split)."""
        out = []
        for src, encap, data, seg in self.receive_gro(sock, max_packets):
            if not seg or seg >= len(data):
                out.append((src, encap, data))
            else:
                out += [(src, encap, data[o:o + seg]) for o in range(0, len(data), seg)]
        self.counters[f"rx_{self._rx[sock]}"] += len(out)
        return out

    def _fallback(self, encap: str) -> socket.socket:
        return self._tx_fallback[encap]

def enable_gro(local_ip: str, flush_timeout_ns: int = GRO_FLUSH_TIMEOUT_NS) -> str | None:
    """Switch GRO on for the interface that holds `local_ip` (a veth needs it to coalesce at all).

    Returns None on success, else one line saying why not (the vrouter then works without the
    kernel's coalescing: every read is one datagram, still correct).
    """
    r = subprocess.run(["ip", "-o", "-4", "addr", "show"], capture_output=True, text=True)
    dev = next((line.split()[1] for line in r.stdout.splitlines()
                if f" {local_ip}/" in line), None)
    if dev is None:
        return f"no interface holds {local_ip}"
    # A veth hands a packet to GRO only if its sender has no TSO, or if the packet comes from a
    # socket (OVS's AF_PACKET sends) and this end has rx-udp-gro-forwarding (kernel veth.c).
    cmd = ["ethtool", "-K", dev, "gro", "on", "rx-udp-gro-forwarding", "on"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        return f"{' '.join(cmd)}: {(r.stderr or r.stdout).strip() or r.returncode}"
    # GRO merges what one NAPI poll finds: OVS's userspace datapath sends a port's batch with one
    # sendmmsg, so a poll holds a burst of one flow's datagrams. A flush timeout (NAPI holds merges
    # until an hrtimer fires) was 20 us here until issue 13 measured it, interleaved in one testbed
    # (3 rounds, iperf3 3 s, MPLSoUDP): 0 gave 1.05-1.16 Gbit/s, 6.4-7.0 vrouter CPU s/GB and 17-26
    # segments per merge against 0.57-0.60, 8.4-12.5 and 9-15 with 20 us; the ping RTT moved within
    # the noise. The value is still written: a host may set another default. The knob is in sysfs,
    # which shows the namespace of whoever mounts it: mount a private one.
    script = f"mount -t sysfs sysfs /sys && echo {int(flush_timeout_ns)} > /sys/class/net/{dev}/gro_flush_timeout"
    r = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                       capture_output=True, text=True)
    if r.returncode != 0:
        return f"gro_flush_timeout of {dev}: {(r.stderr or r.stdout).strip() or r.returncode}"
    return None
