"""GSO: cut a TCP/IPv4 super-packet into MSS-sized tunnel packets, laid out for one UDP_SEGMENT send.

A VM's stack hands the vrouter a super-frame (virtio_net_hdr gso_type TCPV4, gso_size = MSS, up to
64 KB) whose TCP checksum field holds only the pseudo-header sum (NEEDS_CSUM). The pipeline forwards
it as one packet (one flow lookup); :func:`segment` then writes every segment behind the same tunnel
prefix, so all chunks but the last have the same size and the kernel can send the whole buffer with
``sendmsg([buf], [(SOL_UDP, UDP_SEGMENT, chunk)])``. One joined buffer, not the segments' header and
data buffers as a scatter-gather list: measured here, the kernel's copy from 92 small iovecs per
super-frame (2 per segment) cost more than Python's join (docs/vrouter.md, "The offload path").
Per segment, as Linux's tcp_gso_segment does: IPv4 total length, IP id (first id + i), header
checksum, TCP sequence number; CWR only on the first segment, FIN and PSH only on the last.

Partial-checksum invariant: the TCP checksum of every segment is left as the pseudo-header sum
(partial). Computing it in Python would cost a pass over every payload byte; instead the receiving
vrouter recognises a partial checksum (the field equals the pseudo-header sum, see
:func:`partial_offset`) and writes the packet to its VM's TAP with NEEDS_CSUM, so the VM's kernel
completes it. The test is exact: if a complete checksum happens to equal the pseudo-header sum,
completing it again gives the same value. A vrouter whose TAP has no vnet header must complete
partial checksums itself with :func:`complete_checksum` (slow, correct). Integrity across the
fabric rests on the outer UDP checksum (MPLSoUDP, VXLAN) or the link CRC (MPLSoGRE).
"""
import struct

from .codec.buffer import Buffer
from .codec.errors import Malformed
from .codec.ipv4 import IPPROTO_TCP, IPPROTO_UDP, checksum, pseudo_header
from .codec.l4 import TCP_CWR, TCP_FIN, TCP_PSH

# Bytes before the inner IPv4 header in a ToTunnel payload (label; GRE + label; VXLAN + Ethernet).
PREFIX_LEN = {"mplsoudp": 4, "mplsogre": 8, "vxlan": 22}

# One UDP GSO send: at most this many segments (64 on kernels before 6.x; 128 here) and this many
# payload bytes (IPv4 total length 65535 - 20 - 8), both measured with sendmsg on this machine.
MAX_SEGMENTS = 64
MAX_SEND_BYTES = 65507

_IP = struct.Struct("!BBHHHBBHII")
_IPTCP = struct.Struct("!BBHHHBBHIIHHIIBBHHH")
_CSUM = struct.Struct("!H")


def fold(total: int) -> int:
    """One's complement fold of a sum of 16-bit words (never 0 for a non-zero sum)."""
    total = (total & 0xFFFF) + (total >> 16)
    return (total & 0xFFFF) + (total >> 16)


def pseudo_sum(src: int, dst: int, proto: int, length: int) -> int:
    """The value a partial checksum field holds: the folded, uncomplemented pseudo-header sum."""
    return fold((src >> 16) + (src & 0xFFFF) + (dst >> 16) + (dst & 0xFFFF) + proto + length)


def partial_offset(buf: Buffer, ip_off: int = 0) -> tuple[int, int] | None:
    """(IPv4 header length, checksum offset in the L4 header) if the TCP/UDP checksum of the IPv4
    packet at ``ip_off`` is partial (holds exactly the pseudo-header sum), else None."""
    if len(buf) - ip_off < 20:
        return None
    vihl, _, tlen, _, fw, _, proto, _, src, dst = _IP.unpack_from(buf, ip_off)
    ihl = (vihl & 15) * 4
    if vihl >> 4 != 4 or ihl < 20 or fw & 0x3FFF or tlen > len(buf) - ip_off:
        return None
    at = 16 if proto == IPPROTO_TCP else 6 if proto == IPPROTO_UDP else 0
    if not at or tlen - ihl < at + 2:
        return None
    field = _CSUM.unpack_from(buf, ip_off + ihl + at)[0]
    return (ihl, at) if field == pseudo_sum(src, dst, proto, tlen - ihl) else None


def complete_checksum(buf: Buffer, ip_off: int = 0) -> bytes:
    """``buf`` with the TCP/UDP checksum of the IPv4 packet at ``ip_off`` computed in full.

    The fallback for a TAP without a vnet header (it cannot say NEEDS_CSUM): one pass over the
    payload in Python, so use it only for packets :func:`partial_offset` reports as partial.
    """
    if len(buf) - ip_off < 20:
        raise Malformed("ipv4 header truncated")
    vihl, _, tlen, _, fw, _, proto, _, src, dst = _IP.unpack_from(buf, ip_off)
    ihl = (vihl & 15) * 4
    if vihl >> 4 != 4 or ihl < 20 or tlen > len(buf) - ip_off or tlen < ihl:
        raise Malformed("ipv4 lengths")
    if fw & 0x3FFF:
        raise Malformed("fragment: the checksum covers the whole datagram")
    at = 16 if proto == IPPROTO_TCP else 6 if proto == IPPROTO_UDP else 0
    l4, end = ip_off + ihl, ip_off + tlen
    if not at or end - l4 < at + 2:
        raise Malformed("not a TCP/UDP packet with a checksum field")
    seg = bytearray(buf[l4:end])
    seg[at:at + 2] = b"\0\0"
    c = checksum(pseudo_header(src, dst, proto, len(seg)) + seg)
    if proto == IPPROTO_UDP and c == 0:
        c = 0xFFFF              # 0 means "no checksum" in UDP
    seg[at:at + 2] = _CSUM.pack(c)
    return bytes(buf[:l4]) + bytes(seg) + bytes(buf[end:])


_HEADS: dict[int, struct.Struct] = {}    # prefix length -> prefix + IPv4 (no options) + TCP header


def _parts(prefix: bytes, ip: Buffer, mss: int) -> tuple[list[Buffer], int, int]:
    """Flat list of [prefix + headers, data] * n for the segments of ``ip`` (one struct pack writes a
    segment's prefix and headers); returns (parts, chunk, n)."""
    if mss <= 0:
        raise ValueError("mss must be positive")
    if len(ip) < 40:
        raise Malformed("tcp/ipv4 headers truncated")
    vihl, tos, tlen, ident, fw, ttl, proto, _, src, dst = _IP.unpack_from(ip, 0)
    ihl = (vihl & 15) * 4
    if vihl >> 4 != 4 or ihl < 20 or tlen > len(ip) or tlen < ihl + 20:
        raise Malformed("ipv4 lengths")
    if proto != IPPROTO_TCP or fw & 0x3FFF:
        raise Malformed("only unfragmented TCP can be segmented")
    mv = memoryview(ip)
    sp, dp, seq, ack, doff, flags, win, _, urg = struct.unpack_from("!HHIIBBHHH", ip, ihl)
    thl = (doff >> 4) * 4
    hl = ihl + thl
    if thl < 20 or hl > tlen:
        raise Malformed("tcp data offset")
    data = tlen - hl
    p = len(prefix)
    if data <= mss:
        return [prefix, mv[:tlen]], p + tlen, 1
    n = -(-data // mss)
    ip_opts = bytes(mv[20:ihl])
    tcp_opts = bytes(mv[ihl + 20:hl])
    # Header checksum = fixed words + total length + id; sum the fixed ones once.
    ip_base = sum(struct.unpack(f"!{ihl // 2}H", _IP.pack(vihl, tos, 0, 0, fw, ttl, proto, 0, src, dst) + ip_opts))
    ph = (src >> 16) + (src & 0xFFFF) + (dst >> 16) + (dst & 0xFFFF) + IPPROTO_TCP + thl
    head = _HEADS.get(p)
    if head is None:
        head = _HEADS[p] = struct.Struct(f"!{p}s" + _IPTCP.format[1:])
    pack = head.pack
    parts: list[Buffer] = []
    add = parts.extend
    last = n - 1
    for i in range(n):
        start = hl + i * mss
        dl = mss if i < last else tlen - start
        seg_len = hl + dl
        sid = (ident + i) & 0xFFFF
        s = ip_base + seg_len + sid
        s = (s & 0xFFFF) + (s >> 16)
        ipc = ~((s & 0xFFFF) + (s >> 16)) & 0xFFFF
        t = ph + dl
        t = (t & 0xFFFF) + (t >> 16)
        fl = flags & ~(TCP_FIN | TCP_PSH) if i < last else flags
        if i:
            fl &= ~TCP_CWR
        hdr = pack(prefix, vihl, tos, seg_len, sid, fw, ttl, IPPROTO_TCP, ipc, src, dst, sp, dp,
                   (seq + i * mss) & 0xFFFFFFFF, ack, doff, fl, win, (t & 0xFFFF) + (t >> 16), urg)
        if ip_opts:
            hdr = hdr[:p + 20] + ip_opts + hdr[p + 20:]
        add((hdr + tcp_opts if tcp_opts else hdr, mv[start:start + dl]))
    return parts, p + hl + mss, n


def segment(prefix: bytes, ip: Buffer, mss: int) -> tuple[bytes, int, int]:
    """Segments of the TCP/IPv4 packet ``ip``, each behind ``prefix``, in one buffer.

    Returns (buffer, chunk_size, n): n chunks of chunk_size bytes (the last may be shorter). A packet
    whose data fits one MSS comes back unchanged as one chunk. Send with :func:`sends`.
    """
    parts, chunk, n = _parts(prefix, ip, mss)
    return b"".join(parts), chunk, n


def segments(prefix: bytes, ip: Buffer, mss: int) -> list[bytes]:
    """The same segments as separate packets (tests; the MPLSoGRE fallback sends slices of
    :func:`segment`'s buffer)."""
    parts, _, _ = _parts(prefix, ip, mss)
    return [b"".join(parts[i:i + 2]) for i in range(0, len(parts), 2)]


def split_payload(encap: str, payload: Buffer, mss: int) -> tuple[bytes, int, int]:
    """:func:`segment` for a ToTunnel payload (tunnel prefix + inner IPv4 packet)."""
    p = PREFIX_LEN[encap]
    mv = memoryview(payload)
    return segment(bytes(mv[:p]), mv[p:], mss)


def sends(buffer: Buffer, chunk: int, max_segments: int = MAX_SEGMENTS,
          max_bytes: int = MAX_SEND_BYTES) -> list[Buffer]:
    """Slices of ``buffer`` (whole chunks) that each fit one UDP_SEGMENT sendmsg.

    A 64 KB super-frame with MSS 1448 becomes 46 chunks of about 1.5 KB, more than one send may carry
    (65507 bytes), hence usually two sends. A slice of one chunk can be sent without the cmsg.
    """
    per = max(1, min(max_segments, max_bytes // chunk)) * chunk
    if len(buffer) <= per:
        return [buffer]
    mv = memoryview(buffer)
    return [mv[o:o + per] for o in range(0, len(buffer), per)]
