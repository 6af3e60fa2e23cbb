"""MPLS label stack entries (RFC 3032): 20-bit label, 3-bit TC, bottom-of-stack bit, TTL."""
import struct
from collections.abc import Sequence
from typing import NamedTuple

from .buffer import Buffer
from .errors import Malformed

MAX_LABEL = (1 << 20) - 1
_WORD = struct.Struct("!I")


class LabelEntry(NamedTuple):
    label: int
    tc: int
    bottom: bool
    ttl: int


def parse_stack(buf: Buffer, off: int = 0, max_depth: int = 8) -> tuple[list[LabelEntry], int]:
    """Returns the label entries (top first) and the offset just after the bottom entry."""
    stack: list[LabelEntry] = []
    while True:
        if len(buf) - off < 4:
            raise Malformed("mpls label stack truncated")
        (word,) = _WORD.unpack_from(buf, off)
        off += 4
        entry = LabelEntry(word >> 12, (word >> 9) & 7, bool(word & 0x100), word & 0xFF)
        stack.append(entry)
        if entry.bottom:
            return stack, off
        if len(stack) >= max_depth:
            raise Malformed("mpls label stack too deep")


def build_stack(labels: Sequence[int], ttl: int = 64, tc: int = 0) -> bytes:
    out: list[bytes] = []
    for i, label in enumerate(labels):
        if not 0 <= label <= MAX_LABEL:
            raise ValueError(f"mpls label {label} out of range")
        out.append(_WORD.pack(label << 12 | tc << 9 | (0x100 if i == len(labels) - 1 else 0) | ttl))
    return b"".join(out)
