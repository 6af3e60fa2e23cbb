"""Transport headers carried inside the overlay: TCP, UDP, ICMP (with checksums for building)."""
import struct
from typing import NamedTuple

from .buffer import Buffer
from .errors import Malformed
from .ipv4 import IPPROTO_TCP, IPPROTO_UDP, checksum, pseudo_header

TCP_FIN, TCP_SYN, TCP_RST, TCP_PSH, TCP_ACK, TCP_URG, TCP_CWR = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x80
ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST = 0, 8

_TCP = struct.Struct("!HHIIBBHHH")
_UDP = struct.Struct("!HHHH")
_ICMP = struct.Struct("!BBHHH")


class TCP(NamedTuple):
    sport: int
    dport: int
    seq: int
    ack: int
    header_length: int
    flags: int
    window: int
    checksum: int
    urgent: int
    options: bytes


class UDP(NamedTuple):
    sport: int
    dport: int
    length: int
    checksum: int


class ICMP(NamedTuple):
    type: int
    code: int
    checksum: int
    ident: int          # echo identifier (meaningless for non-echo types)
    seq: int


def parse_tcp(buf: Buffer, off: int = 0, end: int | None = None) -> TCP:
    end = len(buf) if end is None else end
    if end - off < 20:
        raise Malformed("tcp header truncated")
    sp, dp, seq, ack, doff, flags, win, csum, urg = _TCP.unpack_from(buf, off)
    hlen = (doff >> 4) * 4
    if hlen < 20 or off + hlen > end:
        raise Malformed("tcp data offset")
    return TCP(sp, dp, seq, ack, hlen, flags, win, csum, urg, bytes(buf[off + 20:off + hlen]))


def build_tcp(src: int, dst: int, sport: int, dport: int, payload: bytes = b"", seq: int = 0, ack: int = 0,
              flags: int = TCP_ACK, window: int = 65535, options: bytes = b"") -> bytes:
    if len(options) % 4:
        options += b"\0" * (4 - len(options) % 4)
    hlen = 20 + len(options)
    seg = _TCP.pack(sport, dport, seq, ack, (hlen // 4) << 4, flags, window, 0, 0) + options + payload
    csum = checksum(pseudo_header(src, dst, IPPROTO_TCP, len(seg)) + seg)
    return seg[:16] + struct.pack("!H", csum) + seg[18:]


def parse_udp(buf: Buffer, off: int = 0, end: int | None = None) -> UDP:
    end = len(buf) if end is None else end
    if end - off < 8:
        raise Malformed("udp header truncated")
    hdr = UDP(*_UDP.unpack_from(buf, off))
    if hdr.length < 8 or off + hdr.length > end:
        raise Malformed("udp length")
    return hdr


def build_udp(src: int, dst: int, sport: int, dport: int, payload: bytes = b"", with_checksum: bool = True) -> bytes:
    seg = _UDP.pack(sport, dport, 8 + len(payload), 0) + payload
    if not with_checksum:
        return seg
    csum = checksum(pseudo_header(src, dst, IPPROTO_UDP, len(seg)) + seg) or 0xFFFF
    return seg[:6] + struct.pack("!H", csum) + seg[8:]


def parse_icmp(buf: Buffer, off: int = 0, end: int | None = None) -> ICMP:
    end = len(buf) if end is None else end
    if end - off < 8:
        raise Malformed("icmp header truncated")
    return ICMP(*_ICMP.unpack_from(buf, off))


def build_icmp(type_: int, code: int = 0, ident: int = 0, seq: int = 0, payload: bytes = b"") -> bytes:
    msg = _ICMP.pack(type_, code, 0, ident, seq) + payload
    csum = checksum(msg)
    return msg[:2] + struct.pack("!H", csum) + msg[4:]
