"""IP fragments: the first carries the ports, later ones find the flow through the fragment table."""
from scapy.layers.inet import IP, UDP, fragment
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from core_helpers import VM1, VM1_MAC, VM3, server
from vrouter.core.actions import Drop, ToVif
from vrouter.core.pipeline import Pipeline
from vrouter.core.slowpath import SlowPath


def frags(ident=4242, size=1200, sport=5000):
    pkt = IP(src=VM1, dst=VM3, id=ident) / UDP(sport=sport, dport=7) / Raw(b"z" * size)
    return [bytes(Ether(src=VM1_MAC, dst="00:00:5e:00:01:00") / f) for f in fragment(pkt, fragsize=400)]


def setup():
    cfg = server("srv1")
    return Pipeline(cfg), SlowPath(cfg)


def test_fragments_follow_the_first_fragments_flow():
    pipe, slow = setup()
    parts = frags()
    assert len(parts) == 4
    assert pipe.from_vif("tr-red1", parts[0], 0.0) == []
    (request,) = pipe.take_punts(0.0)
    assert request["sport"] == 5000
    out = pipe.install(slow.decide(request), 0.0)
    for part in parts[1:]:
        out += pipe.from_vif("tr-red1", part, 0.0)
    assert [type(a) for a in out] == [ToVif] * 4 and {a.vif for a in out} == {"tr-red3"}
    assert pipe.stats()["fragments"] == 0                        # last fragment forgot the datagram
    reassembled = b"".join(bytes(IP(a.frame[14:]).payload) for a in out)
    assert len(reassembled) == 8 + 1200


def test_fragments_queue_behind_a_held_first_fragment():
    pipe, slow = setup()
    parts = frags()
    assert pipe.from_vif("tr-red1", parts[0], 0.0) == []
    assert [pipe.from_vif("tr-red1", p, 0.0) for p in parts[1:]] == [[], [], []]
    (request,) = pipe.take_punts(0.0)
    out = pipe.install(slow.decide(request), 0.0)
    assert len(out) == 4 and all(isinstance(a, ToVif) for a in out)


def test_non_first_fragment_without_its_head_is_dropped():
    pipe, slow = setup()
    parts = frags(ident=1)
    assert pipe.from_vif("tr-red1", parts[2], 0.0) == [Drop("fragment_no_head")]
    assert pipe.drop_stats()["fragment_no_head"] == 1


def test_fragment_table_is_bounded_and_aged():
    cfg = server("srv1", flow={"fragment_capacity": 2, "fragment_timeout": 30, "unreplied_timeout": 60})
    pipe, slow = Pipeline(cfg), SlowPath(cfg)
    for ident in (1, 2):
        pipe.from_vif("tr-red1", frags(ident=ident)[0], 0.0)
        for request in pipe.take_punts(0.0):
            pipe.install(slow.decide(request), 0.0)
    assert pipe.from_vif("tr-red1", frags(ident=3)[0], 0.0) == [Drop("fragment_table_full")]
    pipe.expire(31.0)
    assert pipe.stats()["fragments"] == 0
    # Same 5-tuple as the earlier datagrams: its flow entry is still there, so this is a hit.
    assert isinstance(pipe.from_vif("tr-red1", frags(ident=3)[0], 31.0)[0], ToVif)
