"""Pipeline behaviour on one server: ARP, gateway ping, local routing, TTL, isolation, named drops."""
from scapy.layers.inet import ICMP, IP, TCP
from scapy.layers.l2 import ARP, Ether

from core_helpers import (
    VM1,
    VM1_MAC,
    VM2,
    VM2_MAC,
    VM3,
    VM3_MAC,
    Pair,
    icmp_frame,
    punted,
    server,
    tcp_frame,
    udp_frame,
)
from vrouter.core.actions import Drop, ToTunnel
from vrouter.core.codec import ethernet, ipv4, mpls, outer, vxlan
from vrouter.core.codec.ipv4 import ip_to_int
from vrouter.core.codec.l4 import TCP_ACK, TCP_SYN
from vrouter.core.pipeline import Pipeline
from vrouter.core.slowpath import SlowPath

GW = "192.168.1.1"
VR_MAC = "00:00:5e:00:01:00"


def settle(pipe, slow, actions, now=0.0):
    """The actions, then what the punts they queued bring once decided (like the shell)."""
    out = list(actions)
    for request in pipe.take_punts(now):
        out += settle(pipe, slow, pipe.install(slow.decide(request, now), now), now)
    return out


def one_server(**kw):
    cfg = server("srv1", **kw)
    return Pipeline(cfg), SlowPath(cfg)


def arp_request(target, sender=VM1, mac=VM1_MAC):
    return bytes(Ether(src=mac, dst="ff:ff:ff:ff:ff:ff") / ARP(op=1, hwsrc=mac, psrc=sender, pdst=target))


def test_arp_for_gateway_and_remote_vm_is_answered_with_the_vrouter_mac():
    pipe, _ = one_server()
    for target in (GW, VM2, VM3):
        (reply,) = pipe.from_vif("tr-red1", arp_request(target), 0.0)
        s = Ether(reply.frame)
        assert reply.vif == "tr-red1" and s[ARP].op == 2
        assert (s[ARP].hwsrc, s[ARP].psrc, s[ARP].pdst, s.dst) == (VR_MAC, target, VM1, VM1_MAC)


def test_arp_without_route_or_for_itself_is_not_answered():
    pipe, _ = one_server()
    assert pipe.from_vif("tr-red1", arp_request("192.168.1.99"), 0.0) == [Drop("no_route")]
    assert pipe.from_vif("tr-red1", arp_request(VM1), 0.0) == [Drop("arp_ignored")]


def test_gateway_answers_ping():
    pipe, _ = one_server()
    (reply,) = pipe.from_vif("tr-red1", icmp_frame(VM1, GW, ident=77, seq=3, payload=b"hello"), 0.0)
    s = Ether(reply.frame)
    assert (s.dst, s[IP].src, s[IP].dst, s[ICMP].type, s[ICMP].id, s[ICMP].seq) == (VM1_MAC, GW, VM1, 0, 77, 3)
    assert bytes(s[ICMP].payload) == b"hello"
    check = IP(bytes(s[IP]))
    del check.chksum, check[ICMP].chksum
    rebuilt = IP(bytes(check))
    assert (rebuilt.chksum, rebuilt[ICMP].chksum) == (s[IP].chksum, s[ICMP].chksum)
    assert pipe.from_vif("tr-red1", udp_frame(VM1, GW, 5000, 53), 0.0) == [Drop("receive_unsupported")]


def test_local_vm_to_vm_routing_decrements_ttl_and_keeps_checksums_valid():
    pipe, slow = one_server()
    out = settle(pipe, slow, pipe.from_vif("tr-red1", tcp_frame(VM1, VM3, 1000, 2000, TCP_SYN, ttl=9), 0.0))
    (a,) = out
    s = Ether(a.frame)
    assert a.vif == "tr-red3" and (s.dst, s.src) == (VM3_MAC, VR_MAC) and s[IP].ttl == 8
    assert ipv4.checksum(bytes(s[IP])[:20]) == 0
    fresh = IP(bytes(s[IP]))
    del fresh[TCP].chksum
    assert IP(bytes(fresh))[TCP].chksum == s[TCP].chksum
    # The reply is a hit on the proactive reverse entry, again with a valid checksum after the rewrite.
    (back,) = pipe.from_vif("tr-red3", tcp_frame(VM3, VM1, 2000, 1000, TCP_SYN | TCP_ACK, src_mac=VM3_MAC, ttl=200),
                            0.0)
    assert back.vif == "tr-red1" and IP(back.frame[14:]).ttl == 199 and ipv4.checksum(back.frame[14:34]) == 0
    assert pipe.stats()["punts"] == 1


def test_incremental_checksum_is_right_for_every_ttl_and_header():
    pipe, slow = one_server()
    settle(pipe, slow, pipe.from_vif("tr-red1", udp_frame(VM1, VM3, 1, 2), 0.0))
    for ttl in range(2, 256):
        for ident_payload in (b"a", b"\xff" * 7):
            (a,) = pipe.from_vif("tr-red1", udp_frame(VM1, VM3, 1, 2, ttl=ttl, payload=ident_payload), 0.0)
            assert ipv4.checksum(a.frame[14:34]) == 0 and a.frame[14 + 8] == ttl - 1


def test_ttl_expired_is_dropped_and_counted():
    pipe, slow = one_server()
    assert settle(pipe, slow, pipe.from_vif("tr-red1", tcp_frame(VM1, VM3, 1, 2, TCP_SYN, ttl=1), 0.0)) == \
        [Drop("ttl_expired")]
    assert pipe.drop_stats()["ttl_expired"] == 1


def test_tunnel_payload_for_each_encapsulation():
    for encap in ("mplsoudp", "mplsogre", "vxlan"):
        pipe, slow = one_server(encap=encap)
        (a,) = settle(pipe, slow, pipe.from_vif("tr-red1", tcp_frame(VM1, VM2, 1, 2, TCP_SYN), 0.0))
        assert isinstance(a, ToTunnel) and (a.peer, a.encap) == ("10.0.2.1", encap)
        assert 49152 <= a.sport <= 65535
        if encap == "mplsoudp":
            stack, off = mpls.parse_stack(a.payload)
        elif encap == "mplsogre":
            assert a.payload[:4] == b"\x00\x00\x88\x47"
            stack, off = mpls.parse_stack(a.payload, 4)
        else:
            assert vxlan.parse(a.payload) == 100
            assert ethernet.parse(a.payload, 8).src == bytes.fromhex("00005e000100")
            stack, off = [mpls.LabelEntry(100, 0, True, 64)], 22
        assert stack[0].label == 100
        inner = IP(a.payload[off:])
        assert (inner.src, inner.dst, inner.ttl) == (VM1, VM2, 63)


def test_entropy_port_is_cached_per_flow_and_varies_across_flows():
    pipe, slow = one_server()
    ports = set()
    for sport in range(1000, 1040):
        (a,) = settle(pipe, slow, pipe.from_vif("tr-red1", udp_frame(VM1, VM2, sport, 53), 0.0))
        (b,) = pipe.from_vif("tr-red1", udp_frame(VM1, VM2, sport, 53, payload=b"again"), 0.0)
        assert a.sport == b.sport
        ports.add(a.sport)
    assert len(ports) > 30


def test_overlapping_addresses_in_two_networks_never_cross():
    p = Pair()
    red = p.send("srv1", "tr-red1", tcp_frame(VM1, VM2, 40000, 80, TCP_SYN))
    blue = p.send("srv1", "tr-blue1", tcp_frame(VM1, VM2, 40000, 80, TCP_SYN, src_mac="02:00:00:00:02:0b"))
    assert [a.vif for a in red] == ["tr-red2"] and [a.vif for a in blue] == ["tr-blue2"]
    # Same 5-tuple twice on each server: two entries per direction, one per routing instance.
    assert sorted({f["vrf"] for f in p.pipe["srv1"].flows()}) == [100, 200]
    assert len(p.pipe["srv1"].flows()) == 4 and len(p.pipe["srv2"].flows()) == 4
    # A blue VM cannot reach red's VM3 (blue has no such route) even though red can.
    assert p.send("srv1", "tr-blue1", udp_frame(VM1, VM3, 1, 2, src_mac="02:00:00:00:02:0b")) == [Drop("no_route")]
    assert [a.vif for a in p.send("srv1", "tr-red1", udp_frame(VM1, VM3, 1, 2))] == ["tr-red3"]
    # Replies come back into their own network only.
    r = p.send("srv2", "tr-blue2", tcp_frame(VM2, VM1, 80, 40000, TCP_SYN | TCP_ACK, src_mac="02:00:00:00:02:0c"))
    assert [a.vif for a in r] == ["tr-blue1"]


def test_fabric_side_drops_have_reasons():
    pipe, _ = one_server()
    inner = tcp_frame(VM2, VM1, 80, 1, TCP_ACK)[14:]
    assert pipe.from_fabric("10.9.9.9", "mplsoudp", mpls.build_stack([100]) + inner, 0.0) == [Drop("invalid_source")]
    assert pipe.from_fabric("10.0.2.1", "mplsoudp", mpls.build_stack([555]) + inner, 0.0) == [Drop("unknown_label")]
    assert pipe.from_fabric("10.0.2.1", "vxlan", vxlan.build(7) + b"\0" * 12 + b"\x08\x00" + inner, 0.0) == \
        [Drop("unknown_label")]
    assert pipe.from_fabric("10.0.2.1", "mplsoudp", mpls.build_stack([100]) + inner[:15], 0.0) == [Drop("malformed")]
    assert pipe.from_fabric("10.0.2.1", "ipip", inner, 0.0) == [Drop("unknown_encap")]
    nowhere = tcp_frame(VM2, "192.168.1.77", 80, 1, TCP_ACK)[14:]
    out = pipe.from_fabric("10.0.2.1", "mplsoudp", mpls.build_stack([100]) + nowhere, 0.0)
    assert out == [] and pipe.punts_waiting() == 1
    assert settle(pipe, SlowPath(server("srv1")), out) == [Drop("no_route")]
    stats = pipe.drop_stats()
    assert (stats["invalid_source"], stats["unknown_label"], stats["malformed"], stats["no_route"]) == (1, 2, 1, 1)


def test_vif_side_drops_have_reasons():
    pipe, _ = one_server()
    frame = tcp_frame(VM1, VM2, 1, 2, TCP_SYN)
    assert pipe.from_vif("tap-unknown", frame, 0.0) == [Drop("invalid_vif")]
    assert pipe.from_vif("tr-red1", tcp_frame("192.168.1.50", VM2, 1, 2, TCP_SYN), 0.0) == [Drop("spoofed_source")]
    assert pipe.from_vif("tr-red1", bytes(Ether(type=0x86DD)) + b"\0" * 40, 0.0) == [Drop("not_ip")]
    assert pipe.from_vif("tr-red1", frame[:30], 0.0) == [Drop("malformed")]
    bad = bytearray(frame)
    bad[24] ^= 0x55                                   # IPv4 header checksum
    assert pipe.from_vif("tr-red1", bytes(bad), 0.0) == [Drop("malformed")]
    assert sum(pipe.drop_stats().values()) == 5


def test_ip_options_take_the_slow_parser_but_still_hit_the_flow():
    pipe, slow = one_server()
    opts = b"\x94\x04\x00\x00"                        # router alert
    (a,) = settle(pipe, slow, pipe.from_vif("tr-red1", tcp_frame(VM1, VM3, 5, 6, TCP_SYN, options=opts), 0.0))
    assert a.vif == "tr-red3" and IP(a.frame[14:]).options[0].option == 20
    (b,) = pipe.from_vif("tr-red1", tcp_frame(VM1, VM3, 5, 6, TCP_ACK, options=opts), 0.0)
    assert b.vif == "tr-red3" and pipe.stats()["punts"] == 1 and ipv4.checksum(b.frame[14:38]) == 0


def test_from_fabric_frame_decides_side_by_outer_header():
    p = Pair()
    request = punted(p.pipe["srv2"], p.pipe["srv2"].from_vif(
        "tr-red2", tcp_frame(VM2, VM1, 80, 1, TCP_SYN, src_mac="02:00:00:00:01:0c"), 0.0))
    (tun,) = p.pipe["srv2"].install(p.slow["srv2"].decide(request), 0.0)
    frame = outer.build_fabric_frame(b"\x02" * 6, b"\x04" * 6, ip_to_int("10.0.2.1"), ip_to_int("10.0.1.1"),
                                     tun.encap, tun.sport, tun.payload)
    request = punted(p.pipe["srv1"], p.pipe["srv1"].from_fabric_frame(frame, 0.0))
    assert request["ingress"] == "fabric" and request["owner"] == "tr-red1"
    other = outer.build_fabric_frame(b"\x02" * 6, b"\x04" * 6, ip_to_int("10.0.2.1"), ip_to_int("10.0.3.1"),
                                     tun.encap, tun.sport, tun.payload)
    assert p.pipe["srv1"].from_fabric_frame(other, 0.0) == [Drop("wrong_destination")]


def test_ping_of_an_established_flow_takes_the_hit_path_both_ways_with_the_slow_paths_result():
    """ICMP echoes are keyed by their id (flowkey.extract); once the pair exists they are hits like
    TCP and UDP (issue 13: a ping's pipeline leg), with exactly what the slow parser would return."""
    pair = Pair()
    first = icmp_frame(VM1, VM2, ident=41, seq=1)
    (delivered,) = pair.send("srv1", "tr-red1", first)
    assert Ether(delivered.frame)[ICMP].id == 41
    src, dst = pair.pipe["srv1"], pair.pipe["srv2"]
    request = icmp_frame(VM1, VM2, ident=41, seq=2)
    slow_out = src._vif_slow(src._vifs["tr-red1"], request, 0.0)     # the reference: the slow parser
    hits = src.hits
    src._vif_slow = dst._fabric_slow = None                           # any slow parse now fails loudly
    (tunnel,) = src.from_vif("tr-red1", request, 0.0)
    assert src.hits == hits + 1 and [tunnel] == slow_out
    (to_vm,) = dst.from_fabric(pair.address["srv1"], tunnel.encap, tunnel.payload, 0.0)
    s = Ether(to_vm.frame)
    assert (s[IP].src, s[IP].dst, s[ICMP].type, s[ICMP].id, s[ICMP].seq, s[IP].ttl) == (VM1, VM2, 8, 41, 2, 63)
    reply = icmp_frame(VM2, VM1, ident=41, seq=2, type_=0, src_mac=VM2_MAC)
    (back,) = dst.from_vif(to_vm.vif, reply, 0.0)
    (home,) = src.from_fabric(pair.address["srv2"], back.encap, back.payload, 0.0)
    assert home.vif == "tr-red1" and Ether(home.frame)[ICMP].type == 0


def test_other_icmp_is_not_taken_for_an_echo_on_the_hit_path():
    pair = Pair()
    pair.send("srv1", "tr-red1", icmp_frame(VM1, VM2, ident=41, seq=1))
    src = pair.pipe["srv1"]
    hits = src.hits
    # Type 3 (unreachable) with an id field that happens to equal the echo's: never the echo's entry.
    src.from_vif("tr-red1", icmp_frame(VM1, VM2, ident=41, seq=1, type_=3), 0.0)
    assert src.hits == hits
