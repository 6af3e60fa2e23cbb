"""Packet batches between vrouter processes (pure framing, no I/O).

The dispatcher (and extended RPS's relays) hand packets to a worker over a unix SOCK_SEQPACKET
socketpair, several packets per datagram so one syscall carries a whole NIC read. A datagram is a
sequence of records::

    kind (1 B) | tag length (1 B) | seg (2 B) | payload length (4 B), network order | tag | payload

``kind`` is the NIC kind (``TAP`` or an encapsulation); ``tag`` is the VIF name for a TAP frame and
the outer source address (dotted, as the pipeline's peer check wants it) for a tunnel payload.
A TAP record's payload is the read as it came, virtio_net_hdr first (so the worker knows a TSO
super-frame and its MSS); ``seg`` is 0. A tunnel record's payload is one UDP_GRO read, kept whole:
tunnel payloads of ``seg`` bytes each (the last may be shorter; 0: one payload).
SEQPACKET keeps datagram boundaries and the socketpair is FIFO, so packets of a flow, which always
take the same channel, stay in order.
"""
import struct
from collections.abc import Iterable
from typing import TypeAlias

from .codec.buffer import Buffer

KINDS = ("tap", "mplsoudp", "vxlan", "mplsogre")
KIND_CODE = {k: i for i, k in enumerate(KINDS)}
_HDR = struct.Struct("!BBHI")
HDR_LEN = _HDR.size
# A batch goes out once it holds this much (rps_route.Outbox), so a datagram stays far below the
# channel's socket buffer (ipc.SEQPACKET_MAX) even when every record is a 64 KB super-frame or read.
MAX_BATCH_BYTES = 256 << 10

# (kind, tag, payload, seg) as decode returns it
Record: TypeAlias = tuple[str, str, bytes, int]


class FramingError(ValueError):
    """A datagram that is not a sequence of whole records."""


class Batch:
    """Records for one channel, as a list of buffers for one ``sendmsg`` (no concatenation copy)."""
    __slots__ = ("parts", "size", "count")

    def __init__(self) -> None:
        self.parts: list[Buffer] = []
        self.size = 0
        self.count = 0

    def add(self, kind: str, tag: str, payload: Buffer, seg: int = 0) -> None:
        t = tag.encode()
        if len(t) > 255:
            raise ValueError(f"tag {tag[:20]!r}... is longer than 255 bytes")
        self.parts.append(_HDR.pack(KIND_CODE[kind], len(t), seg, len(payload)) + t)
        self.parts.append(payload)
        self.size += HDR_LEN + len(t) + len(payload)
        self.count += 1

    def full(self) -> bool:
        return self.size >= MAX_BATCH_BYTES

    def take(self) -> list[Buffer]:
        parts = self.parts
        self.parts, self.size, self.count = [], 0, 0
        return parts


def encode(records: Iterable[tuple[str, str, Buffer] | tuple[str, str, Buffer, int]]) -> bytes:
    """One datagram from ``(kind, tag, payload[, seg])`` records (tests and the benchmark)."""
    b = Batch()
    for kind, tag, payload, *seg in records:
        b.add(kind, tag, payload, *seg)
    return b"".join(bytes(p) for p in b.parts)


def decode(data: Buffer) -> list[Record]:
    """``[(kind, tag, payload, seg)]`` from one datagram; FramingError (one line) if it is cut short."""
    out: list[Record] = []
    mv = memoryview(data)
    n, off = len(mv), 0
    unpack = _HDR.unpack_from
    while off < n:
        if off + HDR_LEN > n:
            raise FramingError(f"record header cut at byte {off} of {n}")
        code, tlen, seg, plen = unpack(mv, off)
        off += HDR_LEN
        end = off + tlen + plen
        if end > n or code >= len(KINDS):
            raise FramingError(f"bad record at byte {off - HDR_LEN} of {n} (kind {code}, {tlen}+{plen} bytes)")
        out.append((KINDS[code], bytes(mv[off:off + tlen]).decode(), bytes(mv[off + tlen:end]), seg))
        off = end
    return out
