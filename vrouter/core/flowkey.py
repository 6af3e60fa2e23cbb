"""Flow keys: (routing instance, protocol, source, destination, source port, destination port).

Addresses are host-order ints. ICMP echo uses the identifier for both ports, so a request and its
reply are each other's reverse under a plain swap; other ICMP types use ports 0. The reverse of a key
is its mirror, and :func:`symmetric_hash` gives both directions the same value (for steering both
directions of a flow to one worker, issue 5).
"""
import struct
import zlib
from typing import TypeAlias

from .codec.buffer import Buffer
from .codec.errors import Malformed
from .codec.ipv4 import FLAG_MF, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, OFFSET_MASK, ones_sum
from .codec.l4 import ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST

FlowKey: TypeAlias = tuple[int, int, int, int, int, int]  # (vrf, proto, src, dst, sport, dport)
# What extract returns: (proto, src, dst, sport, dport, ihl, total_length, ttl, checksum, frag_word,
# ident, tcp_flags, icmp_type). The ports are None for a non-first fragment; they are typed int because
# every reader looks at the fragment word first (the pipeline takes such a fragment's ports from its head).
Extracted: TypeAlias = tuple[int, int, int, int, int, int, int, int, int, int, int, int, int]

_PACK = struct.Struct("!IBIIHH").pack
_CRC = zlib.crc32
_IP = struct.Struct("!BxHHHBBHII")
ENTROPY_BASE = 49152
ENTROPY_SPAN = 65536 - ENTROPY_BASE


def reverse(key: FlowKey) -> FlowKey:
    vrf, proto, src, dst, sport, dport = key
    return (vrf, proto, dst, src, dport, sport)


def key_hash(vrf: int, proto: int, src: int, dst: int, sport: int, dport: int) -> int:
    """32-bit hash of a key in its direction."""
    return _CRC(_PACK(vrf, proto, src, dst, sport, dport))


def symmetric_key_hash(vrf: int, proto: int, src: int, dst: int, sport: int, dport: int) -> int:
    """32-bit hash of a key that its reverse shares (the fields passed apart: steering's hot path)."""
    if (src, sport) > (dst, dport):
        return _CRC(_PACK(vrf, proto, dst, src, dport, sport))
    return _CRC(_PACK(vrf, proto, src, dst, sport, dport))


def symmetric_hash(key: FlowKey) -> int:
    """Same 32-bit value for a key and its reverse."""
    return symmetric_key_hash(*key)


def entropy_port(key: FlowKey) -> int:
    """Outer UDP source port for a flow: hash of routing instance + inner 5-tuple into 49152-65535."""
    return ENTROPY_BASE + key_hash(*key) % ENTROPY_SPAN


# Kept as one pass (complexity 16, over the limit of 15): every packet that misses the flow table runs it.
def extract(buf: Buffer, off: int, end: int | None = None) -> Extracted:  # noqa: C901
    """Parse the inner IPv4 packet at ``off`` far enough to key its flow.

    Returns (proto, src, dst, sport, dport, ihl, total_length, ttl, checksum, frag_word, ident, tcp_flags,
    icmp_type). Ports are None for non-first fragments. Raises Malformed.
    """
    end = len(buf) if end is None else end
    if end - off < 20:
        raise Malformed("ipv4 header truncated")
    vihl, tlen, ident, fw, ttl, proto, csum, src, dst = _IP.unpack_from(buf, off)
    if vihl >> 4 != 4:
        raise Malformed("not ipv4")
    ihl = (vihl & 15) * 4
    if ihl < 20 or tlen < ihl or off + tlen > end:
        raise Malformed("ipv4 lengths")
    if ones_sum(buf, off, ihl) != 0xFFFF:
        raise Malformed("ipv4 header checksum")
    l4 = off + ihl
    stop = off + tlen
    flags = icmp_type = 0
    if fw & OFFSET_MASK:
        return (proto, src, dst, None, None, ihl, tlen, ttl, csum, fw, ident, 0, -1)  # type: ignore[return-value]
    if proto == IPPROTO_TCP or proto == IPPROTO_UDP:
        # A first fragment (MF set) only promises the ports; a whole packet must carry its full header.
        whole = not fw & FLAG_MF
        if stop - l4 < (4 if not whole else 20 if proto == IPPROTO_TCP else 8):
            raise Malformed("l4 header truncated")
        sport, dport = struct.unpack_from("!HH", buf, l4)
        if proto == IPPROTO_TCP:
            if stop - l4 >= 14:
                flags = buf[l4 + 13]
            if whole and not 20 <= (buf[l4 + 12] >> 4) * 4 <= stop - l4:
                raise Malformed("tcp data offset")
        elif whole:
            ulen = struct.unpack_from("!H", buf, l4 + 4)[0]
            if ulen < 8 or ulen > stop - l4:
                raise Malformed("udp length")
    elif proto == IPPROTO_ICMP:
        if stop - l4 < 8:
            raise Malformed("icmp header truncated")
        icmp_type = buf[l4]
        if icmp_type == ICMP_ECHO_REQUEST or icmp_type == ICMP_ECHO_REPLY:
            sport = dport = struct.unpack_from("!H", buf, l4 + 4)[0]
        else:
            sport = dport = 0
    else:
        sport = dport = 0
    return (proto, src, dst, sport, dport, ihl, tlen, ttl, csum, fw, ident, flags, icmp_type)
