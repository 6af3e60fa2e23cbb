"""The dp_hash Open vSwitch's userspace datapath gives an IPv4 packet, so `testbed trace` can resume
`ofproto/trace` where a dp_hash select group recirculates (testbed/trace.py) and let OVS pick the
bucket as it does for the real packet.

The datapath computes the packet's 5-tuple hash when it receives it (`miniflow_hash_5tuple`, basis
0: murmur3-style `hash_add` over source, destination, protocol and the two ports as they lie in
memory) and the hash action of the select group turns it into dp_hash with `hash_int(hash, 0)`
(lib/odp-execute.c, OVS_HASH_ALG_L4 with a valid RSS hash). These are the portable `mhash` versions
(OVS built without SSE 4.2 CRC32, as Debian's is). Checked against the dp_hash values OVS 3.1 shows
in `ovs-appctl dpctl/dump-flows` for real tunnel packets (tests/unit/test_trace_fabric.py).
"""
from __future__ import annotations

import socket
import struct

_M = 0xFFFFFFFF
_LE32 = struct.Struct("<I")
_PORTS_NET = struct.Struct("!HH")
_WITH_PORTS = (1, 6, 17, 58, 132)      # ICMP, TCP, UDP, ICMPv6, SCTP: their ports (type/code) are hashed


def _rot(x: int, k: int) -> int:
    return ((x << k) | (x >> (32 - k))) & _M


def hash_add(h: int, data: int) -> int:
    if data:
        data = _rot((data * 0xCC9E2D51) & _M, 15) * 0x1B873593 & _M
        h ^= data
    return (_rot(h, 13) * 5 + 0xE6546B64) & _M


def hash_finish(h: int, final: int) -> int:
    h ^= final
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & _M
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & _M
    return h ^ (h >> 16)


def hash_int(x: int, basis: int) -> int:
    return hash_finish(hash_add(hash_add(x, 0), basis), 8)


def five_tuple(src: str, dst: str, proto: int, sport: int, dport: int) -> int:
    """miniflow_hash_5tuple(basis 0) of an IPv4 packet; fields in network byte order, read as the
    host's (little-endian) 32-bit words."""
    h = hash_add(0, _LE32.unpack(socket.inet_aton(src))[0])
    h = hash_add(h, _LE32.unpack(socket.inet_aton(dst))[0])
    h = hash_add(h, proto)
    if proto in _WITH_PORTS:
        h = hash_add(h, _LE32.unpack(_PORTS_NET.pack(sport, dport))[0])
    return hash_finish(h, 42)


def dp_hash(src: str, dst: str, proto: int, sport: int, dport: int) -> int:
    """The dp_hash of the datapath's hash action (basis 0) for this packet."""
    return hash_int(five_tuple(src, dst, proto, sport, dport), 0)
