"""Builders for the GRO/GSO tests: tunnel prefixes, TCP segments with partial or full checksums, and
what a kernel does with a NEEDS_CSUM frame (so tests can check the checksum a VM would end up with)."""
import struct

from scapy.layers.inet import IP, TCP, UDP
from scapy.packet import Raw

from vrouter.core import gso
from vrouter.core.codec import ipv4, virtio, vxlan
from vrouter.core.codec.ipv4 import ip_to_int
from vrouter.core.config import VROUTER_MAC
from vrouter.core.gso import pseudo_sum

SRC, DST = "192.168.1.11", "192.168.1.12"


def prefix(encap: str, label: int = 100) -> bytes:
    word = struct.pack("!I", label << 12 | 0x100 | 64)
    if encap == "mplsoudp":
        return word
    if encap == "mplsogre":
        return b"\x00\x00\x88\x47" + word
    return vxlan.build(label) + b"\x02\x00\x00\x00\x01\x0c" + VROUTER_MAC + b"\x08\x00"


def tcp_ip(data: bytes, seq: int = 1000, flags: str = "A", ack: int = 1, window: int = 1000, ident: int = 1,
           df: bool = True, options=(), src: str = SRC, dst: str = DST, sport: int = 40000, dport: int = 80,
           partial: bool = True, ttl: int = 64, tos: int = 0) -> bytes:
    """An IPv4/TCP packet built by scapy; with ``partial`` its TCP checksum field holds the
    pseudo-header sum, as a TSO sender leaves it."""
    pkt = IP(src=src, dst=dst, id=ident, flags="DF" if df else 0, ttl=ttl, tos=tos) / \
        TCP(sport=sport, dport=dport, seq=seq, ack=ack, flags=flags, window=window, options=list(options))
    if data:
        pkt = pkt / Raw(data)
    raw = bytearray(bytes(pkt))
    if partial:
        ihl = (raw[0] & 15) * 4
        raw[ihl + 16:ihl + 18] = pseudo_sum(ip_to_int(src), ip_to_int(dst), 6, len(raw) - ihl).to_bytes(2, "big")
    return bytes(raw)


def udp_ip(data: bytes, partial: bool = True) -> bytes:
    raw = bytearray(bytes(IP(src=SRC, dst=DST) / UDP(sport=5000, dport=53) / Raw(data)))
    if partial:
        raw[26:28] = pseudo_sum(ip_to_int(SRC), ip_to_int(DST), 17, len(raw) - 20).to_bytes(2, "big")
    return bytes(raw)


def scapy_l4_checksum(ip: bytes) -> int:
    """The TCP/UDP checksum scapy computes for this packet (reference for completed checksums)."""
    p = IP(ip)
    layer = p[TCP] if TCP in p else p[UDP]
    del layer.chksum
    rebuilt = IP(bytes(p))
    return (rebuilt[TCP] if TCP in rebuilt else rebuilt[UDP]).chksum


def kernel_complete(frame: bytes, vnet: bytes) -> bytes:
    """What the receiving kernel does for NEEDS_CSUM: checksum [csum_start, end) as it stands
    (the field included) and store the complement at csum_start + csum_offset."""
    h = virtio.parse(vnet)
    assert h.flags & virtio.NEEDS_CSUM
    at = h.csum_start + h.csum_offset
    return frame[:at] + ipv4.checksum(frame[h.csum_start:]).to_bytes(2, "big") + frame[at + 2:]


def joined(delivery):
    """A GRO delivery (head, tail, nsegs, gso_size, vnet_hdr) as (whole payload, nsegs, gso_size,
    vnet_hdr), what the tests compare."""
    head, tail, nsegs, gso_size, vnet = delivery
    return (head if tail is None else head + tail), nsegs, gso_size, vnet


def ip_parts(ip: bytes):
    """(IPv4 header, TCP header, data) of a packet."""
    ihl = (ip[0] & 15) * 4
    thl = (ip[ihl + 12] >> 4) * 4
    tlen = int.from_bytes(ip[2:4], "big")
    return ip[:ihl], ip[ihl:ihl + thl], ip[ihl + thl:tlen]


class FakeTunnels:
    """What reaches the tunnel layer: plain sends and UDP GSO sends, recorded."""

    def __init__(self):
        self.sent = []       # (peer, encap, sport, bytes)
        self.gso = []        # (peer, encap, sport, bytes, chunk, n)
        self.probes = []     # (peer, encap, sport, bytes): path repair's messages
        self.counters = {}

    def send(self, peer, encap, sport, payload):
        self.sent.append((peer, encap, sport, bytes(payload)))
        return True

    def send_probe(self, peer, encap, sport, payload):
        self.probes.append((peer, encap, sport, bytes(payload)))
        return True

    def send_gso(self, peer, encap, sport, buffer, chunk, n):
        self.gso.append((peer, encap, sport, bytes(buffer), chunk, n))
        return len(gso.sends(buffer, chunk))
