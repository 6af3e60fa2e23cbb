"""testbed/cmd_trace.py without a testbed: the packet `--pcap FILE --index N` takes (scapy writes the
file), its one-line errors, and the text of the steps for routing between networks, services and NAT
(rendered from real explanations of core pipelines)."""
import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, Ether
from scapy.utils import wrpcap

from core_helpers import VM1, VM3
from test_core_ecmp import SVC, service_pair
from test_core_intervn import GREEN1, RED1, TAP, fabric
from test_core_nat import INET, SNAT, Vrouter, nat_config
from testbed.cmd_trace import format_trace, packet_from_pcap
from testbed.commands import CommandError
from testbed.trace import trace
from vrouter.core import explain
from vrouter.core.codec.ipv4 import ip_to_int


@pytest.fixture
def pcap(tmp_path):
    path = tmp_path / "c.pcap"
    wrpcap(str(path), [Ether() / IP(src="192.168.1.11", dst="192.168.1.13") / TCP(sport=40001, dport=80),
                       Ether() / IP(src="192.168.1.11", dst="10.1.1.1") / UDP(sport=5353, dport=53),
                       Ether() / IP(src="192.168.1.11", dst="192.168.1.1") / ICMP(type=8, id=77),
                       Ether() / IPv6(src="fe80::1", dst="fe80::2") / UDP(sport=1, dport=2),
                       Ether() / ARP(pdst="192.168.1.1"),
                       Ether() / IP(src="192.168.1.11", dst="192.168.1.1") / ICMP(type=3, code=1)])
    return str(path)


def test_the_packet_of_each_index(pcap):
    assert packet_from_pcap(pcap, 0) == {"proto": 6, "src": "192.168.1.11", "dst": "192.168.1.13",
                                         "sport": 40001, "dport": 80}
    assert packet_from_pcap(pcap, 1) == {"proto": 17, "src": "192.168.1.11", "dst": "10.1.1.1",
                                         "sport": 5353, "dport": 53}
    assert packet_from_pcap(pcap, 2) == {"proto": 1, "src": "192.168.1.11", "dst": "192.168.1.1",
                                         "sport": 77, "dport": 77}      # an echo: its id both ways


@pytest.mark.parametrize("index,words", [(3, "packet 3 of .* is not IPv4"), (4, "packet 4 of .* is not IPv4"),
                                         (5, "is not TCP, UDP or an ICMP echo"), (6, "has 6 packets: no --index 6"),
                                         (-1, "has 6 packets: no --index -1")])
def test_bad_packets_and_indexes_are_one_line_errors(pcap, index, words):
    with pytest.raises(CommandError, match=words) as e:
        packet_from_pcap(pcap, index)
    assert "\n" not in str(e.value) and e.value.code == 2


def test_a_missing_or_foreign_file_is_a_one_line_error(tmp_path):
    with pytest.raises(CommandError, match="cannot read .*nope.pcap") as e:
        packet_from_pcap(str(tmp_path / "nope.pcap"), 0)
    assert "\n" not in str(e.value)
    junk = tmp_path / "junk.pcap"
    junk.write_text("not a capture\n")
    with pytest.raises(CommandError, match="cannot read .*junk.pcap") as e:
        packet_from_pcap(str(junk), 0)
    assert "\n" not in str(e.value)


def _local(pipes, vms):
    """trace()'s ask and map over core pipelines (flows here stay within one vrouter: no fabric)."""
    def ask(server, op, **kw):
        assert op == "explain" and kw.pop("at") == "vif"
        vif = kw.pop("vif")
        return explain.from_vif(pipes[server], vif, kw["proto"], ip_to_int(kw["src"]), ip_to_int(kw["dst"]),
                                kw["sport"], kw["dport"])
    return ask


def _text(pipes, vms, vm, pkt):
    return format_trace(trace({"servers": [], "switches": []}, vms, _local(pipes, vms), None, vm, pkt))


def test_the_text_says_the_leak_the_rules_and_the_reverse_instance():
    p = fabric()
    vms = {"green1": {"server": "srv1", "vif": TAP["green1"]}, "red1": {"server": "srv1", "vif": TAP["red1"]}}
    text = _text(p.pipe, vms, "green1", {"proto": 6, "src": GREEN1, "dst": RED1, "sport": 40000, "dport": 80})
    assert "leaked from network red by policy" in text
    assert "policy of green: allow by rule 0 (allow tcp with network red dst_port 80)" in text
    assert "(vrf 100) forward by red's rule 0 (allow tcp with network green src_port 80)" in text
    assert "delivered to VM red1" in text


def test_the_text_names_the_member_its_weights_and_the_pin():
    p = service_pair()
    vms = {"red1": {"server": "srv1", "vif": "tr-red1"}}
    text = _text(p.pipe, vms, "red1", {"proto": 6, "src": VM1, "dst": SVC, "sport": 40000, "dport": 80})
    assert "service web (composite of red3, red2)" in text
    assert "service web: member red3 (highest rendezvous (HRW) weight of the 5-tuple over red3 0x" in text
    assert "member red3, pinned to tr-red3" in text


def test_the_text_gives_both_translations_and_the_external_port():
    v = Vrouter(nat_config())
    vms = {"red3": {"server": "srv1", "vif": "tr-red3"}}
    text = _text({"srv1": v.pipe}, vms, "red3", {"proto": 6, "src": VM3, "dst": INET, "sport": 40000, "dport": 80})
    assert "route: 0.0.0.0/0 -> external (the gateway, no tunnel)" in text
    assert (f"NAT snat {SNAT} (of red), the port allocated at install: leaves as {SNAT}:allocated at install -> "
            f"{INET}:80, the reply enters as {INET}:80 -> {VM3}:40000") in text
    assert f"{INET}:80 -> {SNAT}:? (vrf 0)" in text
    assert "without a tunnel" in text.splitlines()[-1]
