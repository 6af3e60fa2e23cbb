"""MPLSoGRE and VXLAN end to end: ping and TCP across servers, and what a fabric capture decodes to.

One testbed per encapsulation (same topology as test_overlay.py; MPLSoUDP is covered there).
"""
import pytest
from scapy.contrib.mpls import MPLS
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import GRE
from scapy.layers.vxlan import VXLAN

from overlay_helpers import bring_up, decode, is_path_message, needs_root, ping, tcp_transfers
from testbed.capture import Capture, fabric_interfaces

pytestmark = [pytest.mark.e2e, needs_root]


@pytest.fixture(scope="module", params=["mplsogre", "vxlan"])
def tb(request, tmp_path_factory):
    bed = bring_up(tmp_path_factory.mktemp(request.param[:4]), request.param)
    bed.encap = request.param
    yield bed
    bed.stop()


def test_ping_tcp_and_capture(tb, tmp_path):
    cap = Capture(fabric_interfaces(tb.desc, link="leaf2-spine1") | fabric_interfaces(tb.desc, server="srv3"),
                  tmp_path)
    try:
        assert ping(tb, "red1", "192.168.1.12") == 3
        assert ping(tb, "blue1", "192.168.1.12") == 3
        assert tcp_transfers(tb, "red1", "red2", "192.168.1.12", 5001, nbytes=200000) == ["200000"]
        assert ping(tb, "red1", "192.168.1.13") == 3   # same server: never on the fabric
    finally:
        files = cap.stop()
    pkts = decode(files["srv3-leaf2"])
    if tb.encap == "vxlan":
        tunnel = [p for p in pkts if p.haslayer(VXLAN) and not is_path_message(p)]
        assert {p[VXLAN].vni for p in tunnel} == {100, 200}
        probes = [p for p in pkts if is_path_message(p)]        # path repair (VNI 0, flags I + O)
        assert probes and {int(p[VXLAN].flags) for p in probes} == {0x09}
        inner_tcp = [p for p in tunnel if p[VXLAN].vni == 100 and p.haslayer(TCP)]
    else:
        tunnel = [p for p in pkts if p.haslayer(GRE)]
        assert not any(is_path_message(p) for p in tunnel), "MPLSoGRE has no source port to probe"
        assert {p[GRE].proto for p in tunnel} == {0x8847}
        assert {p[MPLS].label for p in tunnel} == {100, 200}
        inner_tcp = [p for p in tunnel if p[MPLS].label == 100 and p.haslayer(TCP)]
    assert inner_tcp, "the TCP transfer did not cross srv3's access link encapsulated"
    assert {p[IP].src for p in tunnel} == {"10.0.1.1", "10.0.2.1"}   # outer addresses: the two vrouters
    # p[IP] is the outermost IPv4 header: no overlay address may appear there
    assert not any(p.haslayer(IP) and p[IP].src.startswith("192.168.") for p in pkts)
    decode(files["leaf2-spine1"])  # a spine link capture is a readable pcap too (ECMP may send nothing there)
