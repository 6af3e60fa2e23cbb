"""Receive-steering hashes over packet bytes as each NIC delivers them.

The inner hash is symmetric (a flow and its reverse give the same value) and covers the routing
instance, so both directions of a flow reach one worker whichever NIC they arrive on: that is what
lets each worker keep its own shard of the flow table (docs/vrouter-core.md, "Receive packet
steering"). With all fields it equals :func:`vrouter.core.flowkey.symmetric_hash` of the pipeline's flow
key, so the agent can name a flow's owner from a key alone.

The routing instance on the fabric side is the top MPLS label or the VNI: the pipeline accepts a label
only if it is a network id and then uses it as the VRF id, so hashing the label is hashing the VRF.
On the TAP side the shell passes the VIF's network id.

Packets that carry no flow (ARP, non-IP, truncated or malformed headers) hash to ``NO_FLOW``: they
go to a defined worker and the pipeline there counts the drop or answers the ARP. Fragments of a
datagram hash without ports (only the first carries them) so that all of them meet the head on the
worker whose fragment table knows the ports.
"""
import struct
import zlib
from collections.abc import Callable, Iterable
from typing import TypeAlias

from .codec.buffer import Buffer
from .codec.ipv4 import IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP
from .codec.l4 import ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST
from .flowkey import key_hash, symmetric_key_hash

FIELDS = ("vrf", "proto", "src", "dst", "sport", "dport")
NIC_KINDS = ("tap", "mplsoudp", "vxlan", "mplsogre")
NO_FLOW = 0

_OUTER = struct.Struct("!IIH")
# One unpack on the common case (IPv4 without options, not fragmented): outer label/VNI + inner fields.
_TAP = struct.Struct("!12xHB5xHxB2xIIHH").unpack_from          # ethertype, vihl, frag, proto, src, dst, ports
_MPLSOUDP = struct.Struct("!IB5xHxB2xIIHH").unpack_from         # label word, ...
_VXLAN = struct.Struct("!B3xI12xHB5xHxB2xIIHH").unpack_from     # flags, VNI word, inner ethertype, ...
_MPLSOGRE = struct.Struct("!IIB5xHxB2xIIHH").unpack_from        # GRE word, label word, ...
_IP = struct.Struct("!B5xHxB2xII").unpack_from                  # vihl, frag, proto, src, dst
_PORTS = struct.Struct("!HH").unpack_from
_U16 = struct.Struct("!H").unpack_from
_U32 = struct.Struct("!I").unpack_from
_STRUCT_ERROR = struct.error
_GRE_MPLS = 0x00008847
_GRE_C, _GRE_K, _GRE_S = 0x8000, 0x2000, 0x1000
_MAX_LABELS = 8

# The inner hash of one NIC kind: (buffer as read, VIF network id for a TAP, offset) -> 32-bit hash.
KindHash: TypeAlias = Callable[[Buffer, int | None, int], int]


def validate_fields(fields: Iterable[str]) -> tuple[str, ...]:
    """The field tuple, or ValueError with a one-line reason (the hash must stay symmetric)."""
    if isinstance(fields, str) or not hasattr(fields, "__iter__"):
        raise ValueError(f"fields: expected a list of {', '.join(FIELDS)}")
    fields = tuple(fields)
    for f in fields:
        if f not in FIELDS:
            raise ValueError(f"fields: {f!r} is not one of {', '.join(FIELDS)}")
    if not fields:
        raise ValueError("fields: at least one field is needed")
    if len(set(fields)) != len(fields):
        raise ValueError("fields: a field is listed twice")
    for a, b in (("src", "dst"), ("sport", "dport")):
        if (a in fields) != (b in fields):
            raise ValueError(f"fields: {a} and {b} go together (one without the other is not symmetric)")
    return fields


class InnerHash:
    """Hash of the inner flow for each NIC kind: ``hasher.for_kind(kind)(buf, vrf, off) -> int``.

    ``symmetric=False`` hashes the key in its direction (as a kernel hash on one direction's tuple
    would); it exists to show what breaks without symmetry, and the steering config never uses it.
    """

    def __init__(self, fields: Iterable[str] = FIELDS, symmetric: bool = True) -> None:
        self.fields = validate_fields(fields)
        self.symmetric = symmetric
        full = 0xFFFFFFFF
        self._masks = tuple(full if f in self.fields else 0 for f in FIELDS)
        self._needs_vrf = "vrf" in self.fields
        if set(self.fields) == set(FIELDS) and symmetric:
            # No masking: the common configuration, ~25% cheaper.
            self.key = symmetric_key_hash  # type: ignore[method-assign]
        self._by_kind: dict[str, KindHash] = {"tap": self.tap, "mplsoudp": self.mplsoudp, "vxlan": self.vxlan,
                         "mplsogre": self.mplsogre}

    def for_kind(self, kind: str) -> KindHash:
        try:
            return self._by_kind[kind]
        except KeyError:
            raise ValueError(f"nic kind {kind!r} is not one of {', '.join(NIC_KINDS)}") from None

    def key(self, vrf: int, proto: int, src: int, dst: int, sport: int, dport: int) -> int:
        mv, mp, ms, md, msp, mdp = self._masks
        vrf &= mv
        proto &= mp
        src &= ms
        dst &= md
        sport &= msp
        dport &= mdp
        return (symmetric_key_hash if self.symmetric else key_hash)(vrf, proto, src, dst, sport, dport)

    # ------------------------------------------------------------ per NIC kind
    def tap(self, buf: Buffer, vrf: int | None, off: int = 0) -> int:
        """An Ethernet frame from a VM's TAP; ``vrf`` is the VIF's network id."""
        if vrf is None:
            if self._needs_vrf:
                raise ValueError("tap steering hashes the vrf: pass the vif's network id")
            vrf = 0
        try:
            et, vihl, fw, proto, src, dst, sp, dp = _TAP(buf, off)
        except _STRUCT_ERROR:
            if len(buf) - off < 14 or _U16(buf, off + 12)[0] != 0x0800:
                return NO_FLOW
            return self._ip(vrf, buf, off + 14)
        if et != 0x0800:
            return NO_FLOW
        if vihl == 0x45 and not fw & 0x3FFF and (proto == IPPROTO_TCP or proto == IPPROTO_UDP):
            return self.key(vrf, proto, src, dst, sp, dp)
        return self._ip(vrf, buf, off + 14)

    def mplsoudp(self, buf: Buffer, vrf: int | None = None, off: int = 0) -> int:
        """Payload after the outer UDP header: MPLS label stack + inner IPv4."""
        try:
            word, vihl, fw, proto, src, dst, sp, dp = _MPLSOUDP(buf, off)
        except _STRUCT_ERROR:
            return self._mpls(buf, off)
        if word & 0x100 and vihl == 0x45 and not fw & 0x3FFF and (proto == IPPROTO_TCP or proto == IPPROTO_UDP):
            return self.key(word >> 12, proto, src, dst, sp, dp)
        return self._mpls(buf, off)

    def vxlan(self, buf: Buffer, vrf: int | None = None, off: int = 0) -> int:
        """Payload after the outer UDP header: VXLAN header + inner Ethernet + IPv4."""
        try:
            flags, word, et, vihl, fw, proto, src, dst, sp, dp = _VXLAN(buf, off)
        except _STRUCT_ERROR:
            if len(buf) - off < 22 or not buf[off] & 0x08 or _U16(buf, off + 20)[0] != 0x0800:
                return NO_FLOW
            return self._ip(_U32(buf, off + 4)[0] >> 8, buf, off + 22)
        if not flags & 0x08 or et != 0x0800:
            return NO_FLOW
        if vihl == 0x45 and not fw & 0x3FFF and (proto == IPPROTO_TCP or proto == IPPROTO_UDP):
            return self.key(word >> 8, proto, src, dst, sp, dp)
        return self._ip(word >> 8, buf, off + 22)

    def mplsogre(self, buf: Buffer, vrf: int | None = None, off: int = 0) -> int:
        """Payload after the outer IPv4 header: GRE + MPLS label stack + inner IPv4.

        The outer header of MPLSoGRE has no port to give entropy, so this inner hash is the only
        way to spread one peer's traffic (Tungsten Fabric's DPDK vrouter does the same in software).
        """
        try:
            g, word, vihl, fw, proto, src, dst, sp, dp = _MPLSOGRE(buf, off)
        except _STRUCT_ERROR:
            return self._gre(buf, off)
        if g == _GRE_MPLS and word & 0x100 and vihl == 0x45 and not fw & 0x3FFF and \
                (proto == IPPROTO_TCP or proto == IPPROTO_UDP):
            return self.key(word >> 12, proto, src, dst, sp, dp)
        return self._gre(buf, off)

    # ------------------------------------------------------------ uncommon headers
    def _gre(self, buf: Buffer, off: int) -> int:
        if len(buf) - off < 4:
            return NO_FLOW
        flags, proto = struct.unpack_from("!HH", buf, off)
        if flags & 0x4FFF or proto != 0x8847:
            return NO_FLOW
        skip = 4 * (bool(flags & _GRE_C) + bool(flags & _GRE_K) + bool(flags & _GRE_S))
        return self._mpls(buf, off + 4 + skip)

    def _mpls(self, buf: Buffer, off: int) -> int:
        # The top label is the routing instance; the inner packet follows the bottom of the stack.
        top: int | None = None
        for _ in range(_MAX_LABELS):
            if len(buf) - off < 4:
                return NO_FLOW
            word = _U32(buf, off)[0]
            off += 4
            if top is None:
                top = word >> 12
            if word & 0x100:
                return self._ip(top, buf, off)
        return NO_FLOW

    def _ip(self, vrf: int, buf: Buffer, off: int) -> int:
        if len(buf) - off < 20:
            return NO_FLOW
        vihl, fw, proto, src, dst = _IP(buf, off)
        ihl = (vihl & 15) * 4
        if vihl >> 4 != 4 or ihl < 20 or len(buf) - off < ihl:
            return NO_FLOW
        if fw & 0x3FFF:
            return self.key(vrf, proto, src, dst, 0, 0)
        l4 = off + ihl
        if proto == IPPROTO_TCP or proto == IPPROTO_UDP:
            if len(buf) - l4 < 4:
                return NO_FLOW
            sp, dp = _PORTS(buf, l4)
        elif proto == IPPROTO_ICMP:
            if len(buf) - l4 < 8:
                return NO_FLOW
            # Echo request and reply share the identifier as both ports, as in the pipeline's key.
            sp = dp = _U16(buf, l4 + 4)[0] if buf[l4] in (ICMP_ECHO_REQUEST, ICMP_ECHO_REPLY) else 0
        else:
            sp = dp = 0
        return self.key(vrf, proto, src, dst, sp, dp)


def outer_hash(src: int, dst: int, sport: int = 0) -> int:
    """First stage of extended RPS: outer source and destination address + UDP source port.

    The sending vrouter sets the source port from the inner flow (the entropy port), so this hash is
    constant per flow direction without decapsulating anything. MPLSoGRE has no port: pass 0, and
    every packet of one peer gets one value.
    """
    return zlib.crc32(_OUTER.pack(src, dst, sport))
