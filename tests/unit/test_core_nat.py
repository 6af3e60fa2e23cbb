"""NAT on the flow table (vrouter/core/nat.py): floating IPs and source NAT, both translations in one
pair of entries, checked against scapy (addresses, ports, every checksum)."""
import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP

from tests.unit.core_helpers import VM1, VM3, VM3_MAC, icmp_frame, server_dict, tcp_frame, udp_frame
from vrouter.core.actions import Drop, ToExternal, ToVif
from vrouter.core.codec import ipv4, l4
from vrouter.core.codec.ipv4 import ip_to_int
from vrouter.core.codec.l4 import TCP_ACK, TCP_SYN
from vrouter.core.config import ConfigError, VrouterConfig
from vrouter.core.gso import pseudo_sum
from vrouter.core.nat import PortAllocator, adjust
from vrouter.core.pipeline import Pipeline
from vrouter.core.slowpath import SlowPath
from vrouter.tools import tables

INET = "203.0.113.10"
FIP = "198.51.100.11"
SNAT = "198.51.100.254"


def nat_config(mode="proactive", fips=((("tr-red1"), FIP),), snat=("red",), ports=None, flow=None):
    d = server_dict("srv1", mode=mode, flow=flow)
    d["nat"] = {"floating": "198.51.100.0/24", "snat_address": SNAT, "snat_networks": list(snat),
                "floating_ips": [{"vif": v, "address": a} for v, a in fips]}
    if ports:
        d["nat"]["snat_ports"] = list(ports)
    return d


class Vrouter:
    """One vrouter and its agent, wired like the shells: punts are decided and installed at once."""

    def __init__(self, d):
        self.cfg = VrouterConfig.from_dict(d)
        self.pipe, self.slow = Pipeline(self.cfg), SlowPath(self.cfg)
        self.punts = 0

    def settle(self, actions, now):
        out = list(actions)
        for request in self.pipe.take_punts(now):
            self.punts += 1
            out += self.pipe.install(self.slow.decide(request, now), now)
        return out

    def vm(self, vif, frame, now=0.0):
        return self.settle(self.pipe.from_vif(vif, frame, now), now)

    def outside(self, packet, now=0.0):
        return self.settle(self.pipe.nat.from_external(packet, now), now)


def checked(packet):
    """The scapy view of an IPv4 packet whose every checksum scapy computes the same."""
    p = IP(packet)
    again = IP(bytes(p.__class__(bytes(p))))
    for layer in (IP, TCP, UDP, ICMP):
        if layer in p:
            fresh = p.copy()
            del fresh[layer].chksum
            assert IP(bytes(fresh))[layer].chksum == p[layer].chksum, f"{layer.__name__} checksum"
    return again


def tcp_packet(src, dst, sport, dport, flags, payload=b""):
    seg = l4.build_tcp(ip_to_int(src), ip_to_int(dst), sport, dport, payload, flags=flags)
    return ipv4.build(ip_to_int(src), ip_to_int(dst), ipv4.IPPROTO_TCP, seg)


def test_floating_ip_outbound_translates_source_and_the_reply_hits_without_a_punt():
    v = Vrouter(nat_config())
    (out,) = v.vm("tr-red1", tcp_frame(VM1, INET, 40000, 80, TCP_SYN, payload=b"hello"))
    assert isinstance(out, ToExternal)
    p = checked(out.packet)
    assert (p.src, p.dst, p[TCP].sport, p[TCP].dport, p.ttl) == (FIP, INET, 40000, 80, 63)
    assert bytes(p[TCP].payload) == b"hello" and v.punts == 1
    (back,) = v.outside(tcp_packet(INET, FIP, 80, 40000, TCP_SYN | TCP_ACK))
    assert isinstance(back, ToVif) and back.vif == "tr-red1"
    q = checked(back.frame[14:])
    assert (q.src, q.dst, q[TCP].sport, q[TCP].dport) == (INET, VM1, 80, 40000)
    assert v.punts == 1                                     # the reply hit the reverse entry


def test_floating_ip_is_reachable_from_outside_and_the_vm_reply_hits():
    v = Vrouter(nat_config())
    (a,) = v.outside(tcp_packet(INET, FIP, 5555, 22, TCP_SYN))
    q = checked(a.frame[14:])
    assert a.vif == "tr-red1" and (q.src, q.dst, q[TCP].dport) == (INET, VM1, 22)
    (b,) = v.vm("tr-red1", tcp_frame(VM1, INET, 22, 5555, TCP_SYN | TCP_ACK))
    p = checked(b.packet)
    assert (p.src, p.dst, p[TCP].sport, p[TCP].dport) == (FIP, INET, 22, 5555)
    assert v.punts == 1


def test_flow_list_shows_both_translations_and_the_vm_owns_both_entries():
    v = Vrouter(nat_config())
    v.outside(tcp_packet(INET, FIP, 5555, 22, TCP_SYN))
    flows = v.pipe.flows(0.0)
    assert len(flows) == 2
    fwd = next(f for f in flows if f["role"] == "forward")
    rev = next(f for f in flows if f["role"] == "reverse")
    assert (fwd["vrf"], fwd["dst"], fwd["nat"]["dst"], fwd["nat"]["out"]) == (0, FIP, VM1, "tr-red1")
    assert (rev["vrf"], rev["src"], rev["nat"]["src"], rev["nat"]["out"]) == (100, VM1, FIP, "external")
    assert fwd["owner"] == rev["owner"] == "tr-red1"
    assert fwd["reverse_index"] == flows.index(rev)


def test_snat_takes_a_port_the_reply_comes_back_and_the_port_returns_at_flow_end():
    v = Vrouter(nat_config(fips=()))
    (out,) = v.vm("tr-red1", udp_frame(VM1, INET, 33333, 53, payload=b"q"))
    p = checked(out.packet)
    assert p.src == SNAT and p[UDP].dport == 53
    port = p[UDP].sport
    assert v.pipe.nat.state()["ports_in_use"]["udp"] == 1
    reply = ipv4.build(ip_to_int(INET), ip_to_int(SNAT), ipv4.IPPROTO_UDP,
                       l4.build_udp(ip_to_int(INET), ip_to_int(SNAT), 53, port, b"a"))
    (back,) = v.outside(reply)
    q = checked(back.frame[14:])
    assert (back.vif, q.dst, q[UDP].dport, bytes(q[UDP].payload)) == ("tr-red1", VM1, 33333, b"a")
    assert v.punts == 1
    assert v.pipe.expire(1000.0) == 2
    assert v.pipe.nat.state()["ports_in_use"]["udp"] == 0


def test_nat_state_and_its_table_show_the_floating_ips_and_a_snat_port_taken_then_freed():
    v = Vrouter(nat_config(ports=(2000, 2009)))
    v.vm("tr-red3", udp_frame(VM3, INET, 33333, 53, payload=b"q"))        # source NAT: tr-red1 has a floating IP
    state = v.pipe.nat.state()
    assert state["floating_ips"] == [{"vif": "tr-red1", "address": FIP}]
    assert (state["snat_address"], state["snat_networks"], state["snat_ports"]) == (SNAT, ["red"], [2000, 2009])
    assert state["ports_in_use"] == {"tcp": 0, "udp": 1, "icmp": 0}
    assert state["ports_free"] == {"tcp": 10, "udp": 9, "icmp": 10} and state["nat_flows"] == 2
    text = tables.format_nat(state)
    assert f"Floating IPs: {FIP} (vif tr-red1)" in text
    assert f"Source NAT: networks red -> {SNAT}, ports 2000-2009" in text
    assert "  udp          1       9" in text
    v.pipe.expire(1000.0)
    assert "  udp          0      10" in tables.format_nat(v.pipe.nat.state())
    assert tables.format_nat(Vrouter(server_dict("srv1")).pipe.nat.state()) == \
        "NAT off: no NAT in this server's configuration\n"


def test_snat_of_two_vms_gets_two_ports_and_each_reply_finds_its_vm():
    v = Vrouter(nat_config(fips=()))
    (a,) = v.vm("tr-red1", udp_frame(VM1, INET, 1000, 53))
    (b,) = v.vm("tr-red3", udp_frame(VM3, INET, 1000, 53, src_mac=VM3_MAC))
    pa, pb = IP(a.packet)[UDP].sport, IP(b.packet)[UDP].sport
    assert pa != pb
    for port, vif in ((pb, "tr-red3"), (pa, "tr-red1")):
        udp = l4.build_udp(ip_to_int(INET), ip_to_int(SNAT), 53, port)
        reply = ipv4.build(ip_to_int(INET), ip_to_int(SNAT), 17, udp)
        (back,) = v.outside(reply)
        assert back.vif == vif


def test_snat_ping_translates_the_echo_identifier():
    v = Vrouter(nat_config(fips=()))
    (out,) = v.vm("tr-red1", icmp_frame(VM1, INET, ident=77))
    p = checked(out.packet)
    assert p.src == SNAT and p[ICMP].id != 77
    reply = ipv4.build(ip_to_int(INET), ip_to_int(SNAT), 1, l4.build_icmp(0, 0, p[ICMP].id, 1, b"ping"))
    (back,) = v.outside(reply)
    q = checked(back.frame[14:])
    assert (q.dst, q[ICMP].id, q[ICMP].type) == (VM1, 77, 0) and v.punts == 1


def test_nat_reply_is_not_punted_even_in_reactive_mode():
    v = Vrouter(nat_config(mode="reactive"))
    v.vm("tr-red1", icmp_frame(VM1, INET))
    v.outside(ipv4.build(ip_to_int(INET), ip_to_int(FIP), 1, l4.build_icmp(0, 0, 7, 1, b"ping")))
    assert v.punts == 1


def test_snat_ports_exhausted_is_a_named_drop_and_a_freed_port_is_taken_again():
    v = Vrouter(nat_config(fips=(), ports=(30000, 30000)))
    (a,) = v.vm("tr-red1", udp_frame(VM1, INET, 1, 53))
    assert IP(a.packet)[UDP].sport == 30000
    assert v.vm("tr-red1", udp_frame(VM1, INET, 2, 53)) == [Drop("nat_ports_exhausted")]
    v.pipe.expire(1000.0)
    (b,) = v.vm("tr-red1", udp_frame(VM1, INET, 3, 53))
    assert IP(b.packet)[UDP].sport == 30000


def test_a_nat_flow_is_refused_at_the_vms_flow_limit():
    d = nat_config(fips=())
    d["vifs"][0]["flow_limit"] = 2
    v = Vrouter(d)
    assert isinstance(v.vm("tr-red1", udp_frame(VM1, INET, 1, 53))[0], ToExternal)
    assert v.vm("tr-red1", udp_frame(VM1, INET, 2, 53)) == [Drop("vm_flow_limit")]
    assert v.pipe.nat.state()["ports_in_use"]["udp"] == 1


def test_inbound_floating_flows_count_against_the_vm():
    d = nat_config()
    d["vifs"][0]["flow_limit"] = 2
    v = Vrouter(d)
    v.outside(tcp_packet(INET, FIP, 1, 22, TCP_SYN))
    assert v.outside(tcp_packet(INET, FIP, 2, 22, TCP_SYN)) == [Drop("vm_flow_limit")]
    assert v.pipe.pressure(0.0)["vms"]["tr-red1"]["entries"] == 2


def test_without_nat_the_vm_has_no_way_out_and_unsolicited_snat_traffic_is_dropped():
    v = Vrouter(nat_config(snat=()))           # red has a way out (red1's floating IP), red3 has none
    assert v.vm("tr-red3", udp_frame(VM3, INET, 1, 53, src_mac=VM3_MAC)) == [Drop("no_nat")]
    assert v.vm("tr-blue1", udp_frame(VM1, INET, 1, 53, src_mac="02:00:00:00:02:0b")) == [Drop("no_route")]
    assert v.outside(tcp_packet(INET, SNAT, 1, 22, TCP_SYN)) == [Drop("nat_no_flow")]
    plain = Vrouter(server_dict("srv1"))
    assert plain.vm("tr-red1", udp_frame(VM1, INET, 1, 53)) == [Drop("no_route")]
    assert plain.pipe.nat.from_external(tcp_packet(INET, FIP, 1, 22, TCP_SYN), 0.0) == [Drop("no_route")]


def test_removing_the_floating_ip_removes_its_flows():
    v = Vrouter(nat_config())
    v.vm("tr-red1", icmp_frame(VM1, INET))
    assert len(v.pipe.flows(0.0)) == 2
    v.pipe.apply_config(VrouterConfig.from_dict(nat_config(fips=(), snat=())))
    assert v.pipe.flows(0.0) == []


def test_a_vms_partial_checksum_stays_partial_for_the_new_addresses():
    v = Vrouter(nat_config())
    frame = bytearray(tcp_frame(VM1, INET, 40000, 80, TCP_SYN, payload=b"x" * 100))
    tlen = len(frame) - 14 - 20
    frame[14 + 20 + 16:14 + 20 + 18] = pseudo_sum(ip_to_int(VM1), ip_to_int(INET), 6, tlen).to_bytes(2, "big")
    (out,) = v.vm("tr-red1", bytes(frame))
    field = int.from_bytes(out.packet[20 + 16:20 + 18], "big")
    assert field == pseudo_sum(ip_to_int(FIP), ip_to_int(INET), 6, tlen)


def test_port_allocator_and_incremental_checksum():
    ports = PortAllocator(10, 12)
    assert [ports.take(6), ports.take(6), ports.take(6), ports.take(6)] == [10, 11, 12, None]
    assert ports.take(17) == 10                     # per protocol
    ports.give(6, 11)
    ports.give(6, 11)                               # twice: once
    assert ports.take(6) == 11 and ports.in_use(6) == 3
    data = bytes(range(40))
    words = [int.from_bytes(data[i:i + 2], "big") for i in range(0, 40, 2)]
    before = ipv4.checksum(data)
    changed = bytes(data[:4]) + b"\x12\x34" + data[6:]
    assert adjust(before, (words[2],), (0x1234,)) == ipv4.checksum(changed)


@pytest.mark.parametrize("nat, message", [
    ({"floating": "198.51.100.0/24", "floating_ips": [{"vif": "tr-red1", "address": "10.9.9.9"}]},
     "nat.floating_ips[0].address: 10.9.9.9 is outside the floating range 198.51.100.0/24"),
    ({"floating": "198.51.100.0/24", "snat_address": SNAT,
      "floating_ips": [{"vif": "tr-red1", "address": SNAT}]},
     "nat.floating_ips[0].address: 198.51.100.254 is the SNAT address of server 'this server'"),
    ({"floating": "198.51.100.0/24", "snat_networks": ["red"]}, "nat.snat_networks: source NAT needs snat_address"),
    ({"floating": "198.51.100.0/24", "snat_networks": ["green"]}, "nat.snat_networks[0]: unknown virtual network"),
    ({"floating": "198.51.100.0/24", "floating_ips": [{"vif": "nope", "address": FIP}]},
     "nat.floating_ips[0].vif: unknown vif"),
])
def test_nat_config_problems_are_one_line(nat, message):
    d = server_dict("srv1")
    d["nat"] = nat
    with pytest.raises(ConfigError) as e:
        VrouterConfig.from_dict(d)
    assert str(e.value).startswith(message)
