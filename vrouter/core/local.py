"""What a vrouter answers itself, for its VMs: ARP for every address it routes, and pings to the
network's gateway address. Pure: a reply frame, or the name of the drop (vrouter/core/drops.py)."""
from .codec import arp, ethernet, ipv4
from .codec.buffer import Buffer
from .codec.errors import Malformed
from .codec.ipv4 import FLAG_MF, IPPROTO_ICMP
from .codec.l4 import ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST, build_icmp
from .config import VROUTER_MAC
from .fib import Fib
from .flowkey import Extracted


def arp_reply(frame: Buffer, vif_ip: int, fib: Fib) -> bytes | str:
    """The vrouter's ARP reply to a VM's request (Ethernet frame), or why there is none."""
    try:
        req = arp.parse(frame, 14)
    except Malformed:
        return "malformed"
    if req.op != arp.ARP_REQUEST or req.tpa == vif_ip or req.tpa == req.spa:
        return "arp_ignored"
    if fib.lookup(req.tpa) is None:
        return "no_route"
    return ethernet.build(req.sha, VROUTER_MAC, ethernet.ETH_P_ARP) + \
        arp.build(arp.ARP_REPLY, VROUTER_MAC, req.tpa, req.sha, req.spa)


def echo_reply(frame: Buffer, pkt: Extracted, eth: bytes) -> bytes | str:
    """The reply to a VM's ping of a "receive" address (behind Ethernet header ``eth``), or why not."""
    proto, src, dst, sport, _dport, ihl, tlen, _ttl, _csum, fw, ident, _flags, icmp_type = pkt
    if proto != IPPROTO_ICMP or icmp_type != ICMP_ECHO_REQUEST or fw & (FLAG_MF | 0x1FFF):
        return "receive_unsupported"
    start = 14 + ihl
    seq = frame[start + 6] << 8 | frame[start + 7]
    icmp = build_icmp(ICMP_ECHO_REPLY, 0, sport, seq, bytes(frame[start + 8:14 + tlen]))
    return eth + ipv4.build(dst, src, IPPROTO_ICMP, icmp, ttl=64, ident=ident)
