"""IPv4 header (RFC 791) with options, fragmentation fields and the header checksum."""
import struct
from typing import NamedTuple

from .buffer import Buffer
from .errors import Malformed

IPPROTO_ICMP = 1
IPPROTO_TCP = 6
IPPROTO_UDP = 17
IPPROTO_GRE = 47

FLAG_DF = 0x4000
FLAG_MF = 0x2000
OFFSET_MASK = 0x1FFF

_HDR = struct.Struct("!BBHHHBBHII")


class IPv4(NamedTuple):
    ihl: int            # header length in bytes (20..60)
    tos: int
    total_length: int
    ident: int
    flags: int          # DF/MF bits as they sit in the 16-bit word (FLAG_DF, FLAG_MF)
    frag_offset: int    # in 8-byte units
    ttl: int
    proto: int
    checksum: int
    src: int
    dst: int
    options: bytes

    @property
    def is_fragment(self) -> bool:
        return bool(self.flags & FLAG_MF) or self.frag_offset != 0


def ip_to_int(text: str) -> int:
    parts = text.split(".")
    if len(parts) != 4 or not all(p.isdigit() and len(p) <= 3 and int(p) <= 255 for p in parts):
        raise ValueError(f"{text!r} is not an IPv4 address")
    a, b, c, d = (int(p) for p in parts)
    return (a << 24) | (b << 16) | (c << 8) | d


def int_to_ip(value: int) -> str:
    return f"{value >> 24 & 255}.{value >> 16 & 255}.{value >> 8 & 255}.{value & 255}"


def parse_prefix(text: str) -> tuple[int, int]:
    """'10.0.0.0/8' -> (network int, prefix length); host bits must be zero."""
    if not isinstance(text, str) or "/" not in text:
        raise ValueError(f"{text!r} is not a prefix like 192.168.1.0/24")
    addr, _, length = text.partition("/")
    if not length.isdigit() or int(length) > 32:
        raise ValueError(f"{text!r} has a bad prefix length")
    plen = int(length)
    net = ip_to_int(addr)
    if net & ~mask(plen) & 0xFFFFFFFF:
        raise ValueError(f"{text!r} has host bits set")
    return net, plen


def mask(plen: int) -> int:
    return (0xFFFFFFFF << (32 - plen)) & 0xFFFFFFFF if plen else 0


def ones_sum(buf: Buffer, off: int, length: int) -> int:
    """One's complement sum of the 16-bit words of ``buf[off:off + length]`` (even length), folded to
    16 bits, read in place: 0xFFFF over a header whose checksum is right."""
    total: int = sum(struct.unpack_from(f"!{length // 2}H", buf, off))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def checksum(data: Buffer) -> int:
    """Internet checksum (RFC 1071) of ``data``."""
    if len(data) & 1:
        data = bytes(data) + b"\0"
    return ~ones_sum(data, 0, len(data)) & 0xFFFF


def parse(buf: Buffer, off: int = 0, verify_checksum: bool = True) -> IPv4:
    avail = len(buf) - off
    if avail < 20:
        raise Malformed("ipv4 header truncated")
    vihl, tos, tlen, ident, fw, ttl, proto, csum, src, dst = _HDR.unpack_from(buf, off)
    if vihl >> 4 != 4:
        raise Malformed("not ipv4")
    ihl = (vihl & 15) * 4
    if ihl < 20:
        raise Malformed("ipv4 header length below 20")
    if tlen < ihl or tlen > avail:
        raise Malformed("ipv4 total length inconsistent with buffer")
    if verify_checksum and ones_sum(buf, off, ihl) != 0xFFFF:
        raise Malformed("ipv4 header checksum")
    return IPv4(ihl, tos, tlen, ident, fw & 0xE000, fw & OFFSET_MASK, ttl, proto, csum, src, dst,
                bytes(buf[off + 20:off + ihl]))


def build(src: int, dst: int, proto: int, payload: bytes, ttl: int = 64, ident: int = 0, flags: int = 0,
          frag_offset: int = 0, tos: int = 0, options: bytes = b"") -> bytes:
    if len(options) % 4:
        options = options + b"\0" * (4 - len(options) % 4)
    ihl = 20 + len(options)
    if ihl > 60:
        raise ValueError("ipv4 options longer than 40 bytes")
    hdr = _HDR.pack(0x40 | ihl // 4, tos, ihl + len(payload), ident, flags | frag_offset, ttl, proto, 0,
                    src, dst) + options
    csum = checksum(hdr)
    return hdr[:10] + struct.pack("!H", csum) + hdr[12:] + payload


def pseudo_header(src: int, dst: int, proto: int, length: int) -> bytes:
    return struct.pack("!IIBBH", src, dst, 0, proto, length)
