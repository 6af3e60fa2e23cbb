"""testbed/trace.py's fabric side: ofproto/trace output as OVS 3.1 prints it (fixtures captured from a
running testbed), the dp_hash the userspace datapath computes, and the switch-by-switch walk."""
import json
import pathlib

import pytest

from testbed import ovs_hash, trace

FIX = pathlib.Path(__file__).parent / "fixtures" / "ofproto_trace"
FABRIC = json.loads((FIX / "fabric.json").read_text())


def _fixture(name):
    return (FIX / f"{name}.txt").read_text()


def test_parse_a_select_group_that_recirculates_and_its_resumed_bucket():
    first = trace.parse_ofproto_trace(_fixture("leaf_group"))
    assert first["recirc"] == "0x275" and first["outputs"] == []
    assert first["rules"] == [{"table": 0, "match": "ip,nw_dst=10.0.2.1", "priority": 100}]
    second = trace.parse_ofproto_trace(_fixture("leaf_bucket"))
    assert second["bucket"] == 1 and second["outputs"] == [2] and second["recirc"] is None
    assert trace.parse_ofproto_trace(_fixture("leaf_no_context"))["no_context"] is True


def test_parse_plain_forwarding_and_a_drop():
    assert trace.parse_ofproto_trace(_fixture("spine"))["outputs"] == [2]
    d = trace.parse_ofproto_trace(_fixture("leaf_drop"))
    assert d["outputs"] == [] and d["datapath_actions"] == "drop" and d["rules"][0]["priority"] == 0


# (outer source, destination, UDP source port) -> dp_hash that OVS 3.1's datapath showed in
# `ovs-appctl dpctl/dump-flows` for the MPLSoUDP (port 6635) packets of these path slots.
SEEN = [("10.0.1.1", "10.0.2.1", 60500, 0x175D9D37), ("10.0.1.1", "10.0.2.1", 57132, 0x97F5783D),
        ("10.0.1.1", "10.0.2.1", 61753, 0xFF326462), ("10.0.1.1", "10.0.2.1", 63400, 0x7FD09DB3),
        ("10.0.1.1", "10.0.2.1", 61822, 0xDF4DFB76)]


@pytest.mark.parametrize("src,dst,sport,want", SEEN)
def test_dp_hash_is_the_datapaths(src, dst, sport, want):
    assert ovs_hash.dp_hash(src, dst, 17, sport, 6635) == want


class FakeOvs:
    """ofproto/trace answers from the fixtures: leaf1's group (then its bucket), spine2, leaf2."""

    def __init__(self, context=True):
        self.calls, self.context = [], context

    def __call__(self, bridge, flow):
        self.calls.append((bridge, flow))
        if bridge == "tr-l1":
            if flow.startswith("recirc_id="):
                return _fixture("leaf_bucket" if self.context else "leaf_no_context")
            return _fixture("leaf_group")
        return _fixture({"tr-s2": "spine", "tr-l2": "leaf_server"}[bridge])


OUT = {"peer": "10.0.2.1", "encap": "mplsoudp", "outer_sport": 52560, "label": 100}


def test_the_walk_follows_the_ports_through_the_link_table_and_resumes_with_the_hash():
    pkt = trace.outer_packet(FABRIC, "srv1", OUT)
    assert pkt["proto"] == 17 and pkt["dport"] == 6635 and pkt["src"] == "10.0.1.1"
    ovs = FakeOvs()
    steps, reached, why = trace.follow_fabric(FABRIC, "srv1", pkt, ovs)
    assert reached == "srv3" and why == ""
    assert [s["place"] for s in steps] == ["leaf1", "spine2", "leaf2"]
    assert steps[0]["fields"]["ecmp"]["bucket"] == 1 and steps[0]["fields"]["to"] == "spine2"
    # The resumed trace carries the recirculation id and the dp_hash of this exact outer 5-tuple.
    resumed = ovs.calls[1][1]
    want = ovs_hash.dp_hash("10.0.1.1", "10.0.2.1", 17, 52560, 6635)
    assert resumed.startswith(f"recirc_id=0x275,dp_hash={want:#x},")
    assert "udp_src=52560,udp_dst=6635" in resumed and ovs.calls[2][1].startswith("in_port=1,")   # spine2's port 1


def test_without_a_recirculation_context_the_spine_is_unknown():
    steps, reached, why = trace.follow_fabric(FABRIC, "srv1", trace.outer_packet(FABRIC, "srv1", OUT),
                                              FakeOvs(context=False))
    assert reached is None and "recirculation context" in why and steps[0]["fields"]["ecmp"]["bucket"] is None
