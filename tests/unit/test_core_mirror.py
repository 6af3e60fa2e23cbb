"""Mirroring (vrouter/core/mirror.py, mirrorschema.py, controllers/vnc_mirror.py): which entries are
marked at install, the copies a hit makes (the original bytes, the VXLAN wrap), the rate bound, the
schema's errors through the topology and the VNC, the VNC's per-server sessions, the pcap writer."""
import copy
import os

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.layers.vxlan import VXLAN
from scapy.utils import rdpcap

from controllers.vnc_model import VncError, VncModel
from core_helpers import VM1, VM2, VM3, VM3_MAC, Pair, server_dict, tcp_frame, udp_frame
from test_schema import FABRIC, overlay
from testbed import topology
from testbed.topology import TopologyError
from vrouter.core.actions import ToTunnel, ToVif
from vrouter.core.codec.ipv4 import ip_to_int
from vrouter.core.codec.l4 import TCP_ACK, TCP_SYN
from vrouter.core.codec.outer import VXLAN_PORT
from vrouter.core.config import ConfigError, VrouterConfig
from vrouter.core.flowtable import FlowEntry
from vrouter.core.mirror import COPY_OVERHEAD, ClosePcap, ToPcap
from vrouter.io.mirror_pcap import PcapFiles, pcap_path

PCAP = {"pcap": True}


def session(name="m1", source=None, to=None, sid=1, **kw):
    return {"name": name, "id": sid, "source": source or {"vif": "tr-red1"}, "to": to or PCAP, **kw}


def pair(srv1=(), srv2=()):
    cfgs = {}
    for name, sessions in (("srv1", srv1), ("srv2", srv2)):
        d = server_dict(name)
        d["mirrors"] = list(sessions)
        cfgs[name] = VrouterConfig.from_dict(d)
    return Pair(cfgs)


def copies(p, srv):
    return p.pipe[srv].mirror.take()


def test_unconfigured_entries_are_not_marked_and_nothing_is_copied():
    p = pair()
    p.send("srv1", "tr-red1", tcp_frame(VM1, VM2, 1000, 80, TCP_SYN))
    assert all(e.mirror is None for pipe in p.pipe.values() for e in pipe.table.entries.values())
    assert copies(p, "srv1") == [] and copies(p, "srv2") == []


def test_a_vif_session_copies_the_original_frame_and_delivers_it_unchanged():
    frame = tcp_frame(VM1, VM2, 1000, 80, TCP_SYN, payload=b"hello")
    plain = pair().send("srv1", "tr-red1", frame)
    p = pair(srv1=[session()])
    delivered = p.send("srv1", "tr-red1", frame)
    assert delivered == plain                       # the original goes on as without mirroring
    (c,) = copies(p, "srv1")
    assert type(c) is ToPcap and c.session == "m1" and c.frame == frame      # byte for byte, TTL 64
    reply = tcp_frame(VM2, VM1, 80, 1000, TCP_SYN | TCP_ACK, src_mac="02:00:00:00:01:0c")
    (to_red1,) = p.send("srv2", "tr-red2", reply)
    (c,) = copies(p, "srv1")                        # the reply delivered to red1: the frame it gets
    assert c.frame == to_red1.frame
    s = p.pipe["srv1"].mirror.sessions["m1"]
    assert (s.copies, s.bytes, s.drops) == (2, len(frame) + len(to_red1.frame), 0)


@pytest.mark.parametrize("direction, expected", [("ingress", 1), ("egress", 1), ("both", 2)])
def test_direction_selects_what_the_vm_sends_or_receives(direction, expected):
    p = pair(srv1=[session(direction=direction)])
    p.send("srv1", "tr-red1", tcp_frame(VM1, VM2, 1000, 80, TCP_SYN))
    p.send("srv2", "tr-red2", tcp_frame(VM2, VM1, 80, 1000, TCP_SYN | TCP_ACK, src_mac="02:00:00:00:01:0c"))
    got = copies(p, "srv1")
    assert len(got) == expected
    if direction == "ingress":
        assert got[0].frame[26:30] == bytes(map(int, VM1.split(".")))      # red1's source address


def test_a_network_session_copies_local_traffic_once_and_not_other_networks():
    p = pair(srv1=[session(source={"network": "red"})])
    p.send("srv1", "tr-red1", udp_frame(VM1, VM3, 5000, 53))       # red1 -> red3, both on srv1
    assert len(copies(p, "srv1")) == 1                              # one pass through the pipeline, one copy
    p.send("srv1", "tr-blue1", udp_frame(VM1, VM2, 5000, 53, src_mac="02:00:00:00:02:0b"))
    assert copies(p, "srv1") == []


def test_a_rule_session_copies_both_directions_of_matching_flows_only():
    rule = {"network": "red", "protocol": "tcp", "dst_port": 80}
    p = pair(srv1=[session(source={"rule": rule})])
    p.send("srv1", "tr-red1", tcp_frame(VM1, VM2, 1000, 80, TCP_SYN))
    p.send("srv2", "tr-red2", tcp_frame(VM2, VM1, 80, 1000, TCP_SYN | TCP_ACK, src_mac="02:00:00:00:01:0c"))
    assert len(copies(p, "srv1")) == 2
    p.send("srv1", "tr-red1", tcp_frame(VM1, VM2, 1001, 22, TCP_SYN))
    p.send("srv1", "tr-red1", udp_frame(VM1, VM2, 1002, 80))
    assert copies(p, "srv1") == []


def test_sessions_added_or_removed_re_mark_existing_entries():
    p = pair()
    p.send("srv1", "tr-red1", tcp_frame(VM1, VM2, 1000, 80, TCP_SYN))
    pipe = p.pipe["srv1"]
    d = server_dict("srv1")
    d["mirrors"] = [session()]
    pipe.apply_config(VrouterConfig.from_dict(d))
    assert any(e.mirror for e in pipe.table.entries.values())
    pipe.from_vif("tr-red1", tcp_frame(VM1, VM2, 1000, 80, TCP_ACK), 0.5)     # a hit on the old flow
    assert len(copies(p, "srv1")) == 1
    pipe.apply_config(VrouterConfig.from_dict(server_dict("srv1")))
    assert all(e.mirror is None for e in pipe.table.entries.values())
    assert copies(p, "srv1") == [ClosePcap("m1")]
    pipe.from_vif("tr-red1", tcp_frame(VM1, VM2, 1000, 80, TCP_ACK), 0.6)
    assert copies(p, "srv1") == []


def analyzer(local):
    hop = {"type": "vif", "vif": "tr-red3"} if local else \
        {"type": "tunnel", "peer": "10.0.2.1", "label": 100, "encap": "mplsoudp", "mac": VM3_MAC}
    return {"analyzer": {"vm": "red3", "address": VM3, "gateway": "192.168.1.1", "nexthop": hop}}


@pytest.mark.parametrize("local", [True, False])
def test_an_analyzer_gets_vxlan_in_udp_copies_from_the_gateway(local):
    frame = tcp_frame(VM1, VM2, 1000, 80, TCP_SYN, payload=b"data")
    p = pair(srv1=[session(sid=7, to=analyzer(local))])
    p.send("srv1", "tr-red1", frame)
    (c,) = copies(p, "srv1")
    if local:
        assert type(c) is ToVif and c.vif == "tr-red3"
        pkt = Ether(c.frame)[IP]
    else:
        assert type(c) is ToTunnel and c.peer == "10.0.2.1" and c.encap == "mplsoudp"
        assert c.payload[:3] == (100 << 12 | 0x100 | 64).to_bytes(4, "big")[:3]      # red's label
        pkt = IP(c.payload[4:])
    assert (pkt.src, pkt.dst, pkt[UDP].dport) == ("192.168.1.1", VM3, VXLAN_PORT)
    assert pkt[VXLAN].vni == 7 and bytes(pkt[VXLAN].payload) == frame


def test_copies_are_never_mirrored_themselves():
    """The analyzer's own network mirrored: the copies delivered to it are not copied again."""
    p = pair(srv1=[session(source={"network": "red"})])
    mirror = p.pipe["srv1"].mirror
    vrf = 100
    to_red3 = FlowEntry((vrf, 17, ip_to_int("192.168.1.1"), ip_to_int(VM3), 49153, VXLAN_PORT), 0.0)
    to_red3.kind, to_red3.vif = 1, "tr-red3"
    assert mirror.mark(to_red3) is None
    other = FlowEntry((vrf, 17, ip_to_int(VM2), ip_to_int(VM3), 49153, VXLAN_PORT), 0.0)
    other.kind, other.vif = 1, "tr-red3"
    assert mirror.mark(other) is not None       # a VM's own VXLAN traffic is mirrored like any


def test_the_rate_bound_drops_and_counts_the_excess():
    p = pair(srv1=[session(rate=10)])          # burst: max(1, 10 * 0.1) = 1 copy
    frame = tcp_frame(VM1, VM2, 1000, 80, TCP_ACK)
    p.send("srv1", "tr-red1", frame)
    pipe = p.pipe["srv1"]
    for _ in range(4):
        pipe.from_vif("tr-red1", frame, 0.0)
    s = pipe.mirror.sessions["m1"]
    assert (s.copies, s.drops) == (1, 4)
    pipe.from_vif("tr-red1", frame, 0.1)        # 0.1 s at 10/s: one token back
    pipe.from_vif("tr-red1", frame, 0.1)
    assert (s.copies, s.drops) == (2, 5)
    assert len(pipe.mirror.take()) == 2
    assert pipe.stats()["hits"] == 7            # the originals all went on


def test_an_analyzer_copy_too_large_for_one_packet_is_cut_and_counted():
    p = pair(srv1=[session(to=analyzer(True))])
    s = p.pipe["srv1"].mirror.sessions["m1"]
    big = tcp_frame(VM1, VM2, 1000, 80, TCP_SYN, payload=b"x" * 3000)
    p.send("srv1", "tr-red1", big)
    (c,) = copies(p, "srv1")
    assert s.truncated == 1 and len(c.frame) == 14 + COPY_OVERHEAD + s.room
    assert bytes(Ether(c.frame)[VXLAN].payload) == big[:s.room]


# ---- the schema: topology files, the VNC, the vrouter config
def topo(*mirrors):
    return {**copy.deepcopy(FABRIC), **overlay(), "mirrors": list(mirrors)}


def problems(*mirrors):
    try:
        topology.from_dict(topo(*mirrors))
    except TopologyError as exc:
        return exc.problems
    return []


def vnc_problem(*mirrors):
    try:
        VncModel(topo(*mirrors))
    except VncError as exc:
        return str(exc)
    return None


GOOD = {"name": "m1", "source": {"vm": "red1"}, "to": {"analyzer": "red2"}}


@pytest.mark.parametrize("bad, expected", [
    ({**GOOD, "source": {"vm": "red9"}}, "mirrors[0].source.vm: unknown VM 'red9'"),
    ({**GOOD, "to": {"analyzer": "nobody"}}, "mirrors[0].to.analyzer: unknown analyzer VM 'nobody'"),
    ({**GOOD, "to": {"analyzer": "red1"}}, "mirrors[0].to.analyzer: VM 'red1' cannot be the analyzer of its own"),
    ({**GOOD, "to": {"pcap": False}}, "mirrors[0].to.pcap: expected true, got False"),
    ({**GOOD, "to": {}}, "mirrors[0].to: expected exactly one of analyzer, pcap"),
    ({**GOOD, "source": {"vm": "red1", "network": "red"}}, "mirrors[0].source: expected exactly one of"),
    ({**GOOD, "source": {"network": "green"}}, "mirrors[0].source.network: unknown virtual network 'green'"),
    ({**GOOD, "source": {"rule": {"network": "red", "protocol": "tcpx"}}},
     "mirrors[0].source.rule.protocol: 'tcpx' is not a protocol"),
    ({**GOOD, "source": {"rule": {"network": "red", "protocol": "icmp", "dst_port": 80}}},
     "mirrors[0].source.rule.dst_port: ports need protocol tcp or udp"),
    ({**GOOD, "source": {"rule": {"protocol": "tcp"}}}, "mirrors[0].source.rule: missing required key 'network'"),
    ({**GOOD, "source": {"rule": {"network": "red", "action": "deny"}}}, "mirrors[0].source.rule.action: unknown key"),
    ({**GOOD, "direction": "sideways"}, "mirrors[0].direction: 'sideways' is not a direction"),
    ({**GOOD, "rate": 0}, "mirrors[0].rate: expected copies per second"),
    ({**GOOD, "colour": "red"}, "mirrors[0].colour: unknown key"),
])
def test_bad_sessions_are_refused_alike_by_the_topology_and_the_vnc(bad, expected):
    (line,) = problems(bad)
    assert line.startswith(expected), line
    assert vnc_problem(bad).startswith(expected)


def test_duplicate_session_names_are_refused():
    assert problems(GOOD, GOOD) == ["mirrors[1].name: duplicate name 'm1' (already used by mirrors[0])"]
    assert problems(GOOD, {**GOOD, "name": "m2", "to": PCAP, "source": {"network": "red"}}) == []


def test_the_vrouter_config_refuses_a_session_of_an_unknown_vif():
    d = server_dict("srv1")
    d["mirrors"] = [session(source={"vif": "tr-nope"})]
    with pytest.raises(ConfigError, match=r"mirrors\[0\].source.vif: unknown vif 'tr-nope'"):
        VrouterConfig.from_dict(d)


# ---- the VNC: numbers, per-server configs, run-time changes, state
def test_the_vnc_gives_each_holder_of_a_source_the_analyzers_next_hop():
    m = VncModel(topo(GOOD, {"name": "m2", "source": {"network": "blue"}, "to": PCAP}), prefix="mr")
    srv1, srv2 = m.config_for("srv1"), m.config_for("srv2")
    (s,) = [x for x in srv1["mirrors"] if x["name"] == "m1"]
    red2 = m.vm("red2")
    assert s["id"] == 1 and s["source"] == {"vif": m.vm("red1")["tap"]}
    assert s["to"]["analyzer"] == {"vm": "red2", "address": "192.168.1.12", "gateway": "192.168.1.1",
                                   "nexthop": {"type": "tunnel", "peer": "10.0.1.2", "label": 100,
                                               "encap": "mplsoudp", "mac": red2["mac"]}}
    assert [x["name"] for x in srv1["mirrors"]] == ["m1", "m2"]
    assert "mirrors" not in srv2                    # red2 is there, but no source is
    VrouterConfig.from_dict(srv1)                   # what the VNC sends, the vrouter takes


def test_run_time_add_and_remove_touch_only_the_holders_and_persist():
    m = VncModel(topo(), prefix="mr")
    change = m.mirrors.change("add", {"name": "m1", "source": {"vm": "red1"}, "to": PCAP})
    assert change.servers == ("srv1",)
    with pytest.raises(VncError, match="duplicate name 'm1'"):
        m.mirrors.change("add", {"name": "m1", "source": {"vm": "red1"}, "to": PCAP})
    m.mirrors.change("add", {"name": "m2", "source": {"vm": "red2"}, "to": {"analyzer": "red1"}})
    assert [s["id"] for s in m.mirrors.list()] == [1, 2]
    with pytest.raises(VncError, match="VM 'red1' is used by mirror session 'm1'"):
        m.remove_vm("red1")
    again = VncModel(topo(), prefix="mr")
    again.restore(m.state())
    assert again.mirrors.list() == m.mirrors.list()
    assert m.mirrors.change("remove", "m1").servers == ("srv1",)
    with pytest.raises(VncError, match="unknown mirror session 'm1'"):
        m.mirrors.change("remove", "m1")
    with pytest.raises(VncError, match="unknown operation 'flip'"):
        m.mirrors.change("flip", None)
    assert m.mirrors.change("add", {"name": "m3", "source": {"network": "red"}, "to": PCAP}).servers == \
        ("srv1", "srv2")
    assert [s["id"] for s in m.mirrors.list()] == [2, 1]     # m2 keeps 2, m3 takes the freed 1


# ---- the pcap sink (I/O shell)
def test_pcap_files_are_standard_pcaps_with_the_frames(tmp_path):
    sink = PcapFiles(str(tmp_path), "srv1", clock=lambda: 100.0)
    frames = [tcp_frame(VM1, VM2, 1000, 80, TCP_SYN, payload=b"a"), udp_frame(VM1, VM3, 1, 2)]
    for i, f in enumerate(frames):
        sink.write("m1", f, 99.0 + i)
    sink.flush()
    path = pcap_path(str(tmp_path), "m1", "srv1")
    got = rdpcap(path)
    assert [bytes(x) for x in got] == frames and isinstance(got[0], Ether)
    assert got[1].time - got[0].time == pytest.approx(1.0, abs=1e-5)
    sink.close("m1")
    sink.write("m1", frames[0], 100.0)          # re-opened: appended, one header
    sink.close_all()
    assert len(rdpcap(path)) == 3 and os.path.getsize(path) > 24
