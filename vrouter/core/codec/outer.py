"""Tunnel encapsulations between servers: MPLS over UDP (RFC 7510), MPLS over GRE, VXLAN.

The shells send and receive the outer UDP/GRE through kernel sockets, so the pipeline works on the
*payload* (bytes after the outer UDP header, or after the outer IPv4 header for GRE). Whole outer
frames only matter for offline replay and tests: this module parses and builds them.
"""
from typing import NamedTuple

from . import ethernet, ipv4, l4
from .buffer import Buffer
from .errors import Malformed

MPLSOUDP_PORT = 6635
VXLAN_PORT = 4789
ENCAPS = ("mplsoudp", "mplsogre", "vxlan")


class OuterFrame(NamedTuple):
    src: int            # outer IPv4 source (underlay address of the sending server)
    dst: int
    encap: str
    payload_offset: int  # where the from_fabric payload starts in the frame
    end: int             # end of the outer IPv4 datagram (drops Ethernet padding)


def parse_fabric_frame(frame: Buffer) -> OuterFrame | None:
    """Outer Ethernet/IPv4/UDP|GRE -> OuterFrame, or None if this is not a tunnel packet."""
    eth = ethernet.parse(frame, 0)
    if eth.ethertype != ethernet.ETH_P_IP:
        return None
    ip = ipv4.parse(frame, ethernet.ETH_HLEN)
    start = ethernet.ETH_HLEN + ip.ihl
    end = ethernet.ETH_HLEN + ip.total_length
    if ip.is_fragment:
        return None
    if ip.proto == ipv4.IPPROTO_GRE:
        return OuterFrame(ip.src, ip.dst, "mplsogre", start, end)
    if ip.proto == ipv4.IPPROTO_UDP:
        udp = l4.parse_udp(frame, start, end)
        encap = {MPLSOUDP_PORT: "mplsoudp", VXLAN_PORT: "vxlan"}.get(udp.dport)
        if encap is None:
            return None
        return OuterFrame(ip.src, ip.dst, encap, start + 8, start + udp.length)
    return None


def build_fabric_frame(src_mac: bytes, dst_mac: bytes, src: int, dst: int, encap: str, sport: int,
                       payload: bytes, ttl: int = 64) -> bytes:
    if encap == "mplsogre":
        inner = payload
        proto = ipv4.IPPROTO_GRE
    elif encap in ("mplsoudp", "vxlan"):
        dport = MPLSOUDP_PORT if encap == "mplsoudp" else VXLAN_PORT
        inner = l4.build_udp(src, dst, sport, dport, payload)
        proto = ipv4.IPPROTO_UDP
    else:
        raise Malformed(f"unknown encapsulation {encap!r}")
    return ethernet.build(dst_mac, src_mac, ethernet.ETH_P_IP) + ipv4.build(src, dst, proto, inner, ttl=ttl)
