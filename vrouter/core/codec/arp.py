"""ARP for IPv4 over Ethernet (RFC 826): the vrouter answers its VMs' requests itself."""
import struct
from typing import NamedTuple

from .buffer import Buffer
from .errors import Malformed

ARP_REQUEST, ARP_REPLY = 1, 2
_ARP = struct.Struct("!HHBBH6sI6sI")


class ARP(NamedTuple):
    op: int
    sha: bytes
    spa: int
    tha: bytes
    tpa: int


def parse(buf: Buffer, off: int = 0) -> ARP:
    if len(buf) - off < 28:
        raise Malformed("arp truncated")
    htype, ptype, hlen, plen, op, sha, spa, tha, tpa = _ARP.unpack_from(buf, off)
    if htype != 1 or ptype != 0x0800 or hlen != 6 or plen != 4:
        raise Malformed("arp is not ipv4-over-ethernet")
    return ARP(op, sha, spa, tha, tpa)


def build(op: int, sha: bytes, spa: int, tha: bytes, tpa: int) -> bytes:
    return _ARP.pack(1, 0x0800, 6, 4, op, sha, spa, tha, tpa)
