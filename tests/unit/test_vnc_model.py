"""The VNC model: per-server vrouter configs, run-time changes and their validation."""
import copy
import re

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from controllers.vnc_model import VncError, VncModel, default_mac
from vrouter.core.config import VrouterConfig


def overlapping_topology():
    """Two networks with the same subnet on three servers (srv3 hosts no VM)."""
    return {
        "name": "unit",
        "servers": [{"name": "srv1", "address": "10.0.1.1"},
                    {"name": "srv2", "address": "10.0.2.1"},
                    {"name": "srv3", "address": "10.0.3.1"}],
        "switches": [{"name": "leaf1", "role": "leaf"}],
        "encapsulation": "mplsoudp",
        "virtual_networks": [
            {"name": "red", "id": 100, "subnets": ["192.168.1.0/24"]},
            {"name": "blue", "id": 200, "subnets": ["192.168.1.0/24"], "gateway": "192.168.1.254"},
        ],
        "vms": [
            {"name": "red1", "network": "red", "server": "srv1", "address": "192.168.1.11"},
            {"name": "red2", "network": "red", "server": "srv2", "address": "192.168.1.12"},
            {"name": "blue1", "network": "blue", "server": "srv1", "address": "192.168.1.11",
             "mac": "02:00:00:00:0b:01"},
        ],
        "policies": [{"network": "red", "default": "allow", "rules": [
            {"action": "deny", "protocol": "tcp", "src": "192.168.1.0/24",
             "dst": "192.168.1.12/32", "dst_port": 22}]}],
    }


def routes_by(config):
    return {(r["network"], r["prefix"]): r["nexthop"] for r in config["routes"]}


def test_config_of_a_server_with_two_overlapping_networks():
    m = VncModel(overlapping_topology())
    c = m.config_for("srv1")
    assert c["server"] == "srv1" and c["underlay_ip"] == "10.0.1.1"
    assert [n["name"] for n in c["networks"]] == ["blue", "red"]
    assert {n["name"]: n["gateway"] for n in c["networks"]} == {"red": "192.168.1.1",
                                                                "blue": "192.168.1.254"}
    vifs = {v["network"]: v for v in c["vifs"]}
    assert vifs["red"]["ip"] == vifs["blue"]["ip"] == "192.168.1.11"
    assert vifs["red"]["name"] != vifs["blue"]["name"]
    assert vifs["blue"]["mac"] == "02:00:00:00:0b:01"
    assert vifs["red"]["mac"] == default_mac("red1")
    routes = routes_by(c)
    assert routes[("red", "192.168.1.11/32")] == {"type": "vif", "vif": vifs["red"]["name"]}
    assert routes[("blue", "192.168.1.11/32")] == {"type": "vif", "vif": vifs["blue"]["name"]}
    assert routes[("red", "192.168.1.12/32")] == {
        "type": "tunnel", "peer": "10.0.2.1", "label": 100, "encap": "mplsoudp",
        "mac": default_mac("red2")}
    assert ("blue", "192.168.1.12/32") not in routes
    assert c["peers"] == ["10.0.2.1", "10.0.3.1"]
    pol = {p["network"]: p for p in c["policies"]}
    assert pol["red"]["rules"] == [{"action": "deny", "protocol": "tcp", "src": "192.168.1.0/24",
                                    "dst": "192.168.1.12/32", "src_port": None,
                                    "dst_port": "22"}]
    assert pol["blue"] == {"network": "blue", "default": "allow", "rules": []}
    assert c["flow"]["mode"] == "proactive"


def test_server_without_vms_only_knows_its_peers():
    c = VncModel(overlapping_topology()).config_for("srv3")
    assert c["networks"] == c["vifs"] == c["routes"] == c["policies"] == []
    assert c["peers"] == ["10.0.1.1", "10.0.2.1"]


def test_every_config_is_accepted_by_the_vrouter():
    m = VncModel(overlapping_topology())
    for server, config in m.configs().items():
        parsed = VrouterConfig.from_dict(config)
        assert parsed.server == server


def test_vxlan_routes_carry_the_vni():
    topo = overlapping_topology()
    topo["encapsulation"] = "vxlan"
    nh = routes_by(VncModel(topo).config_for("srv2"))[("red", "192.168.1.11/32")]
    assert nh["encap"] == "vxlan" and nh["label"] == 100


def test_default_macs_are_deterministic_locally_administered_unicast():
    mac = default_mac("red1")
    assert mac == default_mac("red1") != default_mac("red2")
    first = int(mac[:2], 16)
    assert first & 0x02 and not first & 0x01


def test_tap_names_are_short_unique_and_use_the_prefix():
    m = VncModel(overlapping_topology(), prefix="tb42")
    taps = [v["tap"] for v in m.vms()]
    assert len(set(taps)) == len(taps)
    assert all(re.fullmatch(r"tb42-t\d+", t) and len(t) <= 15 for t in taps)
    other = VncModel(overlapping_topology(), prefix="tb4")
    assert not set(taps) & {v["tap"] for v in other.vms()}


def test_tap_indices_are_not_reused_after_removal():
    m = VncModel(overlapping_topology())
    removed = m.vm("red2")["tap"]
    m.remove_vm("red2")
    m.add_vm("red9", "red", "srv2", "192.168.1.12")
    assert m.vm("red9")["tap"] != removed


@pytest.mark.parametrize("prefix", ["", "9vt", "toolongprefix", "v-t", "VT", None])
def test_bad_prefix_is_rejected(prefix):
    with pytest.raises(VncError, match="prefix"):
        VncModel(overlapping_topology(), prefix=prefix)


def test_add_vm_bumps_generation_and_names_the_servers_it_touches():
    m = VncModel(overlapping_topology())
    g = m.generation
    change = m.add_vm("blue2", "blue", "srv2", "192.168.1.12")
    assert change.generation == g + 1 == m.generation
    assert change.servers == ("srv1", "srv2")  # srv1 hosts blue1, srv2 hosts the new VM
    assert routes_by(m.config_for("srv1"))[("blue", "192.168.1.12/32")]["peer"] == "10.0.2.1"
    assert m.changed_at("srv3") < m.generation == m.changed_at("srv1")


def test_add_vm_on_a_new_server_brings_the_network_there():
    m = VncModel(overlapping_topology())
    change = m.add_vm("red3", "red", "srv3", "192.168.1.13")
    assert change.servers == ("srv1", "srv2", "srv3")
    c = m.config_for("srv3")
    assert [n["name"] for n in c["networks"]] == ["red"]
    assert len(c["routes"]) == 3


def test_remove_vm_withdraws_its_routes_everywhere():
    m = VncModel(overlapping_topology())
    change = m.remove_vm("red2")
    assert change.servers == ("srv1", "srv2")
    assert ("red", "192.168.1.12/32") not in routes_by(m.config_for("srv1"))
    assert m.config_for("srv2")["networks"] == []


def test_set_policy_touches_only_servers_with_that_network():
    m = VncModel(overlapping_topology())
    change = m.set_policy("blue", {"default": "deny", "rules": [
        {"action": "allow", "protocol": "icmp"}]})
    assert change.servers == ("srv1",)
    pol = {p["network"]: p for p in m.config_for("srv1")["policies"]}["blue"]
    assert pol["default"] == "deny" and pol["rules"][0]["protocol"] == "icmp"
    m.set_policy("blue", None)
    pol = {p["network"]: p for p in m.config_for("srv1")["policies"]}["blue"]
    assert pol == {"network": "blue", "default": "allow", "rules": []}


def test_set_flow_mode_reaches_every_server():
    m = VncModel(overlapping_topology())
    change = m.set_flow_mode("reactive")
    assert change.servers == ("srv1", "srv2", "srv3")
    assert all(c["flow"]["mode"] == "reactive" for c in m.configs().values())
    assert m.set_flow_mode("reactive").servers == ()


@pytest.mark.parametrize("args, message", [
    (("x1", "green", "srv1", "192.168.1.20"), "unknown virtual network 'green'"),
    (("x1", "red", "srv9", "192.168.1.20"), "unknown server 'srv9'"),
    (("x1", "red", "srv1", "10.9.9.9"), "outside the subnets of network 'red'"),
    (("x1", "red", "srv3", "192.168.1.12"), "already used by VM 'red2'"),
    (("red1", "red", "srv3", "192.168.1.20"), "duplicate name 'red1' (already used by VM 'red1')"),
    (("srv1", "red", "srv3", "192.168.1.20"), "duplicate name 'srv1' (already used by server 'srv1')"),
    (("x1", "red", "srv1", "192.168.1.1"), "gateway"),
    (("x1", "red", "srv1", "192.168.1.255"), "broadcast"),
    (("x1", "red", "srv1", "not-an-ip"), "not an IPv4 address"),
    (("x1", "red", "srv1", "192.168.1.20", "01:00:00:00:00:01"), "is a multicast MAC address"),
    (("x1", "red", "srv1", "192.168.1.20", default_mac("red2")), "MAC"),
])
def test_bad_add_vm_is_rejected_and_changes_nothing(args, message):
    m = VncModel(overlapping_topology())
    before, generation = m.configs(), m.generation
    with pytest.raises(VncError, match=re.escape(message)) as err:
        m.add_vm(*args)
    assert "\n" not in str(err.value)
    assert m.configs() == before and m.generation == generation


def test_same_address_in_another_network_is_fine():
    m = VncModel(overlapping_topology())
    m.add_vm("blue2", "blue", "srv3", "192.168.1.12")
    assert m.vm("blue2")["address"] == m.vm("red2")["address"]


@pytest.mark.parametrize("call, message", [
    (lambda m: m.remove_vm("nobody"), "unknown VM 'nobody'"),
    (lambda m: m.set_flow_mode("eager"), "flow.mode: 'eager' is not a flow mode"),
    (lambda m: m.set_policy("green", None), "unknown virtual network"),
    (lambda m: m.set_policy("red", {"rules": [{"action": "drop"}]}),
     "'drop' is not an action (expected allow or deny)"),
    (lambda m: m.set_policy("red", {"default": "maybe"}), "'maybe' is not a policy default (expected allow or deny)"),
    (lambda m: m.set_policy("red", {"rules": [{"action": "deny", "dst_port": 22}]}),
     "ports need protocol tcp or udp"),
    (lambda m: m.set_policy("red", {"rules": [{"action": "deny", "protocol": "tcp",
                                               "dst_port": "70000"}]}), "not a port"),
    (lambda m: m.set_policy("red", {"rules": [{"action": "deny", "src": "x"}]}),
     "'x' is not an IPv4 network in CIDR form"),
    (lambda m: m.set_policy("red", {"rules": [{"action": "deny", "colour": 1}]}),
     "unknown key"),
    (lambda m: m.set_flow_limit("vm", "nobody", 10), "unknown VM 'nobody'"),
    (lambda m: m.set_flow_limit("network", "green", 10), "unknown virtual network 'green'"),
    (lambda m: m.set_flow_limit("vm", "red1", 0), "vms['red1'].flow_limit: expected a flow-entry limit in 1.."),
    (lambda m: m.set_flow_limit("network", "red", "10"), "virtual_networks['red'].flow_limit: expected"),
    (lambda m: m.set_flow_limit("default-vm", None, True), "flow.vm_flow_limit: expected a flow-entry limit"),
    (lambda m: m.set_flow_limit("vif", "red1", 10),
     "flow limit target 'vif' is not one of vm, network, default-vm, default-network"),
])
def test_bad_changes_are_rejected(call, message):
    m = VncModel(overlapping_topology())
    before, generation = m.configs(), m.generation
    with pytest.raises(VncError, match=re.escape(message)):
        call(m)
    assert m.configs() == before and m.generation == generation


def test_flow_limits_reach_the_configs_of_the_servers_they_touch():
    topo = overlapping_topology()
    topo["flow"] = {"capacity": 1000, "vm_flow_limit": 100}
    topo["vms"][0]["flow_limit"] = 40
    topo["virtual_networks"][1]["flow_limit"] = 300
    m = VncModel(topo)
    c1 = m.config_for("srv1")
    assert c1["flow"]["capacity"] == 1000 and c1["flow"]["vm_flow_limit"] == 100
    assert {v["network"]: v.get("flow_limit") for v in c1["vifs"]} == {"red": 40, "blue": None}
    assert {n["name"]: n.get("flow_limit") for n in c1["networks"]} == {"red": None, "blue": 300}
    cfg = VrouterConfig.from_dict(c1)
    assert {v.network: v.flow_limit for v in cfg.vifs} == {"red": 40, "blue": None}
    assert cfg.network("blue").flow_limit == 300 and cfg.flow.vm_flow_limit == 100
    assert cfg.flow.network_flow_limit == 500                 # not given: capacity // 2
    # A VM's limit changes only its server; a network's the servers it is on; a default all.
    assert m.set_flow_limit("vm", "red2", 7).servers == ("srv2",)
    assert m.config_for("srv2")["vifs"][0]["flow_limit"] == 7
    assert m.set_flow_limit("network", "red", 60).servers == ("srv1", "srv2")
    assert m.set_flow_limit("network", "red", 60).servers == ()
    assert m.set_flow_limit("default-network", None, 200).servers == ("srv1", "srv2", "srv3")
    assert m.set_flow_limit("vm", "red1", None).servers == ("srv1",)
    assert "flow_limit" not in m.config_for("srv1")["vifs"][1]
    assert m.set_flow_limit("default-vm", None, None).servers == ("srv1", "srv2", "srv3")
    assert "vm_flow_limit" not in m.config_for("srv3")["flow"]
    assert m.set_flow_limit("network", "blue", None).servers == ("srv1",)
    assert "flow_limit" not in m.config_for("srv1")["networks"][0]


def test_state_round_trip_rebuilds_the_same_controller():
    a = VncModel(overlapping_topology())
    a.add_vm("blue2", "blue", "srv3", "192.168.1.12")
    a.remove_vm("red1")
    a.set_policy("blue", {"default": "deny"})
    a.set_flow_mode("reactive")
    a.set_flow_limit("vm", "red2", 9)
    a.set_flow_limit("network", "blue", 99)
    a.set_flow_limit("default-vm", None, 999)
    b = VncModel(overlapping_topology())
    b.restore(copy.deepcopy(a.state()))
    assert b.configs() == a.configs() and b.dump() == a.dump()
    b.add_vm("red5", "red", "srv3", "192.168.1.15")
    assert b.vm("red5")["tap"] not in {v["tap"] for v in a.vms()}


def test_state_of_another_topology_is_refused():
    other = overlapping_topology()
    other["servers"][0]["address"] = "10.0.9.9"
    state = VncModel(other).state()
    m = VncModel(overlapping_topology())
    with pytest.raises(VncError, match="different topology"):
        m.restore(state)
    broken = VncModel(overlapping_topology()).state()
    del broken["vms"]
    before = m.dump()
    with pytest.raises(VncError, match="unusable"):
        m.restore(broken)
    assert m.dump() == before


def test_topology_from_a_yaml_file(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump(overlapping_topology()))
    assert VncModel(str(path)).configs() == VncModel(overlapping_topology()).configs()
    (tmp_path / "bad.yaml").write_text("servers: [unclosed\n")
    with pytest.raises(VncError, match="not valid YAML"):
        VncModel(str(tmp_path / "bad.yaml"))
    with pytest.raises(VncError, match="cannot read topology"):
        VncModel(str(tmp_path / "missing.yaml"))


def test_bad_topology_overlay_gives_one_line_errors():
    topo = overlapping_topology()
    topo["vms"].append({"name": "red3", "network": "red", "server": "srv1",
                        "address": "192.168.1.11"})
    with pytest.raises(VncError, match="already used by VM 'red1'"):
        VncModel(topo)
    with pytest.raises(VncError, match="no servers"):
        VncModel({"servers": []})


_ops = st.lists(st.one_of(
    st.tuples(st.just("add"), st.integers(0, 7), st.sampled_from(["red", "blue"]),
              st.sampled_from(["srv1", "srv2", "srv3"]), st.integers(2, 40)),
    st.tuples(st.just("remove"), st.integers(0, 7)),
    st.tuples(st.just("mode"), st.sampled_from(["proactive", "reactive"])),
), max_size=12)


@settings(max_examples=40, deadline=None)
@given(_ops)
def test_any_change_sequence_yields_valid_configs_and_exact_change_sets(ops):
    m = VncModel(overlapping_topology())
    for op in ops:
        before = m.configs()
        try:
            if op[0] == "add":
                change = m.add_vm(f"vm{op[1]}", op[2], op[3], f"192.168.1.{op[4]}")
            elif op[0] == "remove":
                change = m.remove_vm(f"vm{op[1]}")
            else:
                change = m.set_flow_mode(op[1])
        except VncError:
            assert m.configs() == before
            continue
        after = m.configs()
        assert set(change.servers) == {s for s in after if after[s] != before[s]}
        for config in after.values():
            VrouterConfig.from_dict(config)
        taps = [v["tap"] for v in m.vms()]
        assert len(taps) == len(set(taps))


def test_an_interface_name_that_would_exceed_15_characters_is_refused():
    m = VncModel(overlapping_topology(), prefix="abcdefgh")
    state = m.state()
    state["next_index"] = 100000  # abcdefgh-t100000 is 16 characters
    m.restore(state)
    with pytest.raises(VncError, match="exceeds 15 characters"):
        m.add_vm("red9", "red", "srv3", "192.168.1.19")
