"""Codecs round-trip against scapy in both directions (ours -> scapy, scapy -> ours)."""
import pytest
from scapy.contrib.mpls import MPLS
from scapy.layers.inet import GRE, ICMP, IP, TCP, UDP
from scapy.layers.l2 import ARP, Ether
from scapy.layers.vxlan import VXLAN
from scapy.packet import Raw

from vrouter.core.codec import Malformed, arp, ethernet, gre, ipv4, l4, mpls, outer, vxlan
from vrouter.core.codec.ipv4 import int_to_ip, ip_to_int

A, B = "192.168.1.11", "192.168.1.12"
MAC_A, MAC_B = "02:00:00:00:01:0b", "02:00:00:00:01:0c"


def test_ethernet_both_ways():
    raw = ethernet.build(ethernet.mac_to_bytes(MAC_B), ethernet.mac_to_bytes(MAC_A), 0x0800)
    s = Ether(raw + b"\0" * 20)
    assert (s.dst, s.src, s.type) == (MAC_B, MAC_A, 0x0800)
    hdr = ethernet.parse(bytes(Ether(dst=MAC_A, src=MAC_B, type=0x0806)))
    assert (ethernet.mac_to_str(hdr.dst), ethernet.mac_to_str(hdr.src), hdr.ethertype) == (MAC_A, MAC_B, 0x0806)


def test_mac_text_errors():
    with pytest.raises(ValueError):
        ethernet.mac_to_bytes("02:00:00:00:01")
    with pytest.raises(ValueError):
        ethernet.mac_to_bytes("zz:00:00:00:01:02")


def test_arp_both_ways():
    raw = arp.build(arp.ARP_REPLY, ethernet.mac_to_bytes(MAC_A), ip_to_int(A), ethernet.mac_to_bytes(MAC_B),
                    ip_to_int(B))
    s = ARP(raw)
    assert (s.op, s.hwsrc, s.psrc, s.hwdst, s.pdst) == (2, MAC_A, A, MAC_B, B)
    p = arp.parse(bytes(ARP(op=1, hwsrc=MAC_B, psrc=B, pdst=A)))
    assert (p.op, p.spa, p.tpa) == (1, ip_to_int(B), ip_to_int(A))


@pytest.mark.parametrize("options", [b"", b"\x94\x04\x00\x00", b"\x01\x01\x01\x00\x07\x07\x04" + b"\0" * 4])
def test_ipv4_both_ways(options):
    raw = ipv4.build(ip_to_int(A), ip_to_int(B), 17, b"payload!", ttl=33, ident=99, tos=0x10, options=options)
    s = IP(raw)
    assert (s.src, s.dst, s.ttl, s.id, s.tos, s.proto, s.len) == (A, B, 33, 99, 0x10, 17, len(raw))
    assert s.ihl * 4 == 20 + len(options) + (-len(options) % 4)
    s2 = IP(raw)
    del s2.chksum
    assert IP(bytes(s2)).chksum == s.chksum
    ref = bytes(IP(src=B, dst=A, ttl=7, id=5, proto=6, options=[]) / Raw(b"abc"))
    p = ipv4.parse(ref)
    assert (int_to_ip(p.src), int_to_ip(p.dst), p.ttl, p.ident, p.proto, p.total_length) == (B, A, 7, 5, 6, 23)


def test_ipv4_fragment_fields_match_scapy():
    ref = bytes(IP(src=A, dst=B, id=42, flags="MF", frag=0, proto=17) / Raw(b"x" * 16))
    p = ipv4.parse(ref)
    assert p.flags == ipv4.FLAG_MF and p.frag_offset == 0 and p.is_fragment
    ref = bytes(IP(src=A, dst=B, id=42, flags=0, frag=3, proto=17) / Raw(b"x" * 8))
    p = ipv4.parse(ref)
    assert p.frag_offset == 3 and p.is_fragment
    raw = ipv4.build(ip_to_int(A), ip_to_int(B), 17, b"y" * 8, flags=ipv4.FLAG_DF, frag_offset=0)
    assert IP(raw).flags == "DF"


def test_ipv4_rejects_bad_input():
    good = bytes(IP(src=A, dst=B) / Raw(b"abcd"))
    with pytest.raises(Malformed):
        ipv4.parse(good[:19])
    with pytest.raises(Malformed):
        ipv4.parse(good[:-1])                     # total length beyond buffer
    corrupt = bytearray(good)
    corrupt[10] ^= 0xFF
    with pytest.raises(Malformed):
        ipv4.parse(bytes(corrupt))


def test_tcp_both_ways():
    seg = l4.build_tcp(ip_to_int(A), ip_to_int(B), 40000, 80, b"hello", seq=1000, ack=7,
                       flags=l4.TCP_SYN | l4.TCP_ACK, window=512, options=b"\x02\x04\x05\xb4")
    pkt = IP(bytes(IP(src=A, dst=B, proto=6) / Raw(seg)))
    t = pkt[TCP]
    assert (t.sport, t.dport, t.seq, t.ack, t.window, str(t.flags)) == (40000, 80, 1000, 7, 512, "SA")
    assert t.options == [("MSS", 1460)]
    reference = IP(bytes(IP(src=A, dst=B) / TCP(sport=40000, dport=80, seq=1000, ack=7, flags="SA", window=512,
                                                 options=[("MSS", 1460)]) / Raw(b"hello")))
    assert t.chksum == reference[TCP].chksum
    p = l4.parse_tcp(bytes(TCP(sport=1, dport=2, seq=3, ack=4, flags="FA", window=9)))
    assert (p.sport, p.dport, p.seq, p.ack, p.flags, p.window, p.header_length) == (1, 2, 3, 4, 0x11, 9, 20)


def test_udp_both_ways():
    seg = l4.build_udp(ip_to_int(A), ip_to_int(B), 5000, 53, b"query")
    pkt = IP(bytes(IP(src=A, dst=B, proto=17) / Raw(seg)))
    ref = IP(bytes(IP(src=A, dst=B) / UDP(sport=5000, dport=53) / Raw(b"query")))
    assert (pkt[UDP].sport, pkt[UDP].dport, pkt[UDP].len, pkt[UDP].chksum) == (5000, 53, 13, ref[UDP].chksum)
    p = l4.parse_udp(bytes(UDP(sport=7, dport=9) / Raw(b"abc")))
    assert (p.sport, p.dport, p.length) == (7, 9, 11)


def test_icmp_both_ways():
    msg = l4.build_icmp(8, 0, 0x1234, 5, b"abcdefgh")
    s = ICMP(msg)
    ref = ICMP(bytes(ICMP(type=8, id=0x1234, seq=5) / Raw(b"abcdefgh")))
    assert (s.type, s.id, s.seq, s.chksum) == (8, 0x1234, 5, ref.chksum)
    p = l4.parse_icmp(bytes(ICMP(type=0, id=9, seq=3)))
    assert (p.type, p.code, p.ident, p.seq) == (0, 0, 9, 3)


def test_mpls_stack_both_ways():
    raw = mpls.build_stack([100, 2000, 30], ttl=17)
    s = MPLS(raw + bytes(IP(src=A, dst=B)))
    assert (s.label, s.s, s.ttl) == (100, 0, 17)
    assert (s.payload.label, s.payload.payload.label, s.payload.payload.s) == (2000, 30, 1)
    stack, end = mpls.parse_stack(bytes(MPLS(label=100, s=0, ttl=3) / MPLS(label=16, s=1, ttl=4)))
    assert [e.label for e in stack] == [100, 16] and stack[-1].bottom and end == 8
    with pytest.raises(Malformed):
        mpls.parse_stack(bytes(MPLS(label=100, s=0)))


def test_gre_both_ways():
    raw = gre.build(0x8847, key=77, seq=5, with_checksum=True, payload=b"abcd")
    s = GRE(raw + b"abcd")
    assert (s.proto, s.key, s.sequence_number, s.key_present, s.chksum_present) == (0x8847, 77, 5, 1, 1)
    ref = GRE(bytes(GRE(proto=0x8847, chksum_present=1, key_present=1, key=77, seqnum_present=1, sequence_number=5)
                    / Raw(b"abcd")))
    assert s.chksum == ref.chksum
    p = gre.parse(bytes(GRE(proto=0x0800, key_present=1, key=9)))
    assert (p.proto, p.key, p.seq, p.header_length) == (0x0800, 9, None, 8)


def test_vxlan_both_ways():
    s = VXLAN(vxlan.build(5000) + bytes(Ether()))
    assert (s.vni, s.flags) == (5000, 0x08)
    assert vxlan.parse(bytes(VXLAN(vni=123456))) == 123456
    with pytest.raises(Malformed):
        vxlan.parse(bytes(VXLAN(vni=1, flags=0)))


def _inner():
    return bytes(IP(src=A, dst=B, ttl=60) / TCP(sport=1234, dport=80, flags="S"))


def test_mplsoudp_frame_matches_scapy():
    payload = mpls.build_stack([100]) + _inner()
    frame = outer.build_fabric_frame(b"\x02" * 6, b"\x04" * 6, ip_to_int("10.0.1.1"), ip_to_int("10.0.2.1"),
                                     "mplsoudp", 55555, payload)
    s = Ether(frame)
    assert s[UDP].dport == 6635 and s[UDP].sport == 55555
    assert MPLS(bytes(s[UDP].payload)).label == 100
    ref = bytes(Ether(dst=b"\x04" * 6, src=b"\x02" * 6) / IP(src="10.0.1.1", dst="10.0.2.1") /
                UDP(sport=55555, dport=6635) / MPLS(label=100, ttl=64) / IP(_inner()))
    o = outer.parse_fabric_frame(ref)
    assert (int_to_ip(o.src), o.encap, ref[o.payload_offset:o.end]) == ("10.0.1.1", "mplsoudp", payload)


def test_mplsogre_frame_matches_scapy():
    payload = gre.build(0x8847) + mpls.build_stack([100]) + _inner()
    frame = outer.build_fabric_frame(b"\x02" * 6, b"\x04" * 6, ip_to_int("10.0.1.1"), ip_to_int("10.0.2.1"),
                                     "mplsogre", 0, payload)
    s = Ether(frame)
    assert s[IP].proto == 47 and s[GRE].proto == 0x8847
    ref = bytes(Ether() / IP(src="10.0.1.1", dst="10.0.2.1") / GRE(proto=0x8847) / MPLS(label=100, ttl=64) /
                IP(_inner()))
    o = outer.parse_fabric_frame(ref)
    assert (o.encap, ref[o.payload_offset:o.end]) == ("mplsogre", payload)


def test_vxlan_frame_matches_scapy():
    inner_eth = bytes(Ether(dst=MAC_B, src="00:00:5e:00:01:00", type=0x0800)) + _inner()
    payload = vxlan.build(100) + inner_eth
    frame = outer.build_fabric_frame(b"\x02" * 6, b"\x04" * 6, ip_to_int("10.0.1.1"), ip_to_int("10.0.2.1"),
                                     "vxlan", 50000, payload)
    s = Ether(frame)
    assert s[UDP].dport == 4789 and s[VXLAN].vni == 100 and s[VXLAN][Ether].dst == MAC_B
    ref = bytes(Ether() / IP(src="10.0.1.1", dst="10.0.2.1") / UDP(sport=50000, dport=4789) /
                VXLAN(vni=100, flags=0x08) / Ether(inner_eth))
    o = outer.parse_fabric_frame(ref)
    assert (o.encap, ref[o.payload_offset:o.end]) == ("vxlan", payload)


def test_non_tunnel_frames_are_not_fabric():
    assert outer.parse_fabric_frame(bytes(Ether() / IP(src=A, dst=B) / UDP(dport=53))) is None
    assert outer.parse_fabric_frame(bytes(Ether() / ARP())) is None
