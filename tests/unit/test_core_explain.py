"""core/explain.py: what `testbed trace` says a vrouter does with a packet, checked against what the
pipeline then really does with that packet, and that explaining changes nothing."""
from core_helpers import SRV1, SRV2, VM1, VM2, VM3, VM3_MAC, Pair, icmp_frame, tcp_frame, udp_frame
from test_core_ecmp import SVC, service_pair
from test_core_intervn import GREEN, GREEN2, RED, RED3, TAP, fabric, frame
from test_core_nat import FIP, INET, SNAT, Vrouter, nat_config
from vrouter.core import explain
from vrouter.core.actions import Drop, ToTunnel, ToVif
from vrouter.core.codec.ipv4 import ip_to_int
from vrouter.core.codec.l4 import TCP_ACK, TCP_SYN
from vrouter.core.paths import Paths
from vrouter.core.pipeline import Pipeline

DENY_80 = [{"network": "red", "rules": [{"action": "allow", "protocol": "icmp"},
                                         {"action": "deny", "protocol": "tcp", "dst": VM2 + "/32", "dst_port": 80}]}]


def _state(pipe):
    return pipe.flows(1.0), pipe.stats(), pipe.drop_stats(), pipe.paths.describe(1.0) if pipe.paths else None


def _kinds(expl):
    return {s["kind"]: s["fields"] for s in expl["steps"]}


def _vif(pipe, vif, proto, src, dst, sport, dport):
    return explain.from_vif(pipe, vif, proto, ip_to_int(src), ip_to_int(dst), sport, dport)



def test_a_miss_is_explained_as_the_slow_path_decides_and_the_packet_then_goes_that_way():
    pair = Pair()
    p1 = pair.pipe["srv1"]
    before = _state(p1)
    e = _vif(p1, "tr-red1", 6, VM1, VM2, 40000, 80)
    assert _state(p1) == before                                 # explaining touched nothing
    k = _kinds(e)
    assert k["vif"]["network"] == "red" and k["vrf"]["vrf"] == 100
    assert k["flow"]["hit"] is False
    assert k["route"]["prefix"] == VM2 + "/32" and k["route"]["nexthop"]["type"] == "tunnel"
    assert k["policy"]["rule"] == -1 and k["policy"]["rule_text"] == "default allow"
    assert k["reverse"]["mode"] == "proactive" and k["reverse"]["action"] == "forward"
    out = e["outcome"]
    assert out["action"] == "tunnel" and out["peer"] == SRV2 and out["label"] == 100
    # The real packet: the punt, the agent's decision, the released packet on the wire.
    sent = []
    p1.from_vif("tr-red1", tcp_frame(VM1, VM2, 40000, 80, TCP_SYN), 0.0)
    for request in p1.take_punts(0.0):
        sent += p1.install(pair.slow["srv1"].decide(request, 0.0), 0.0)
    (t,) = sent
    assert isinstance(t, ToTunnel) and t.peer == out["peer"] and t.sport == out["outer_sport"]
    # Now a hit, at the index `flow -l` shows, with the reverse entry beside it.
    h = _kinds(_vif(p1, "tr-red1", 6, VM1, VM2, 40000, 80))["flow"]
    listed = {(f["src"], f["dst"], f["sport"], f["dport"]): f for f in p1.flows(0.0)}
    assert h["hit"] and h["role"] == "forward" and h["index"] == listed[(VM1, VM2, 40000, 80)]["index"]
    assert h["reverse_index"] == listed[(VM2, VM1, 80, 40000)]["index"]


def test_the_destination_and_the_reply_direction():
    pair = Pair()
    assert [type(a) for a in pair.send("srv1", "tr-red1", udp_frame(VM1, VM2, 5000, 53))] == [ToVif]
    p1, p2 = pair.pipe["srv1"], pair.pipe["srv2"]
    before = _state(p2)
    d = explain.from_fabric(p2, SRV1, "mplsoudp", 100, 17, ip_to_int(VM1), ip_to_int(VM2), 5000, 53)
    assert _state(p2) == before
    assert _kinds(d)["label"]["network"] == "red" and _kinds(d)["flow"]["hit"] is True
    assert d["outcome"] == {"action": "deliver", "place": "srv2", "vif": "tr-red2"}
    # The reply from red2: srv2 installed the proactive reverse entry when the request arrived...
    r = _vif(p2, "tr-red2", 17, VM2, VM1, 53, 5000)
    assert _kinds(r)["flow"]["role"] == "reverse" and r["outcome"]["action"] == "tunnel"
    # ... and so did srv1 when it set the flow up: the reply hits there too, without a punt.
    back = explain.from_fabric(p1, SRV2, "mplsoudp", 100, 17, ip_to_int(VM2), ip_to_int(VM1), 53, 5000)
    assert _kinds(back)["flow"]["role"] == "reverse" and back["outcome"]["vif"] == "tr-red1"
    punts = dict(pair.punts)
    assert [type(a) for a in pair.send("srv2", "tr-red2", udp_frame(VM2, VM1, 53, 5000, src_mac="02:00:00:00:01:0c"))] \
        == [ToVif] and pair.punts == punts


def test_reactive_mode_says_the_reply_will_miss():
    pair = Pair(mode="reactive")
    k = _kinds(_vif(pair.pipe["srv1"], "tr-red1", 17, VM1, VM2, 5000, 53))
    assert k["reverse"]["mode"] == "reactive" and k["reverse"]["action"] is None


def test_a_policy_drop_names_the_rule_and_the_real_drop_is_counted_so():
    pair = Pair(policies=DENY_80)
    p1 = pair.pipe["srv1"]
    e = _vif(p1, "tr-red1", 6, VM1, VM2, 40000, 80)
    k = _kinds(e)
    assert k["policy"] == {"network": "red", "rule": 1, "rule_text": f"deny tcp 0.0.0.0/0 -> {VM2}/32 dst_port 80",
                           "verdict": "deny"}
    assert e["outcome"]["action"] == "drop" and e["outcome"]["reason"] == "policy_deny"
    assert e["outcome"]["rule"] == 1
    (d,) = pair.send("srv1", "tr-red1", tcp_frame(VM1, VM2, 40000, 80, TCP_SYN))
    assert d == Drop("policy_deny") and p1.drop_stats()["policy_deny"] == 1
    # The drop entry is now a hit, with the same rule.
    h = _vif(p1, "tr-red1", 6, VM1, VM2, 40000, 80)
    assert _kinds(h)["flow"]["action"] == "drop" and h["outcome"]["reason"] == "policy_deny"
    assert h["outcome"]["rule_text"] == k["policy"]["rule_text"]
    # Another port takes the default.
    assert _kinds(_vif(p1, "tr-red1", 6, VM1, VM2, 40000, 81))["policy"]["rule_text"] == "default allow"


def test_cross_network_stops_in_the_own_routing_instance():
    pair = Pair()
    p1 = pair.pipe["srv1"]
    e = _vif(p1, "tr-blue1", 6, VM1, VM3, 40000, 80)      # blue has no VM3: only red does
    k = _kinds(e)
    assert k["vrf"]["network"] == "blue" and k["route"]["prefix"] is None
    assert e["outcome"]["reason"] == "no_route" and "policy" not in k
    (d,) = pair.send("srv1", "tr-blue1", tcp_frame(VM1, VM3, 40000, 80, TCP_SYN, src_mac="02:00:00:00:02:0b"))
    assert d == Drop("no_route") and p1.drop_stats()["no_route"] == 1


def test_local_answers_and_bad_sources():
    p1 = Pair().pipe["srv1"]
    g = _vif(p1, "tr-red1", 1, VM1, "192.168.1.1", 7, 7)
    assert g["outcome"]["action"] == "answer"
    assert [type(a) for a in p1.from_vif("tr-red1", icmp_frame(VM1, "192.168.1.1"), 0.0)] == [ToVif]
    assert _vif(p1, "tr-red1", 6, VM3, VM2, 1, 2)["outcome"]["reason"] == "spoofed_source"
    assert _vif(p1, "nope", 6, VM1, VM2, 1, 2)["outcome"]["reason"] == "invalid_vif"
    assert explain.from_fabric(p1, "10.9.9.9", "mplsoudp", 100, 6, 1, 2, 3, 4)["outcome"]["reason"] == "invalid_source"
    assert explain.from_fabric(p1, SRV2, "mplsoudp", 555, 6, 1, 2, 3, 4)["outcome"]["reason"] == "unknown_label"
    assert isinstance(p1.from_vif("tr-red1", tcp_frame(VM3, VM2, 1, 2, TCP_ACK), 0.0)[0], Drop)


def test_with_path_slots_the_predicted_port_is_the_slot_port_the_flow_really_takes():
    pair = Pair()
    p1 = pair.pipe["srv1"] = Pipeline(pair.cfg["srv1"], Paths(seed=5))
    first = _vif(p1, "tr-red1", 17, VM1, VM2, 1000, 53)["outcome"]
    assert first["outer_sport"] is None and "no path slots" in first["note"]   # ports drawn at the first flow
    pair.send("srv1", "tr-red1", udp_frame(VM1, VM2, 1000, 53))
    for sport in range(2000, 2010):
        out = _vif(p1, "tr-red1", 17, VM1, VM2, sport, 53)["outcome"]
        p1.from_vif("tr-red1", udp_frame(VM1, VM2, sport, 53), 0.0)
        (request,) = p1.take_punts(0.0)
        (t,) = p1.install(pair.slow["srv1"].decide(request, 0.0), 0.0)
        assert t.sport == out["outer_sport"] and out["slot"] is not None


# ---------------------------------------------------------------- the three ways decide branches
def _installed(pipe, vrf, src, dst, sport, dport):
    return next(f for f in pipe.flows(0.0) if (f["vrf"], f["src"], f["dst"], f["sport"], f["dport"]) ==
                (vrf, src, dst, sport, dport))


def test_between_networks_the_leak_each_directions_rule_and_the_reverse_instance_are_what_is_installed():
    p = fabric()
    p2 = p.pipe["srv2"]
    before = _state(p2)
    e = _vif(p2, TAP["green2"], 6, GREEN2, RED3, 40000, 80)
    assert _state(p2) == before
    k = _kinds(e)
    assert k["route"]["leaked_from"] == "red" and k["route"]["nexthop"]["label"] == GREEN
    assert k["policy"] == {"network": "green", "rule": 0, "rule_text": "allow tcp with network red dst_port 80",
                           "verdict": "allow"}
    rev = k["reverse"]
    assert (rev["vrf"], rev["network"], rev["rule"], rev["action"]) == (RED, "red", 0, "forward")
    assert rev["rule_text"] == "allow tcp with network green src_port 80" and rev["route"]["leaked_from"] == "green"
    (a,) = p.send("srv2", TAP["green2"], frame("green2", GREEN2, RED3, 40000, 80, TCP_SYN))
    assert isinstance(a, ToVif) and a.vif == TAP["red3"]
    f = _installed(p2, GREEN, GREEN2, RED3, 40000, 80)
    r = _installed(p2, RED, RED3, GREEN2, 80, 40000)        # keyed in red, as the trace said
    assert (f["rule"], r["rule"], r["role"]) == (k["policy"]["rule"], rev["rule"], "reverse")
    assert e["outcome"]["peer"] == f["nexthop"]["peer"] and e["outcome"]["outer_sport"] == f["entropy_sport"]
    # Port 22: green's own rule 1 denies it, and that drop entry is what the real packet makes.
    d = _vif(p2, TAP["green2"], 6, GREEN2, RED3, 40000, 22)
    assert d["outcome"]["reason"] == "policy_deny" and d["outcome"]["rule"] == 1
    assert p.send("srv2", TAP["green2"], frame("green2", GREEN2, RED3, 40000, 22, TCP_SYN)) == [Drop("policy_deny")]
    assert _installed(p2, GREEN, GREEN2, RED3, 40000, 22)["rule"] == 1


def test_a_service_flow_names_the_member_the_pipeline_then_installs_and_the_pin_of_its_reverse():
    p = service_pair()
    p1 = p.pipe["srv1"]
    members = {}
    for sport in range(40000, 40012):
        before = _state(p1)
        e = _vif(p1, "tr-red1", 6, VM1, SVC, sport, 80)
        assert _state(p1) == before
        s, rev = _kinds(e)["service"], _kinds(e)["reverse"]
        assert s["hashed_over"] == ["red3", "red2"] and s["member"] == max(s["weights"], key=s["weights"].get)
        (a,) = p.send("srv1", "tr-red1", tcp_frame(VM1, SVC, sport, 80, TCP_SYN))
        f, r = _installed(p1, 100, VM1, SVC, sport, 80), _installed(p1, 100, SVC, VM1, 80, sport)
        assert f["member"] == s["member"] and (r["member"], r["pin"]) == (s["member"], rev["pin"])
        assert a.vif == {"red3": "tr-red3", "red2": "tr-red2"}[s["member"]]
        members[s["member"]] = sport
    assert set(members) == {"red2", "red3"}                      # the test saw both members chosen
    # The local member's reply from the service address hits its pinned reverse entry.
    back = _vif(p1, "tr-red3", 6, SVC, VM1, 80, members["red3"])
    assert _kinds(back)["flow"]["pin"] == "tr-red3" and back["outcome"] == {"action": "deliver", "place": "srv1",
                                                                             "vif": "tr-red1"}
    # From the fabric, srv2 hashes over its own member only (the sender chose it).
    d = explain.from_fabric(p.pipe["srv2"], SRV1, "mplsoudp", 100, 6, ip_to_int(VM1), ip_to_int(SVC), 1, 80)
    assert _kinds(d)["service"]["hashed_over"] == ["red2"] and d["outcome"]["vif"] == "tr-red2"


def test_nat_shows_both_translations_and_takes_no_port_the_pipeline_takes_at_install():
    v = Vrouter(nat_config())
    before = _state(v.pipe), v.pipe.nat.state()
    fl = _vif(v.pipe, "tr-red1", 6, VM1, INET, 40000, 80)
    sn = _vif(v.pipe, "tr-red3", 6, VM3, INET, 40000, 80)
    assert (_state(v.pipe), v.pipe.nat.state()) == before            # no SNAT port taken
    nf, ns = _kinds(fl)["nat"], _kinds(sn)["nat"]
    assert (nf["method"], nf["address"], ns["method"], ns["address"]) == ("floating", FIP, "snat", SNAT)
    assert fl["outcome"]["action"] == sn["outcome"]["action"] == "external" and "without a tunnel" in nf["out"]
    assert ns["forward"]["sport"] == ns["port"] == explain.AT_INSTALL
    assert _kinds(sn)["reverse"]["vrf"] == 0 and _kinds(sn)["reverse"]["policy_network"] == "red"
    v.vm("tr-red1", tcp_frame(VM1, INET, 40000, 80, TCP_SYN))
    v.vm("tr-red3", tcp_frame(VM3, INET, 40000, 80, TCP_SYN, src_mac=VM3_MAC))
    for vif_ip, n, src in ((VM1, nf, FIP), (VM3, ns, SNAT)):
        f = _installed(v.pipe, 100, vif_ip, INET, 40000, 80)
        r = _installed(v.pipe, 0, INET, src, 80, f["nat"]["sport"])
        assert f["action"] == "nat" and f["nat"]["kind"] == n["method"]
        want = {**n["forward"], "sport": f["nat"]["sport"]} if n["port"] else n["forward"]
        assert {k: f["nat"][k] for k in want} == want
        assert {k: r["nat"][k] for k in n["reverse"]} == n["reverse"]
    assert _installed(v.pipe, 100, VM1, INET, 40000, 80)["nat"]["sport"] == 40000     # 1:1 keeps the port
