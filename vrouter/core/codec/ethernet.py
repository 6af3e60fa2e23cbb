"""Ethernet II header (no VLAN tags: the vrouter's TAPs and VXLAN inner frames are untagged)."""
import struct
from typing import NamedTuple

from .buffer import Buffer
from .errors import Malformed

ETH_HLEN = 14
ETH_P_IP = 0x0800
ETH_P_ARP = 0x0806
ETH_P_MPLS = 0x8847

_HDR = struct.Struct("!6s6sH")


class Ethernet(NamedTuple):
    dst: bytes
    src: bytes
    ethertype: int


def mac_to_bytes(text: str) -> bytes:
    parts = text.split(":")
    if len(parts) != 6 or not all(len(p) == 2 for p in parts):
        raise ValueError(f"{text!r} is not a MAC address (expected six hex pairs like 02:00:00:00:00:01)")
    try:
        return bytes(int(p, 16) for p in parts)
    except ValueError:
        raise ValueError(f"{text!r} is not a MAC address (expected six hex pairs like 02:00:00:00:00:01)") from None


def mac_to_str(mac: bytes) -> str:
    return ":".join(f"{b:02x}" for b in mac)


def parse(buf: Buffer, off: int = 0) -> Ethernet:
    if len(buf) - off < ETH_HLEN:
        raise Malformed("ethernet header truncated")
    return Ethernet(*_HDR.unpack_from(buf, off))


def build(dst: bytes, src: bytes, ethertype: int) -> bytes:
    return _HDR.pack(dst, src, ethertype)
