"""Load balancing over a service address (vrouter/core/ecmp.py): rendezvous hashing, the member a
flow keeps, the proactive reverse entry pinned to that member, removal moving only its flows."""
import random

import pytest

from core_helpers import SRV1, SRV2, VM1, VM2_MAC, VM3_MAC, Pair, server_dict, tcp_frame
from vrouter.core import ecmp
from vrouter.core.actions import Drop, ToVif
from vrouter.core.codec.ipv4 import ip_to_int
from vrouter.core.codec.l4 import TCP_ACK, TCP_SYN
from vrouter.core.config import VrouterConfig
from vrouter.core.pipeline import Pipeline
from vrouter.core.slowpath import SlowPath

SVC = "192.168.1.100"
LOCAL = {"member": "red3", "type": "vif", "vif": "tr-red3"}            # on srv1, with the client red1
REMOTE = {"member": "red2", "type": "vif", "vif": "tr-red2"}           # on srv2


def member_on(srv, m):
    """A member's next hop as server ``srv`` sees it (its VIF there, else a tunnel to its server)."""
    here = (m is LOCAL) == (srv == "srv1")
    return dict(m) if here else {"member": m["member"], "type": "tunnel", "peer": SRV1 if m is LOCAL else SRV2,
                                 "label": 100}


def with_service(srv, members=(LOCAL, REMOTE), **kw):
    d = server_dict(srv, **kw)
    d["routes"].append({"network": "red", "prefix": SVC + "/32", "nexthop": {
        "type": "composite", "service": "web", "members": [member_on(srv, m) for m in members]}})
    for v in d["vifs"]:
        if any(m["vif"] == v["name"] for m in members):
            v["services"] = [SVC]
    return VrouterConfig.from_dict(d)


def service_pair(**kw):
    p = Pair(**kw)
    p.cfg = {n: with_service(n, **kw) for n in ("srv1", "srv2")}
    p.pipe = {n: Pipeline(c) for n, c in p.cfg.items()}
    p.slow = {n: SlowPath(c) for n, c in p.cfg.items()}
    return p


def keys(n, seed=1):
    rnd = random.Random(seed)
    return [(6, rnd.getrandbits(32), ip_to_int(SVC), rnd.randrange(1024, 65536), 80) for _ in range(n)]


def test_rendezvous_removal_moves_only_the_removed_members_flows():
    members = [{"member": f"m{i}"} for i in range(5)]
    before = {k: ecmp.pick(members, *k)["member"] for k in keys(2000)}
    assert len(set(before.values())) == 5
    for gone in ("m0", "m3"):
        rest = [m for m in members if m["member"] != gone]
        after = {k: ecmp.pick(rest, *k)["member"] for k in before}
        moved = {k for k in before if before[k] != after[k]}
        assert moved == {k for k in before if before[k] == gone}
    # a subset holding the winner picks the winner (the member's own vrouter agrees with the sender)
    for k, winner in before.items():
        sub = [m for m in members if m["member"] in (winner, "m1", "m4")]
        assert ecmp.pick(sub, *k)["member"] == winner


def test_adding_a_member_takes_only_flows_it_wins():
    members = [{"member": f"m{i}"} for i in range(3)]
    before = {k: ecmp.pick(members, *k)["member"] for k in keys(1500, seed=2)}
    after = {k: ecmp.pick(members + [{"member": "new"}], *k)["member"] for k in before}
    assert {after[k] for k in before if after[k] != before[k]} == {"new"}
    assert 300 < sum(v == "new" for v in after.values()) < 450


def connect(p, sport, now=0.0):
    """red1's SYN to the service: the terminal actions of the SYN, and which member's VIF got it."""
    out = p.run("srv1", p.pipe["srv1"].from_vif("tr-red1", tcp_frame(VM1, SVC, sport, 80, TCP_SYN), now), now)
    (a,) = out
    assert isinstance(a, ToVif), out
    return a.vif


def reply(p, vif, sport, now=0.0):
    """The member's SYN-ACK from the service address, through its vrouter back to red1."""
    srv, mac = ("srv1", VM3_MAC) if vif == "tr-red3" else ("srv2", VM2_MAC)
    frame = tcp_frame(SVC, VM1, 80, sport, TCP_SYN | TCP_ACK, src_mac=mac)
    return p.run(srv, p.pipe[srv].from_vif(vif, frame, now), now)


def entry(p, srv, src, dst, sport, dport):
    return p.pipe[srv].table.entries[(100, 6, ip_to_int(src), ip_to_int(dst), sport, dport)]


def test_flows_spread_over_members_and_replies_hit_the_pinned_reverse_entry():
    p = service_pair()
    chosen = {sport: connect(p, sport) for sport in range(40000, 40100)}
    assert set(chosen.values()) == {"tr-red2", "tr-red3"}
    punts_before = dict(p.punts)
    for sport, vif in chosen.items():
        f = entry(p, "srv1", VM1, SVC, sport, 80)
        r = f.reverse
        member = "red3" if vif == "tr-red3" else "red2"
        assert (f.member, r.member) == (member, member)
        assert f.pin is None and r.pin == ("tr-red3" if member == "red3" else SRV2)
        out = reply(p, vif, sport)
        assert [type(a) for a in out] == [ToVif] and out[0].vif == "tr-red1"
    # the member's vrouter decided its side once (srv2 punts on the SYN); no reply was punted anywhere
    assert p.punts == punts_before
    counters = ecmp.member_counters(p.pipe["srv1"].flows())
    assert counters["red2"]["flows"] + counters["red3"]["flows"] == 100
    assert counters["red2"]["flows"] > 20 and counters["red3"]["flows"] > 20
    assert counters["red2"]["packets_from"] == counters["red2"]["flows"]


def test_the_member_vrouter_delivers_to_the_member_the_sender_chose():
    p = service_pair()
    for sport in range(41000, 41040):
        if connect(p, sport) == "tr-red2":
            e = entry(p, "srv2", VM1, SVC, sport, 80)
            assert e.member == "red2" and e.reverse.pin == "tr-red2"


def test_a_reply_from_another_member_is_dropped_as_wrong_member():
    p = service_pair()
    sport = next(s for s in range(42000, 42100) if connect(p, s) == "tr-red2")
    # red3 (on srv1) answers a flow that went to red2: it matches srv1's reverse entry from the wrong VIF
    assert reply(p, "tr-red3", sport) == [Drop("wrong_member")]
    assert p.pipe["srv1"].drop_stats()["wrong_member"] == 1
    assert reply(p, "tr-red2", sport)[0] == ToVif("tr-red1", reply(p, "tr-red2", sport)[0].frame)


@pytest.mark.parametrize("left, nexthop, pin", [(LOCAL, ("vif", "tr-red3"), "tr-red3"),
                                                 (REMOTE, ("peer", SRV2), SRV2)])
def test_removing_a_member_moves_only_its_flows(left, nexthop, pin):
    p = service_pair()
    chosen = {sport: connect(p, sport) for sport in range(43000, 43060)}
    p.pipe["srv1"].apply_config(with_service("srv1", members=(left,)))
    for sport in chosen:
        f = entry(p, "srv1", VM1, SVC, sport, 80)
        assert f.member == left["member"] and getattr(f, nexthop[0]) == nexthop[1]
        assert f.reverse.member == left["member"] and f.reverse.pin == pin
    # the kept member's flows are the same entries (their packets counted); the others moved
    kept = [s for s, v in chosen.items() if v == left["vif"]]
    assert kept and all(entry(p, "srv1", VM1, SVC, s, 80).packets == 1 for s in kept)
    # the other member back: established flows keep the member they have (only new flows may pick it)
    p.pipe["srv1"].apply_config(with_service("srv1"))
    assert {entry(p, "srv1", VM1, SVC, s, 80).member for s in chosen} == {left["member"]}


def test_only_a_member_may_send_from_the_service_address():
    p = service_pair()
    frame = tcp_frame(SVC, VM1, 80, 5000, TCP_SYN)     # from red1, which is no member
    assert p.pipe["srv1"].from_vif("tr-red1", frame, 0.0) == [Drop("spoofed_source")]


def test_a_member_starting_a_flow_from_the_service_address_keeps_it():
    p = service_pair()
    frame = tcp_frame(SVC, VM1, 80, 6000, TCP_SYN, src_mac=VM3_MAC)
    out = p.run("srv1", p.pipe["srv1"].from_vif("tr-red3", frame, 0.0), 0.0)
    assert [a.vif for a in out] == ["tr-red1"]
    f = entry(p, "srv1", SVC, VM1, 80, 6000)
    assert f.member == "red3" and f.pin == "tr-red3" and f.reverse.member == "red3" and f.reverse.vif == "tr-red3"
