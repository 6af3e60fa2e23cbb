"""Routing between networks by policy: topologies/inter-vn.yaml through the VNC's model into real
pipelines and slow paths, wired back to back (the controller's route exchange and the core's cross-
routing-instance flow pairs together), plus the refusal of overlapping networks."""
from pathlib import Path
from types import SimpleNamespace

import pytest

from controllers.vnc_model import VncError, VncModel
from core_helpers import Pair, tcp_frame
from vrouter.core.actions import Drop, ToVif
from vrouter.core.codec.ipv4 import ip_to_int
from vrouter.core.codec.l4 import TCP_ACK, TCP_PSH, TCP_SYN
from vrouter.core.config import VrouterConfig
from vrouter.core.schema import default_mac
from vrouter.processes.introspect import Introspector
from vrouter.tools import tables

TOPOLOGY = Path(__file__).resolve().parents[2] / "topologies" / "inter-vn.yaml"
RED, BLUE, GREEN = 100, 200, 300
RED1, RED3, GREEN1, GREEN2 = "192.168.1.11", "192.168.1.13", "192.168.3.11", "192.168.3.12"
TAP = {"red1": "vt-t1", "red3": "vt-t3", "blue1": "vt-t4", "green1": "vt-t6", "green2": "vt-t7"}
SYN, SYNACK, ACK = TCP_SYN, TCP_SYN | TCP_ACK, TCP_ACK


def fabric(model=None, mode="proactive"):
    model = model or VncModel(str(TOPOLOGY))
    model.set_flow_mode(mode)
    return Pair({s: VrouterConfig.from_dict(model.config_for(s)) for s in model.servers()})


def frame(vm, src, dst, sport, dport, flags, payload=b""):
    return tcp_frame(src, dst, sport, dport, flags, src_mac=default_mac(vm), payload=payload)


def connect(p, client, csrv, caddr, server, ssrv, saddr, dport=80, sport=40000):
    """A TCP handshake and one exchange of data; the VM interfaces the packets reached."""
    out = []
    out += p.send(csrv, TAP[client], frame(client, caddr, saddr, sport, dport, SYN))
    out += p.send(ssrv, TAP[server], frame(server, saddr, caddr, dport, sport, SYNACK))
    out += p.send(csrv, TAP[client], frame(client, caddr, saddr, sport, dport, ACK | TCP_PSH, b"GET /"))
    out += p.send(ssrv, TAP[server], frame(server, saddr, caddr, dport, sport, ACK | TCP_PSH, b"200 OK"))
    return [a.vif if isinstance(a, ToVif) else a for a in out]


def keys(pipe):
    return sorted((f["vrf"], f["src"], f["dst"], f["role"]) for f in pipe.flows())


@pytest.mark.parametrize("mode,punts", [("proactive", 1), ("reactive", 2)])
def test_green_reaches_red_across_servers_and_the_reply_takes_the_reverse_entry(mode, punts):
    p = fabric(mode=mode)
    assert connect(p, "green2", "srv2", GREEN2, "red3", "srv3", RED3) == [TAP["red3"], TAP["green2"]] * 2
    assert p.punts == {"srv1": 0, "srv2": punts, "srv3": punts, "srv4": 0}
    if mode == "proactive":
        # Each direction is keyed in the network it starts in, at both ends: green2 -> red3 in green,
        # red3 -> green2 in red (the reverse entry, installed before the reply came).
        for srv in ("srv2", "srv3"):
            assert keys(p.pipe[srv]) == [(RED, RED3, GREEN2, "reverse"), (GREEN, GREEN2, RED3, "forward")]
            assert all(f["action"] == "forward" and f["packets"] == 2 for f in p.pipe[srv].flows())


def test_green_reaches_red_on_the_same_server_in_one_slow_path_call():
    p = fabric()
    assert connect(p, "green1", "srv1", GREEN1, "red1", "srv1", RED1) == [TAP["red1"], TAP["green1"]] * 2
    assert p.punts["srv1"] == 1
    assert keys(p.pipe["srv1"]) == [(RED, RED1, GREEN1, "reverse"), (GREEN, GREEN1, RED1, "forward")]


def test_other_ports_are_denied_by_green_and_red_opens_nothing_to_green():
    p = fabric()
    syn22 = frame("green2", GREEN2, RED3, 40000, 22, SYN)
    assert p.send("srv2", TAP["green2"], syn22) == [Drop("policy_deny")]
    assert p.send("srv2", TAP["green2"], syn22) == [Drop("policy_deny")]     # the drop entry, no punt
    assert p.punts["srv2"] == 1 and p.pipe["srv2"].drop_stats()["policy_deny"] == 2
    (entry,) = [f for f in p.pipe["srv2"].flows() if f["role"] == "forward"]
    assert entry["rule"] == 1 and entry["reason"] == "policy_deny"
    # red's own rules decide what red sends: nothing but answers from port 80.
    assert p.send("srv3", TAP["red3"], frame("red3", RED3, GREEN2, 40001, 80, SYN)) == [Drop("policy_deny")]


def test_blue_stays_isolated_from_green_and_red_from_blue():
    p = fabric()
    assert p.send("srv1", TAP["blue1"], frame("blue1", RED1, GREEN1, 40000, 80, SYN)) == [Drop("no_route")]
    names = {n["name"] for n in p.cfg["srv1"].to_dict()["networks"]}
    assert names == {"red", "blue", "green"}
    blue = [r for r in p.cfg["srv1"].routes if r.network == "blue"]
    assert {r.prefix[0] for r in blue} == {ip_to_int(RED1), ip_to_int(RED3)}      # blue's own VMs only


def test_the_vnc_exchanges_routes_with_the_label_of_the_sending_network():
    m = VncModel(str(TOPOLOGY))
    assert m.connections() == {"green": frozenset({"red"}), "red": frozenset({"green"})}
    srv3 = m.config_for("srv3")     # red3 and blue3 live here; green comes with red
    assert [n["name"] for n in srv3["networks"]] == ["blue", "green", "red"]
    green = {r["prefix"]: r["nexthop"] for r in srv3["routes"] if r["network"] == "green"}
    assert green["192.168.1.13/32"] == {"type": "vif", "vif": TAP["red3"]}
    assert green["192.168.1.11/32"]["label"] == GREEN and green["192.168.3.12/32"]["label"] == GREEN
    red = {r["prefix"]: r["nexthop"] for r in srv3["routes"] if r["network"] == "red"}
    assert red["192.168.3.12/32"] == {"type": "tunnel", "peer": "10.0.1.2", "label": RED,
                                      "encap": "mplsoudp", "mac": default_mac("green2")}
    assert m.config_for("srv4")["networks"] == []          # no VM there


def test_a_one_sided_policy_connects_nothing_and_disconnecting_withdraws_the_routes():
    m = VncModel(str(TOPOLOGY))
    change = m.set_policy("red", None)
    assert m.connections() == {}
    assert set(change.servers) == {"srv1", "srv2", "srv3"}
    srv3 = m.config_for("srv3")
    assert [n["name"] for n in srv3["networks"]] == ["blue", "red"]
    assert all(not r["prefix"].startswith("192.168.3.") for r in srv3["routes"])


def test_a_disconnect_at_run_time_turns_the_established_pair_into_drops():
    m = VncModel(str(TOPOLOGY))
    p = fabric(m)
    connect(p, "green1", "srv1", GREEN1, "red1", "srv1", RED1)
    m.set_policy("red", None)
    p.pipe["srv1"].apply_config(VrouterConfig.from_dict(m.config_for("srv1")))
    assert {f["reason"] for f in p.pipe["srv1"].flows()} == {"no_route"}


@pytest.mark.parametrize("policy,message", [
    ({"rules": [{"action": "allow", "network": "red"}]},
     "policies['blue'].rules[0].network: cannot connect networks 'blue' and 'red': their subnets overlap "
     "(192.168.1.0/24 and 192.168.1.0/24)"),
    ({"rules": [{"action": "allow", "network": "green"}]},
     "policies['green'].rules[0].network: cannot connect networks 'blue' and 'red' (both connect to 'green')"),
    ({"rules": [{"action": "allow", "network": "blue"}]}, "a rule names another network, not its own"),
    ({"rules": [{"action": "allow", "network": "pink"}]}, "unknown virtual network 'pink'"),
])
def test_connecting_overlapping_networks_is_refused_in_one_line_and_changes_nothing(policy, message):
    m = VncModel(str(TOPOLOGY))
    if "'green'" in message:        # green names blue too; blue names green: blue and red both meet in green
        m.set_policy("blue", policy)
        policy = {"rules": [{"action": "allow", "network": "red"}, {"action": "allow", "network": "blue"}]}
        net = "green"
    else:
        net = "blue"
        if "red" in str(policy):    # red must name blue for the pair to connect
            m.set_policy("red", {"rules": [{"action": "allow", "network": "green"},
                                           {"action": "allow", "network": "blue"}]})
    before = m.configs(), m.generation
    with pytest.raises(VncError) as err:
        m.set_policy(net, policy)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert (m.configs(), m.generation) == before


def test_rt_dump_and_flow_list_mark_what_crosses_networks():
    p = fabric()
    connect(p, "green2", "srv2", GREEN2, "red3", "srv3", RED3)
    text = tables.format_flows(p.pipe["srv3"].flows())
    assert text.count("Vrf:300->100 (between networks)") == 1 and text.count("Vrf:100->300") == 1
    intro = Introspector(SimpleNamespace(config=p.cfg["srv3"], server="srv3"))
    routes = tables.format_routes(intro.handle({"op": "routes", "vrf": "green"})["result"])
    assert "192.168.1.13/32       32    P       -       vif vt-t3  (network red, by policy)" in routes
    assert "192.168.3.12/32       32    LP      300     mplsoudp 10.0.1.2 label 300\n" in routes
