"""VXLAN header (RFC 7348): flags with the I bit, 24-bit VNI."""
import struct

from .buffer import Buffer
from .errors import Malformed

VXLAN_HLEN = 8
MAX_VNI = (1 << 24) - 1
_HDR = struct.Struct("!B3xI")


def parse(buf: Buffer, off: int = 0) -> int:
    """Returns the VNI."""
    if len(buf) - off < VXLAN_HLEN:
        raise Malformed("vxlan header truncated")
    word: int
    flags, word = _HDR.unpack_from(buf, off)
    if not flags & 0x08:
        raise Malformed("vxlan I flag not set")
    return word >> 8


def build(vni: int) -> bytes:
    if not 0 <= vni <= MAX_VNI:
        raise ValueError(f"vni {vni} out of range")
    return _HDR.pack(0x08, vni << 8)
