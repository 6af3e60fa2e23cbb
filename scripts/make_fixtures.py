#!/usr/bin/env python3
"""Regenerate the replay fixtures in tests/fixtures/ with scapy (deterministic output).

The captures are what server srv1 (underlay 10.0.1.1) sees on its VM taps and its fabric port;
tests/fixtures/replay-srv1.yaml is the matching vrouter configuration.
Run: .venv/bin/python scripts/make_fixtures.py
"""
import pathlib

from scapy.contrib.mpls import MPLS
from scapy.layers.inet import GRE, ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, Ether
from scapy.layers.vxlan import VXLAN
from scapy.packet import Raw
from scapy.utils import wrpcap

OUT = pathlib.Path(__file__).resolve().parents[1] / "tests" / "fixtures"
VR_MAC = "00:00:5e:00:01:00"
RED1_MAC, RED3_MAC, BLUE1_MAC = "02:00:00:00:01:0b", "02:00:00:00:01:0d", "02:00:00:00:02:0b"
FABRIC_MAC, PORT_MAC = "02:ff:00:00:00:01", "02:ee:00:00:00:01"
SRV1, SRV2 = "10.0.1.1", "10.0.2.1"
RED1, RED2, RED3 = "192.168.1.11", "192.168.1.12", "192.168.1.13"
GW = "192.168.1.1"
T0 = 1_700_000_000.0


def from_vm(mac, inner):
    return Ether(src=mac, dst=VR_MAC) / inner


def mplsoudp(inner, label=100, src=SRV2, sport=51000):
    return Ether(src=FABRIC_MAC, dst=PORT_MAC) / IP(src=src, dst=SRV1) / UDP(sport=sport, dport=6635) / \
        MPLS(label=label, s=1, ttl=64) / inner


def vxlan(inner, vni, src=SRV2):
    return Ether(src=FABRIC_MAC, dst=PORT_MAC) / IP(src=src, dst=SRV1) / UDP(sport=52000, dport=4789) / \
        VXLAN(vni=vni, flags=0x08) / Ether(src=VR_MAC, dst=BLUE1_MAC) / inner


def mplsogre(inner, label=100, src=SRV2):
    return Ether(src=FABRIC_MAC, dst=PORT_MAC) / IP(src=src, dst=SRV1) / GRE(proto=0x8847) / \
        MPLS(label=label, s=1, ttl=64) / inner


def tcp(src, dst, sport, dport, flags, seq, ack, data=b"", ttl=64):
    pkt = IP(src=src, dst=dst, ttl=ttl) / TCP(sport=sport, dport=dport, flags=flags, seq=seq, ack=ack, window=65535)
    return pkt / Raw(data) if data else pkt


def session():
    c, s = 1000, 5000
    get, ok = b"GET / HTTP/1.0\r\n\r\n", b"HTTP/1.0 200 OK\r\n\r\nhello"
    return [
        from_vm(RED1_MAC, ARP(op=1, hwsrc=RED1_MAC, psrc=RED1, pdst=GW)),
        from_vm(RED1_MAC, IP(src=RED1, dst=GW) / ICMP(type=8, id=7, seq=1) / Raw(b"ping")),
        from_vm(RED1_MAC, ARP(op=1, hwsrc=RED1_MAC, psrc=RED1, pdst=RED2)),
        from_vm(RED1_MAC, tcp(RED1, RED2, 40000, 80, "S", c, 0)),
        mplsoudp(tcp(RED2, RED1, 80, 40000, "SA", s, c + 1, ttl=63)),
        from_vm(RED1_MAC, tcp(RED1, RED2, 40000, 80, "A", c + 1, s + 1)),
        from_vm(RED1_MAC, tcp(RED1, RED2, 40000, 80, "PA", c + 1, s + 1, get)),
        mplsoudp(tcp(RED2, RED1, 80, 40000, "PA", s + 1, c + 1 + len(get), ok, ttl=63)),
        from_vm(RED1_MAC, tcp(RED1, RED2, 40000, 80, "FA", c + 1 + len(get), s + 1 + len(ok))),
        mplsoudp(tcp(RED2, RED1, 80, 40000, "FA", s + 1 + len(ok), c + 2 + len(get), ttl=63)),
        from_vm(RED1_MAC, tcp(RED1, RED2, 40000, 80, "A", c + 2 + len(get), s + 2 + len(ok))),
        # Same addresses in network blue (VXLAN VNI 200): a separate routing instance.
        from_vm(BLUE1_MAC, IP(src=RED1, dst=RED2) / UDP(sport=5353, dport=53) / Raw(b"query")),
        vxlan(IP(src=RED2, dst=RED1, ttl=63) / UDP(sport=53, dport=5353) / Raw(b"answer"), 200),
        # Local VM to VM in red, and a ping to red2 answered over MPLS over GRE.
        from_vm(RED1_MAC, IP(src=RED1, dst=RED3) / UDP(sport=6000, dport=7) / Raw(b"echo")),
        from_vm(RED3_MAC, IP(src=RED3, dst=RED1) / UDP(sport=7, dport=6000) / Raw(b"echo")),
        from_vm(RED1_MAC, IP(src=RED1, dst=RED2) / ICMP(type=8, id=9, seq=1)),
        mplsogre(IP(src=RED2, dst=RED1, ttl=63) / ICMP(type=0, id=9, seq=1)),
    ]


def drops():
    good = bytes(from_vm(RED1_MAC, IP(src=RED1, dst=RED3) / UDP(sport=1, dport=2) / Raw(b"x" * 8)))
    bad_csum = bytearray(good)
    bad_csum[24] ^= 0xFF
    return [
        from_vm(RED1_MAC, tcp(RED1, RED2, 40001, 22, "S", 1, 0)),           # policy_deny (ssh to red2)
        from_vm(RED1_MAC, tcp(RED1, RED2, 40001, 22, "S", 1, 0)),           # ... a hit on the drop entry
        Ether(good[:30]),                                                   # malformed (truncated)
        Ether(bytes(bad_csum)),                                             # malformed (IP checksum)
        from_vm(RED1_MAC, IP(src="192.168.1.66", dst=RED3) / UDP(sport=1, dport=2)),   # spoofed_source
        from_vm(RED1_MAC, IP(src=RED1, dst=RED3, ttl=1) / UDP(sport=3, dport=4)),      # ttl_expired
        from_vm(RED1_MAC, IP(src=RED1, dst="192.168.1.99") / UDP(sport=5, dport=6)),  # no_route
        from_vm(RED1_MAC, IPv6(src="fe80::1", dst="fe80::2") / UDP()),                # not_ip
        Ether(src="02:99:99:99:99:99", dst=VR_MAC) / IP(src=RED1, dst=RED3) / UDP(),  # invalid_vif
        mplsoudp(tcp(RED2, RED1, 80, 1, "S", 1, 0), src="10.0.9.9"),                 # invalid_source
        mplsoudp(tcp(RED2, RED1, 80, 1, "S", 1, 0), label=999),                      # unknown_label
    ]


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    for name, pkts in (("session-srv1.pcap", session()), ("drops-srv1.pcap", drops())):
        for i, p in enumerate(pkts):
            p.time = T0 + i * 0.001
        wrpcap(str(OUT / name), pkts)
        print(f"wrote {OUT / name} ({len(pkts)} packets)")


if __name__ == "__main__":
    main()
