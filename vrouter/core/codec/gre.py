"""GRE header (RFC 2784/2890) with optional checksum, key and sequence number."""
import struct
from typing import NamedTuple

from .buffer import Buffer
from .errors import Malformed
from .ipv4 import checksum as inet_checksum

GRE_C, GRE_K, GRE_S = 0x8000, 0x2000, 0x1000
_BASE = struct.Struct("!HH")


class GRE(NamedTuple):
    proto: int
    checksum: int | None
    key: int | None
    seq: int | None
    header_length: int


def parse(buf: Buffer, off: int = 0) -> GRE:
    if len(buf) - off < 4:
        raise Malformed("gre header truncated")
    flags, proto = _BASE.unpack_from(buf, off)
    if flags & 0x7 or flags & 0x4FF8:
        raise Malformed("gre version or reserved bits set")
    pos = off + 4
    fields: dict[str, int] = {}
    for bit, name in ((GRE_C, "checksum"), (GRE_K, "key"), (GRE_S, "seq")):
        if flags & bit:
            if len(buf) - pos < 4:
                raise Malformed("gre optional field truncated")
            word = struct.unpack_from("!I", buf, pos)[0]
            fields[name] = word >> 16 if name == "checksum" else word
            pos += 4
    return GRE(proto, fields.get("checksum"), fields.get("key"), fields.get("seq"), pos - off)


def build(proto: int, key: int | None = None, seq: int | None = None, with_checksum: bool = False,
          payload: bytes = b"") -> bytes:
    flags = (GRE_C if with_checksum else 0) | (GRE_K if key is not None else 0) | (GRE_S if seq is not None else 0)
    opt = b""
    if with_checksum:
        opt += b"\0\0\0\0"
    if key is not None:
        opt += struct.pack("!I", key)
    if seq is not None:
        opt += struct.pack("!I", seq)
    hdr = _BASE.pack(flags, proto) + opt
    if with_checksum:
        csum = inet_checksum(hdr + payload)
        hdr = hdr[:4] + struct.pack("!H", csum) + hdr[6:]
    return hdr
