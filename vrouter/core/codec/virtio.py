"""virtio_net_hdr: the 10 bytes before every frame on a TAP opened with IFF_VNET_HDR.

Layout (little-endian, ``'<BBHHHH'``): flags, gso_type, hdr_len, gso_size, csum_start, csum_offset.
``NEEDS_CSUM`` means the checksum field at ``csum_start + csum_offset`` holds only the pseudo-header
sum and the receiver of the frame completes it over ``[csum_start, end)``; ``gso_type`` TCPV4 with
``gso_size`` = MSS means the frame is a TCP super-frame that stands for several MSS-sized segments.
"""
import struct
from typing import NamedTuple

from .buffer import Buffer
from .errors import Malformed

HDR_LEN = 10

NEEDS_CSUM = 0x01
DATA_VALID = 0x02

GSO_NONE = 0
GSO_TCPV4 = 1
GSO_UDP = 3
GSO_TCPV6 = 4
GSO_UDP_L4 = 5
GSO_ECN = 0x80          # the first segment carries CWR (Linux: SKB_GSO_TCP_ECN)

TCP_CSUM_OFFSET = 16
UDP_CSUM_OFFSET = 6

_HDR = struct.Struct("<BBHHHH")
pack = _HDR.pack

# A frame whose checksums are complete and which stands for itself.
PLAIN = pack(0, GSO_NONE, 0, 0, 0, 0)


class VnetHdr(NamedTuple):
    flags: int
    gso_type: int
    hdr_len: int
    gso_size: int
    csum_start: int
    csum_offset: int

    @property
    def needs_csum(self) -> bool:
        return bool(self.flags & NEEDS_CSUM)

    @property
    def is_tcpv4_gso(self) -> bool:
        return self.gso_type & ~GSO_ECN == GSO_TCPV4


def parse(buf: Buffer, off: int = 0) -> VnetHdr:
    if len(buf) - off < HDR_LEN:
        raise Malformed("virtio_net_hdr truncated")
    return VnetHdr(*_HDR.unpack_from(buf, off))


def build(flags: int = 0, gso_type: int = GSO_NONE, hdr_len: int = 0, gso_size: int = 0, csum_start: int = 0,
          csum_offset: int = 0) -> bytes:
    return pack(flags, gso_type, hdr_len, gso_size, csum_start, csum_offset)


def partial(csum_start: int, csum_offset: int) -> bytes:
    """One packet whose L4 checksum field holds the pseudo-header sum."""
    return pack(NEEDS_CSUM, GSO_NONE, 0, 0, csum_start, csum_offset)


def tcpv4_gso(l3_off: int, ihl: int, thl: int, mss: int, cwr: bool = False) -> bytes:
    """A TCP/IPv4 super-frame with the IPv4 header at ``l3_off`` (14 behind Ethernet), partial checksum."""
    gso = GSO_TCPV4 | GSO_ECN if cwr else GSO_TCPV4
    return pack(NEEDS_CSUM, gso, l3_off + ihl + thl, mss, l3_off + ihl, TCP_CSUM_OFFSET)
