"""Flow table lifecycle: capacity, ageing, RST teardown, lost decisions, run-time config changes."""
from core_helpers import VM1, VM2, VM2_MAC, VM3, VM3_MAC, Pair, server, server_dict, tcp_frame, udp_frame
from vrouter.core.actions import Drop, ToTunnel, ToVif
from vrouter.core.codec.l4 import TCP_ACK, TCP_RST, TCP_SYN
from vrouter.core.config import VrouterConfig
from vrouter.core.pipeline import Pipeline
from vrouter.core.slowpath import SlowPath


def setup(**kw):
    cfg = server("srv1", **kw)
    return Pipeline(cfg), SlowPath(cfg)


def open_udp(pipe, slow, sport, now=0.0, dst=VM3):
    out = pipe.from_vif("tr-red1", udp_frame(VM1, dst, sport, 9), now)
    for request in pipe.take_punts(now):
        out += pipe.install(slow.decide(request, now), now)
    return out


def reply_udp(pipe, sport, now=0.0):
    """VM3 answers VM1's flow from port ``sport``: the pair is replied (both entries saw a packet)."""
    (a,) = pipe.from_vif("tr-red3", udp_frame(VM3, VM1, 9, sport, src_mac=VM3_MAC), now)
    assert isinstance(a, ToVif) and a.vif == "tr-red1"


def test_full_table_drops_new_flows_and_keeps_established_ones():
    pipe, slow = setup(flow={"capacity": 4, "vm_flow_limit": 8, "network_flow_limit": 8})
    assert isinstance(open_udp(pipe, slow, 1)[0], ToVif)
    assert isinstance(open_udp(pipe, slow, 2)[0], ToVif)
    reply_udp(pipe, 1)
    reply_udp(pipe, 2)
    assert len(pipe.flows()) == 4
    assert open_udp(pipe, slow, 3) == [Drop("flow_table_full")]
    assert open_udp(pipe, slow, 4) == [Drop("flow_table_full")]
    assert pipe.drop_stats()["flow_table_full"] == 2
    # Established flows still forward in both directions, nothing was evicted.
    assert isinstance(pipe.from_vif("tr-red1", udp_frame(VM1, VM3, 1, 9), 1.0)[0], ToVif)
    back = pipe.from_vif("tr-red3", udp_frame(VM3, VM1, 9, 2, src_mac=VM3_MAC), 1.0)
    assert isinstance(back[0], ToVif) and back[0].vif == "tr-red1"
    assert len(pipe.flows()) == 4


def test_reverse_that_does_not_fit_is_counted_and_forward_still_works():
    pipe, slow = setup(flow={"capacity": 3, "vm_flow_limit": 4, "network_flow_limit": 4})
    open_udp(pipe, slow, 1)
    reply_udp(pipe, 1)                                           # replied: never evicted for room
    assert isinstance(open_udp(pipe, slow, 2)[0], ToVif)        # forward fits, reverse does not
    assert pipe.stats()["reverse_not_installed"] == 1
    assert len(pipe.flows()) == 3


def test_idle_ageing_removes_pairs_only_when_both_directions_are_idle():
    pipe, slow = setup(flow={"idle_timeout": 180})
    open_udp(pipe, slow, 1, now=0.0)
    reply_udp(pipe, 1, now=0.0)
    assert pipe.expire(100.0) == 0
    # Keep only the forward direction busy: the pair keeps its reverse entry too.
    pipe.from_vif("tr-red1", udp_frame(VM1, VM3, 1, 9), 150.0)
    assert pipe.expire(250.0) == 0
    assert pipe.expire(330.1) == 2
    assert pipe.flows() == [] and pipe.stats()["aged"] == 2
    # After ageing the flow is new again: one more slow-path call.
    assert pipe.from_vif("tr-red1", udp_frame(VM1, VM3, 1, 9), 400.0) == [] and pipe.punts_waiting() == 1


def test_default_idle_timeout_is_180_seconds():
    pipe, slow = setup()
    open_udp(pipe, slow, 1, now=0.0)
    reply_udp(pipe, 1, now=0.0)
    assert pipe.expire(179.9) == 0 and pipe.expire(180.1) == 2


def test_rst_tears_down_both_directions():
    p = Pair()
    p.send("srv1", "tr-red1", tcp_frame(VM1, VM2, 40000, 80, TCP_SYN))
    p.send("srv2", "tr-red2", tcp_frame(VM2, VM1, 80, 40000, TCP_SYN | TCP_ACK, src_mac=VM2_MAC))
    out = p.send("srv2", "tr-red2", tcp_frame(VM2, VM1, 80, 40000, TCP_RST, src_mac=VM2_MAC))
    assert [a.vif for a in out] == ["tr-red1"]                    # the RST itself is delivered
    for pipe in p.pipe.values():                                   # both directions closed at once
        assert {f["tcp_state"] for f in pipe.flows()} == {"closed"}
        assert pipe.stats()["tcp_teardowns"] == 1
        assert pipe.expire(1.0) == 0                              # lingering for late packets
        assert pipe.expire(10.0) == 2 and pipe.flows() == []


def test_decision_that_never_arrives_releases_the_hold_entry():
    pipe, _ = setup(flow={"hold_timeout": 2.0})
    assert pipe.from_vif("tr-red1", udp_frame(VM1, VM3, 1, 9), 0.0) == []
    assert len(pipe.take_punts(0.0)) == 1
    assert pipe.from_vif("tr-red1", udp_frame(VM1, VM3, 1, 9), 0.5) == []
    assert pipe.expire(1.0) == 0
    assert pipe.expire(2.5) == 1
    assert pipe.drop_stats()["hold_timeout"] == 2
    assert pipe.from_vif("tr-red1", udp_frame(VM1, VM3, 1, 9), 3.0) == []
    assert len(pipe.take_punts(3.0)) == 1


def test_apply_config_reevaluates_existing_flows():
    pipe, slow = setup()
    open_udp(pipe, slow, 1)
    assert isinstance(pipe.from_vif("tr-red1", udp_frame(VM1, VM3, 1, 9), 1.0)[0], ToVif)
    deny = server_dict("srv1", policies=[{"network": "red", "rules": [{"action": "deny", "dst": VM3 + "/32"}]}])
    pipe.apply_config(VrouterConfig.from_dict(deny))
    assert pipe.from_vif("tr-red1", udp_frame(VM1, VM3, 1, 9), 2.0) == [Drop("policy_deny")]
    # The reverse direction is not covered by the rule and keeps forwarding.
    back = pipe.from_vif("tr-red3", udp_frame(VM3, VM1, 9, 1, src_mac=VM3_MAC), 2.0)
    assert isinstance(back[0], ToVif)
    # VM3 moves to srv2: the flow now goes into the tunnel without a new slow-path call.
    moved = server_dict("srv1")
    moved["vifs"] = [v for v in moved["vifs"] if v["name"] != "tr-red3"]
    moved["routes"].append({"network": "red", "prefix": VM3 + "/32",
                            "nexthop": {"type": "tunnel", "peer": "10.0.2.1", "label": 100}})
    pipe.apply_config(VrouterConfig.from_dict(moved))
    (a,) = pipe.from_vif("tr-red1", udp_frame(VM1, VM3, 1, 9), 3.0)
    assert isinstance(a, ToTunnel) and a.peer == "10.0.2.1"
    assert pipe.stats()["punts"] == 1


def test_removed_network_drops_its_flows():
    pipe, slow = setup()
    open_udp(pipe, slow, 1)
    d = server_dict("srv1")
    d["networks"] = [n for n in d["networks"] if n["name"] != "red"]
    d["vifs"] = [v for v in d["vifs"] if v["network"] != "red"]
    d["routes"] = [r for r in d["routes"] if r["network"] != "red"]
    pipe.apply_config(VrouterConfig.from_dict(d))
    assert pipe.flows() == []
    assert pipe.from_vif("tr-red1", udp_frame(VM1, VM3, 1, 9), 1.0) == [Drop("invalid_vif")]


def test_flows_introspection_shows_pairs_and_counters():
    pipe, slow = setup()
    open_udp(pipe, slow, 1)
    pipe.from_vif("tr-red1", udp_frame(VM1, VM3, 1, 9, payload=b"x" * 100), 1.0)
    flows = {f["role"]: f for f in pipe.flows()}
    fwd, rev = flows["forward"], flows["reverse"]
    assert (fwd["src"], fwd["dst"], fwd["proto"], fwd["sport"], fwd["dport"]) == (VM1, VM3, "udp", 1, 9)
    assert fwd["reverse_index"] == rev["index"] and rev["reverse_index"] == fwd["index"]
    assert fwd["packets"] == 2 and fwd["bytes"] == 29 + 128 and rev["packets"] == 0
    assert fwd["nexthop"] == {"type": "vif", "vif": "tr-red3"}
