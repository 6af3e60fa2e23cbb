"""The flow table under pressure: per-VM and per-network limits with hysteresis, unreplied pairs aged
and evicted first, held limits, the setup queue in front of the agent, and ``pressure()``."""
import json
import random

import pytest

from core_helpers import VM1, VM2, VM3, VM3_MAC, server, server_dict, tcp_frame, udp_frame
from vrouter.core.actions import Drop, ToTunnel, ToVif
from vrouter.core.codec import mpls
from vrouter.core.codec.l4 import TCP_SYN
from vrouter.core.config import VrouterConfig
from vrouter.core.flowtable import FABRIC_OWNER
from vrouter.core.pipeline import Pipeline
from vrouter.core.slowpath import SlowPath

BLUE1_MAC = "02:00:00:00:02:0b"


def setup(**flow):
    cfg = server("srv1", flow=flow)
    return Pipeline(cfg), SlowPath(cfg)


def udp_out(pipe, slow, sport, vif="tr-red1", src=VM1, dst=VM2, mac=None, now=0.0):
    """A UDP packet from a local VM; a new flow is decided at once. Returns its actions."""
    kw = {"src_mac": mac} if mac else {}
    out = pipe.from_vif(vif, udp_frame(src, dst, sport, 53, **kw), now)
    for request in pipe.take_punts(now):
        out += pipe.install(slow.decide(request, now), now)
    return out


def udp_in(pipe, slow, sport, dst=VM1, now=0.0):
    """A UDP packet from VM2 (on srv2) arriving from the fabric for ``dst``."""
    payload = mpls.build_stack([100]) + udp_frame(VM2, dst, sport, 53)[14:]
    out = pipe.from_fabric("10.0.2.1", "mplsoudp", payload, now)
    for request in pipe.take_punts(now):
        out += pipe.install(slow.decide(request, now), now)
    return out


def reply_in(pipe, sport, now=0.0):
    """VM2 answers VM1's UDP flow from ``sport``: the pair becomes replied."""
    payload = mpls.build_stack([100]) + udp_frame(VM2, VM1, 53, sport)[14:]
    (a,) = pipe.from_fabric("10.0.2.1", "mplsoudp", payload, now)
    assert isinstance(a, ToVif)


def recount(pipe):
    """Owner and network counts as a scan of the table gives them (what the incremental counts must be)."""
    owners, nets, held = {}, {}, 0
    for e in pipe.table.entries.values():
        owners[e.owner.name] = owners.get(e.owner.name, 0) + e.charge
        nets[e.net.name] = nets.get(e.net.name, 0) + e.charge
        held += not e.kind
    return owners, nets, held


def counted(pipe):
    p = pipe.pressure(0.0)
    return ({k: v["entries"] for k, v in p["vms"].items() if v["entries"]},
            {k: v["entries"] for k, v in p["networks"].items() if v["entries"]}, p["held"])


# ---------------------------------------------------------------- isolation
def test_a_vm_over_its_limit_hurts_only_its_own_new_flows():
    pipe, slow = setup(vm_flow_limit=10)
    for sport in range(5):                              # 5 proactive pairs = 10 entries: at the limit
        assert isinstance(udp_out(pipe, slow, sport)[0], ToTunnel)
    assert udp_out(pipe, slow, 99) == [Drop("vm_flow_limit")]
    assert udp_out(pipe, slow, 98) == [Drop("vm_flow_limit")]
    # Its established flows still forward, both ways; the other VMs open flows as before.
    assert isinstance(udp_out(pipe, slow, 3)[0], ToTunnel)
    reply_in(pipe, 3)
    assert isinstance(udp_out(pipe, slow, 1, vif="tr-red3", src=VM3, mac=VM3_MAC)[0], ToTunnel)
    assert isinstance(udp_out(pipe, slow, 1, vif="tr-blue1", mac=BLUE1_MAC)[0], ToTunnel)
    p = pipe.pressure(0.0)
    assert p["vms"]["tr-red1"] == {"entries": 10, "limit": 10, "held": 0, "blocked": True, "refused": 2}
    assert p["vms"]["tr-red3"]["blocked"] is False and p["vms"]["tr-red3"]["refused"] == 0
    assert pipe.drop_stats()["vm_flow_limit"] == 2


def test_hysteresis_refuses_until_back_under_the_resume_fraction():
    pipe, slow = setup(vm_flow_limit=10, resume_fraction=0.7, idle_timeout=100, unreplied_timeout=100)
    for sport in range(5):
        udp_out(pipe, slow, sport, now=float(sport))    # pair i last used at time i
        reply_in(pipe, sport, now=float(sport))
    assert udp_out(pipe, slow, 50, now=5.0) == [Drop("vm_flow_limit")]
    assert pipe.expire(100.5) == 2                      # 8 entries left: room for a pair, but 8 >= 7
    assert udp_out(pipe, slow, 51, now=100.5) == [Drop("vm_flow_limit")]
    assert pipe.pressure(100.5)["vms"]["tr-red1"]["blocked"] is True
    assert pipe.expire(101.5) == 2                      # 6 < 0.7 * 10: admitted again
    assert pipe.pressure(101.5)["vms"]["tr-red1"]["blocked"] is False
    assert isinstance(udp_out(pipe, slow, 52, now=101.5)[0], ToTunnel)
    assert pipe.pressure(101.5)["vms"]["tr-red1"]["refused"] == 2


def test_network_limit_covers_all_vms_of_the_network_and_no_other():
    pipe, slow = setup(vm_flow_limit=100, network_flow_limit=8)
    for sport in range(2):
        udp_out(pipe, slow, sport)
        udp_out(pipe, slow, sport, vif="tr-red3", src=VM3, mac=VM3_MAC)
    assert udp_out(pipe, slow, 9) == [Drop("network_flow_limit")]
    assert udp_out(pipe, slow, 9, vif="tr-red3", src=VM3, mac=VM3_MAC) == [Drop("network_flow_limit")]
    assert isinstance(udp_out(pipe, slow, 9, vif="tr-blue1", mac=BLUE1_MAC)[0], ToTunnel)
    nets = pipe.pressure(0.0)["networks"]
    assert nets["red"] == {"entries": 8, "limit": 8, "blocked": True, "refused": 2}
    assert nets["blue"]["entries"] == 2 and not nets["blue"]["blocked"]
    assert pipe.drop_stats()["network_flow_limit"] == 2


def test_default_limits_are_shares_of_the_capacity_and_overrides_come_from_the_config():
    d = server_dict("srv1", flow={"capacity": 1000})
    d["vifs"][1]["flow_limit"] = 30                     # tr-red3
    d["networks"][1]["flow_limit"] = 40                 # blue
    pipe = Pipeline(VrouterConfig.from_dict(d))
    p = pipe.pressure(0.0)
    assert p["vms"]["tr-red1"]["limit"] == 250 and p["vms"]["tr-red3"]["limit"] == 30
    assert p["vms"][FABRIC_OWNER]["limit"] == 250
    assert p["networks"]["red"]["limit"] == 500 and p["networks"]["blue"]["limit"] == 40
    d["vifs"][1].pop("flow_limit")
    d["flow"]["vm_flow_limit"] = 12
    pipe.apply_config(VrouterConfig.from_dict(d))
    assert pipe.pressure(0.0)["vms"]["tr-red3"]["limit"] == 12


def test_a_lower_limit_applies_at_once_to_flows_already_counted():
    d = server_dict("srv1", flow={"vm_flow_limit": 100})
    pipe, slow = Pipeline(VrouterConfig.from_dict(d)), SlowPath(VrouterConfig.from_dict(d))
    for sport in range(3):
        udp_out(pipe, slow, sport)
    d["vifs"][0]["flow_limit"] = 4
    pipe.apply_config(VrouterConfig.from_dict(d))
    assert udp_out(pipe, slow, 10) == [Drop("vm_flow_limit")]
    assert isinstance(udp_out(pipe, slow, 1)[0], ToTunnel)          # established: still a hit


def test_flows_from_the_fabric_are_charged_to_the_vm_they_go_to():
    pipe, slow = setup(vm_flow_limit=4)
    assert isinstance(udp_in(pipe, slow, 1)[0], ToVif)
    assert isinstance(udp_in(pipe, slow, 2)[0], ToVif)
    assert udp_in(pipe, slow, 3) == [Drop("vm_flow_limit")]          # tr-red1 is full
    assert isinstance(udp_in(pipe, slow, 3, dst=VM3)[0], ToVif)     # tr-red3 is not
    flows = pipe.flows(0.0)
    assert {f["owner"] for f in flows if f["dst"] == VM1 or f["src"] == VM1} == {"tr-red1"}
    assert pipe.pressure(0.0)["vms"]["tr-red1"]["entries"] == 4


def test_a_local_flow_is_charged_whole_to_the_vm_that_opened_it():
    pipe, slow = setup(vm_flow_limit=100)
    (a,) = udp_out(pipe, slow, 7, dst=VM3)
    assert a.vif == "tr-red3"
    vms = pipe.pressure(0.0)["vms"]
    assert vms["tr-red1"]["entries"] == 2 and vms["tr-red3"]["entries"] == 0


def test_reactive_mode_needs_room_for_one_entry_per_flow():
    pipe, slow = setup(mode="reactive", vm_flow_limit=3)
    for sport in range(3):
        assert isinstance(udp_out(pipe, slow, sport)[0], ToTunnel)
    assert udp_out(pipe, slow, 3) == [Drop("vm_flow_limit")]
    assert pipe.pressure(0.0)["vms"]["tr-red1"]["entries"] == 3


def test_a_held_proactive_flow_reserves_its_reverse_entry():
    pipe, slow = setup(vm_flow_limit=4)
    for sport in (1, 2):
        assert pipe.from_vif("tr-red1", udp_frame(VM1, VM2, sport, 53), 0.0) == []
    assert pipe.pressure(0.0)["vms"]["tr-red1"]["entries"] == 4    # two held flows, two reserved
    assert pipe.from_vif("tr-red1", udp_frame(VM1, VM2, 3, 53), 0.0) == [Drop("vm_flow_limit")]
    for request in pipe.take_punts(0.0):
        pipe.install(slow.decide(request, 0.0), 0.0)
    assert len(pipe.flows()) == 4 and counted(pipe)[0] == {"tr-red1": 4}


def test_counts_follow_every_insert_and_removal():
    """Random opens, replies, ageing and evictions: the incremental counts always equal a recount."""
    rnd = random.Random(11)
    pipe, slow = setup(capacity=40, vm_flow_limit=16, network_flow_limit=30, idle_timeout=20,
                       unreplied_timeout=5, held_limit=6, vm_held_limit=4)
    now = 0.0
    for _ in range(600):
        now += rnd.random()
        op = rnd.random()
        sport = rnd.randrange(60)
        if op < 0.35:
            udp_out(pipe, slow, sport, now=now)
        elif op < 0.5:
            udp_out(pipe, slow, sport, vif="tr-blue1", mac=BLUE1_MAC, now=now)
        elif op < 0.65:
            udp_in(pipe, slow, sport, dst=rnd.choice([VM1, VM3]), now=now)
        elif op < 0.8:
            pipe.from_vif("tr-red3", udp_frame(VM3, VM2, sport, 53, src_mac=VM3_MAC), now)  # held
        elif op < 0.9:
            pipe.take_punts(now, limit=rnd.randrange(3))                     # decisions never come
        else:
            pipe.expire(now)
        owners, nets, held = recount(pipe)
        c_owners, c_nets, c_held = counted(pipe)
        assert (c_owners, c_nets, c_held) == ({k: v for k, v in owners.items() if v},
                                              {k: v for k, v in nets.items() if v}, held)
        assert len(pipe.table.unreplied) <= len(pipe.table)
    assert pipe.stats()["evictions"] > 0 and pipe.drop_stats()["vm_flow_limit"] > 0
    pipe.expire(now + 1000)
    assert counted(pipe) == ({}, {}, 0) and len(pipe.table.unreplied) == 0 and pipe.flows() == []


# ---------------------------------------------------------------- unreplied pairs
def test_unreplied_pairs_age_after_the_unreplied_timeout_replied_ones_do_not():
    pipe, slow = setup()
    udp_out(pipe, slow, 1, now=0.0)                     # one-packet UDP: its reverse never used
    udp_out(pipe, slow, 2, now=0.0)
    reply_in(pipe, 2, now=0.5)
    assert pipe.pressure(1.0)["unreplied"] == 1
    assert pipe.expire(9.9) == 0
    assert pipe.expire(10.1) == 2                       # default unreplied_timeout 10 s
    assert {f["sport"] for f in pipe.flows() if f["role"] == "forward"} == {2}
    assert pipe.stats()["unreplied_aged"] == 2 and pipe.pressure(10.1)["unreplied_aged"] == 2
    assert pipe.expire(180.6) == 2                      # the replied pair: idle_timeout


def test_a_busy_one_way_stream_is_not_aged():
    pipe, slow = setup()
    for t in range(0, 40, 5):
        udp_out(pipe, slow, 1, now=float(t))
        assert pipe.expire(float(t)) == 0
    assert pipe.expire(46.0) == 2


def test_an_unanswered_syn_goes_after_the_unreplied_timeout():
    pipe, slow = setup(unreplied_timeout=5)
    pipe.from_vif("tr-red1", tcp_frame(VM1, VM2, 40000, 80, TCP_SYN), 0.0)
    pipe.install(slow.decide(pipe.take_punts(0.0)[0], 0.0), 0.0)
    pipe.from_vif("tr-red1", tcp_frame(VM1, VM2, 40000, 80, TCP_SYN), 1.0)     # retransmitted
    assert pipe.expire(5.9) == 0 and pipe.expire(6.1) == 2


def test_reactive_forward_entry_alone_is_unreplied_until_the_reply_is_installed():
    pipe, slow = setup(mode="reactive")
    udp_out(pipe, slow, 1)
    assert pipe.pressure(0.0)["unreplied"] == 1
    payload = mpls.build_stack([100]) + udp_frame(VM2, VM1, 53, 1)[14:]
    assert pipe.from_fabric("10.0.2.1", "mplsoudp", payload, 1.0) == []        # reactive: a miss
    (request,) = pipe.take_punts(1.0)
    (a,) = pipe.install(slow.decide(request, 1.0), 1.0)
    assert isinstance(a, ToVif)
    flows = {(f["sport"], f["dport"]): f for f in pipe.flows(1.0)}
    assert flows[(1, 53)]["reverse_index"] == flows[(53, 1)]["index"]
    assert pipe.pressure(1.0)["unreplied"] == 0
    assert pipe.expire(11.5) == 0                        # replied: idle ageing only


def test_full_table_evicts_the_oldest_unreplied_pair_whole():
    pipe, slow = setup(capacity=6, vm_flow_limit=100, network_flow_limit=100)
    for sport in (1, 2, 3):
        udp_out(pipe, slow, sport, now=float(sport))
    reply_in(pipe, 1, now=4.0)                          # pair 1 is replied: never evicted
    assert isinstance(udp_out(pipe, slow, 4, now=5.0)[0], ToTunnel)
    fwd = {f["sport"] for f in pipe.flows() if f["role"] == "forward"}
    assert fwd == {1, 3, 4}                             # pair 2, the oldest unreplied, went
    assert len(pipe.flows()) == 6 and pipe.stats()["evictions"] == 2
    assert all(f["reverse_index"] is not None for f in pipe.flows())   # no half pair left
    udp_out(pipe, slow, 3, now=6.0)                     # refreshing a pair does not reorder it
    assert isinstance(udp_out(pipe, slow, 5, now=7.0)[0], ToTunnel)
    assert {f["sport"] for f in pipe.flows() if f["role"] == "forward"} == {1, 4, 5}


def test_replied_pairs_and_held_entries_are_never_evicted():
    pipe, slow = setup(capacity=4, vm_flow_limit=100, network_flow_limit=100)
    udp_out(pipe, slow, 1)
    reply_in(pipe, 1)
    assert pipe.from_vif("tr-red1", udp_frame(VM1, VM2, 2, 53), 0.0) == []         # held
    assert pipe.from_vif("tr-red3", udp_frame(VM3, VM2, 2, 53, src_mac=VM3_MAC), 0.0) == []
    assert pipe.from_vif("tr-red1", udp_frame(VM1, VM2, 3, 53), 0.0) == [Drop("flow_table_full")]
    assert pipe.stats()["evictions"] == 0 and len(pipe.flows()) == 4


def test_a_pair_whose_reply_came_leaves_the_eviction_list():
    pipe, slow = setup(capacity=4, vm_flow_limit=100, network_flow_limit=100)
    udp_out(pipe, slow, 1)
    udp_out(pipe, slow, 2)
    reply_in(pipe, 1)
    reply_in(pipe, 2)
    assert pipe.pressure(0.0)["unreplied"] == 0
    assert udp_out(pipe, slow, 3) == [Drop("flow_table_full")]


def test_the_reverse_entry_may_evict_too():
    pipe, slow = setup(capacity=3, vm_flow_limit=100, network_flow_limit=100)
    udp_out(pipe, slow, 1, now=0.0)
    assert isinstance(udp_out(pipe, slow, 2, now=1.0)[0], ToTunnel)   # hold fits; its reverse evicts pair 1
    assert pipe.stats()["reverse_not_installed"] == 0 and pipe.stats()["evictions"] == 2
    assert {f["sport"] for f in pipe.flows()} == {2, 53}


# ---------------------------------------------------------------- held limits
def test_held_limits_per_vm_and_for_the_table():
    pipe, _ = setup(held_limit=3, vm_held_limit=2)
    for sport in (1, 2):
        assert pipe.from_vif("tr-red1", udp_frame(VM1, VM2, sport, 53), 0.0) == []
    assert pipe.from_vif("tr-red1", udp_frame(VM1, VM2, 3, 53), 0.0) == [Drop("vm_held_limit")]
    assert pipe.from_vif("tr-red3", udp_frame(VM3, VM2, 3, 53, src_mac=VM3_MAC), 0.0) == []
    assert pipe.from_vif("tr-blue1", udp_frame(VM1, VM2, 3, 53, src_mac=BLUE1_MAC), 0.0) == [Drop("held_limit")]
    p = pipe.pressure(0.0)
    assert (p["held"], p["held_limit"], p["vms"]["tr-red1"]["held"], p["vms"]["tr-red1"]["refused"]) == (3, 3, 2, 1)
    # Later packets of a held flow queue behind it as before: no new held entry.
    assert pipe.from_vif("tr-red1", udp_frame(VM1, VM2, 1, 53), 0.0) == []
    assert pipe.drop_stats()["held_limit"] == 1 and pipe.drop_stats()["vm_held_limit"] == 1


# ---------------------------------------------------------------- the setup queue
def test_punts_are_taken_round_robin_over_owners():
    pipe, _ = setup()
    for sport in range(20):
        pipe.from_vif("tr-red1", udp_frame(VM1, VM2, sport, 53), 0.0)
    pipe.from_vif("tr-red3", udp_frame(VM3, VM2, 1, 53, src_mac=VM3_MAC), 0.0)
    payload = mpls.build_stack([200]) + udp_frame(VM2, VM1, 9, 9)[14:]
    pipe.from_fabric("10.0.2.1", "mplsoudp", payload, 0.0)                  # for tr-blue1
    assert pipe.punts_waiting() == 22
    first = pipe.take_punts(0.0, limit=3)
    assert [r["owner"] for r in first] == ["tr-red1", "tr-red3", "tr-blue1"]
    assert first[2]["ingress"] == "fabric" and first[2]["vrf"] == 200
    rest = pipe.take_punts(0.0)
    assert [r["sport"] for r in rest] == list(range(1, 20)) and pipe.punts_waiting() == 0
    assert pipe.stats()["punts"] == 22


def test_token_bucket_paces_punts():
    pipe, _ = setup(setup_rate=10.0, burst_tokens=5, hold_timeout=60.0)
    for sport in range(20):
        pipe.from_vif("tr-red1", udp_frame(VM1, VM2, sport, 53), 0.0)
    assert pipe.pressure(0.0)["tokens"] == 5.0
    assert len(pipe.take_punts(0.0)) == 5
    assert pipe.take_punts(0.05) == []
    assert len(pipe.take_punts(0.35)) == 3                                   # 3.5 tokens
    assert pipe.pressure(0.35)["tokens"] == pytest.approx(0.5)
    assert len(pipe.take_punts(10.0, limit=2)) == 2                          # the bucket stays at 5 at most
    assert pipe.pressure(10.0)["tokens"] == pytest.approx(3.0)
    assert pipe.punts_waiting() == 10


def test_the_queue_says_how_long_until_it_can_give():
    pipe, _ = setup(setup_rate=10.0, burst_tokens=2, hold_timeout=60.0)
    assert pipe.punt_wait(0.0) is None                                       # nothing waits
    for sport in range(3):
        pipe.from_vif("tr-red1", udp_frame(VM1, VM2, sport, 53), 0.0)
    assert pipe.punt_wait(0.0) == 0.0
    assert len(pipe.take_punts(0.0)) == 2
    assert pipe.punt_wait(0.0) == pytest.approx(0.1)                         # one token at 10/s
    assert pipe.punt_wait(0.06) == pytest.approx(0.04)
    assert len(pipe.take_punts(0.1)) == 1 and pipe.punt_wait(0.1) is None


def test_no_cap_when_the_rate_is_zero():
    pipe, _ = setup()
    for sport in range(300):
        pipe.from_vif("tr-red1", udp_frame(VM1, VM2, sport, 53), 0.0)
    assert pipe.pressure(0.0)["tokens"] is None
    assert len(pipe.take_punts(0.0)) == 256                                  # vm_held_limit
    assert pipe.drop_stats()["vm_held_limit"] == 44


def test_stale_requests_are_dropped_with_their_held_entries():
    pipe, slow = setup(setup_rate=1.0, burst_tokens=1, hold_timeout=2.0)
    for sport in range(3):
        pipe.from_vif("tr-red1", udp_frame(VM1, VM2, sport, 53), 0.0)
        pipe.from_vif("tr-red1", udp_frame(VM1, VM2, sport, 53), 0.0)       # a second packet held
    (sent,) = pipe.take_punts(0.0)
    assert pipe.take_punts(2.5) == []                                        # both others waited > 2 s
    assert pipe.drop_stats()["setup_queue_stale"] == 4 and pipe.punts_waiting() == 0
    assert len(pipe.flows()) == 1 and pipe.pressure(2.5)["held"] == 1
    # The decision for the one that went out still installs; late ones are ignored.
    assert len(pipe.install(slow.decide(sent, 2.5), 2.5)) == 2
    stale = dict(sent, sport=2)
    assert pipe.install(slow.decide(stale, 2.5), 2.5) == [] and pipe.stats()["late_decisions"] == 1


def test_requests_of_entries_that_went_meanwhile_are_skipped():
    pipe, _ = setup(hold_timeout=2.0)
    pipe.from_vif("tr-red1", udp_frame(VM1, VM2, 1, 53), 0.0)
    pipe.expire(2.5)                                                         # hold_timeout
    pipe.from_vif("tr-red1", udp_frame(VM1, VM2, 2, 53), 2.5)
    assert [r["sport"] for r in pipe.take_punts(2.5)] == [2]
    assert pipe.drop_stats()["setup_queue_stale"] == 0 and pipe.drop_stats()["hold_timeout"] == 1


# ---------------------------------------------------------------- pressure()
def test_pressure_has_the_documented_fields_and_is_json():
    pipe, slow = setup(capacity=100, setup_rate=50.0)
    udp_out(pipe, slow, 1)
    pipe.from_vif("tr-red3", udp_frame(VM3, VM2, 1, 53, src_mac=VM3_MAC), 0.0)
    p = pipe.pressure(0.0)
    assert set(p) == {"entries", "capacity", "held", "held_limit", "unreplied", "evictions", "unreplied_aged",
                      "installs", "entries_installed", "punts_queued", "tokens", "setup_rate", "burst_tokens",
                      "vms", "networks"}
    assert (p["entries"], p["capacity"], p["held"], p["unreplied"], p["installs"], p["entries_installed"],
            p["punts_queued"], p["setup_rate"], p["burst_tokens"]) == (3, 100, 1, 1, 1, 2, 1, 50.0, 256)
    assert p["tokens"] == 255.0
    assert set(p["vms"]) == {"tr-red1", "tr-red3", "tr-blue1", FABRIC_OWNER}
    assert p["vms"]["tr-red3"] == {"entries": 2, "limit": 25, "held": 1, "blocked": False, "refused": 0}
    assert set(p["networks"]) == {"red", "blue"}
    assert set(p["networks"]["red"]) == {"entries", "limit", "blocked", "refused"}
    assert json.loads(json.dumps(p)) == p
