"""Bare-metal hosts, the pure parts: the schema's `baremetal:` checks (topology and VNC), the VNC's
routes and host entries (controllers/vnc_baremetal.py), their differences against a device's tables
(testbed/baremetal.py), the VXLAN next hop without probes, and the vrouter's answer to flooded ARP
(vrouter/core/fabric_arp.py)."""
import argparse
import copy

import pytest
import yaml
from scapy.layers.inet import ICMP, IP, TCP
from scapy.layers.l2 import ARP, Ether
from scapy.layers.vxlan import VXLAN

from controllers import vnc_baremetal
from controllers.vnc_model import VncModel
from testbed import baremetal as shell
from testbed import cmd_baremetal
from testbed.topology import TopologyError, from_dict
from vrouter.core import baremetal as core_baremetal
from vrouter.core.actions import Drop, ToTunnel, ToVif
from vrouter.core.codec.ipv4 import int_to_ip
from vrouter.core.config import ConfigError, VrouterConfig
from vrouter.core.gso import PREFIX_LEN, pseudo_sum
from vrouter.core.paths import Paths
from vrouter.core.pipeline import Pipeline
from vrouter.core.schema import default_mac
from vrouter.core.slowpath import SlowPath
from vrouter.core.vrf import build_instances
from vrouter.io import vtep
from vrouter.io.control import VncError
from vrouter.tools.tables import format_baremetal

TOPO = yaml.safe_load(open("tests/e2e/topologies/baremetal.yaml"))
BMS = TOPO["baremetal"][0]
BMS_MAC = default_mac("bms1")
RED1_MAC, RED2_MAC = default_mac("red1"), default_mac("red2")


def topo(**change):
    doc = copy.deepcopy(TOPO)
    doc["baremetal"][0].update(change)
    return doc


def problems(doc):
    with pytest.raises(TopologyError) as e:
        from_dict(doc, source="t.yaml")
    return e.value.problems


# ---- schema
def test_topology_parses_the_host_with_a_derived_mac():
    t = from_dict(copy.deepcopy(TOPO))
    (h,) = t.baremetal
    assert (h.name, h.leaf, h.address, h.network, h.overlay_address, h.mac) == \
        ("bms1", "leaf2", "10.0.2.9", "red", "192.168.1.50", BMS_MAC)


@pytest.mark.parametrize("change, expected", [
    ({"leaf": "spine1"}, "baremetal[0].leaf: 'spine1' is not a leaf of this topology"),
    ({"address": "10.1.0.9"}, "baremetal[0].address: 10.1.0.9 is outside the underlay 10.0.0.0/16"),
    ({"address": "10.0.1.1"}, "baremetal[0].address: 10.0.1.1 is already used by server 'srv1'"),
    ({"network": "green"}, "baremetal[0].network: unknown virtual network 'green'"),
    ({"overlay_address": "192.168.2.5"}, "baremetal[0].overlay_address: 192.168.2.5 is outside the subnets"),
    ({"overlay_address": "192.168.1.11"}, "baremetal[0].overlay_address: 192.168.1.11 is already used by VM "
                                          "'red1' in network 'red'"),
    ({"mac": RED2_MAC}, f"baremetal[0].mac: {RED2_MAC} is already used by VM 'red2' in network 'red'"),
    ({"mac": "01:00:00:00:00:01"}, "baremetal[0].mac: 01:00:00:00:00:01 is a multicast MAC address"),
    ({"name": "srv2"}, "baremetal[0].name: duplicate name 'srv2'"),
    ({"vni": 5}, "baremetal[0].vni: unknown key"),
])
def test_topology_errors_name_their_place(change, expected):
    found = problems(topo(**change))
    assert any(p.startswith(expected) for p in found), found


def test_a_missing_key_and_a_non_list_are_reported():
    doc = topo()
    del doc["baremetal"][0]["overlay_address"]
    assert any("baremetal[0]" in p and "overlay_address" in p for p in problems(doc))
    doc["baremetal"] = {"name": "x"}
    assert any(p.startswith("baremetal: expected a list") for p in problems(doc))


def test_the_same_overlay_address_in_another_network_is_fine():
    doc = topo()
    assert from_dict(doc).baremetal[0].overlay_address == "192.168.1.50"   # blue1 has .50 in blue


def test_the_vnc_refuses_a_vm_that_takes_the_hosts_address_mac_or_name():
    m = VncModel(copy.deepcopy(TOPO))
    with pytest.raises(VncError, match=r"vms\['red9'\].address: 192.168.1.50 is already used by bare-metal host"):
        m.add_vm("red9", "red", "srv3", "192.168.1.50")
    with pytest.raises(VncError, match=r"vms\['red9'\].mac: .* bare-metal host 'bms1'"):
        m.add_vm("red9", "red", "srv3", "192.168.1.60", BMS_MAC)
    with pytest.raises(VncError, match=r"vms\['bms1'\].name: duplicate name"):
        m.add_vm("bms1", "red", "srv3", "192.168.1.60")
    m.add_vm("blue9", "blue", "srv3", "192.168.1.51")       # another network: fine


def test_the_vnc_refuses_a_bad_section_at_its_first_problem():
    with pytest.raises(VncError, match=r"baremetal\[0\].overlay_address: 192.168.1.12 is already used by VM 'red2'"):
        VncModel(topo(overlay_address="192.168.1.12"))


# ---- the VNC's two sides
def test_vrouters_route_the_host_over_vxlan_without_probes_even_with_mplsoudp():
    m = VncModel(copy.deepcopy(TOPO))
    cfg = m.config_for("srv1")
    (route,) = [r for r in cfg["routes"] if r["prefix"] == "192.168.1.50/32"]
    assert route == {"network": "red", "prefix": "192.168.1.50/32", "nexthop": {
        "type": "tunnel", "peer": "10.0.2.9", "label": 100, "encap": "vxlan", "mac": BMS_MAC, "probe": False}}
    assert cfg["encapsulation"] == "mplsoudp"
    assert "10.0.2.9" in VrouterConfig.from_dict(cfg).peers      # its packets are accepted
    assert not any(r["prefix"] == "192.168.1.50/32" for r in m.config_for("srv3")["routes"])   # no red VM there
    blue = [r for r in m.config_for("srv2")["routes"] if r["network"] == "blue"]
    assert all(r["nexthop"].get("peer") != "10.0.2.9" for r in blue)


def test_host_entries_flood_to_the_members_servers_and_follow_vms():
    m = VncModel(copy.deepcopy(TOPO))
    (rec,) = m.dump()["baremetal"]
    assert rec["device"] == "vxlan100" and rec["vni"] == 100
    assert rec["fdb"] == [["00:00:00:00:00:00", "10.0.1.1"], ["00:00:00:00:00:00", "10.0.2.1"],
                          *sorted([[RED1_MAC, "10.0.1.1"], [RED2_MAC, "10.0.2.1"]])]
    assert rec["neigh"] == [["192.168.1.11", RED1_MAC], ["192.168.1.12", RED2_MAC]]
    m.add_vm("red3", "red", "srv3", "192.168.1.13")
    (rec,) = m.dump()["baremetal"]
    assert ["00:00:00:00:00:00", "10.0.1.2"] in rec["fdb"] and ["192.168.1.13", default_mac("red3")] in rec["neigh"]


def test_diff_adds_what_is_new_and_deletes_what_went():
    m = VncModel(copy.deepcopy(TOPO))
    (before,) = m.dump()["baremetal"]
    assert shell.diff(set(), {}, before) == [
        "bridge fdb append 00:00:00:00:00:00 dev vxlan100 dst 10.0.1.1",
        "bridge fdb append 00:00:00:00:00:00 dev vxlan100 dst 10.0.2.1",
        *[f"bridge fdb replace {mac} dev vxlan100 dst {dst}" for mac, dst in sorted([[RED1_MAC, "10.0.1.1"],
                                                                                       [RED2_MAC, "10.0.2.1"]])],
        f"ip neigh replace 192.168.1.11 lladdr {RED1_MAC} dev vxlan100 nud permanent",
        f"ip neigh replace 192.168.1.12 lladdr {RED2_MAC} dev vxlan100 nud permanent"]
    fdb_text = "\n".join(f"{mac} dst {dst} self permanent" for mac, dst in before["fdb"]) + \
        "\n33:33:00:00:00:01 self permanent\n"
    neigh_text = (f"192.168.1.11 lladdr {RED1_MAC} REACHABLE\n192.168.1.12 lladdr {RED2_MAC} PERMANENT\n"
                  "192.168.1.99  FAILED\n")
    fdb, neigh = shell.parse_fdb(fdb_text), shell.parse_neigh(neigh_text)
    assert shell.diff(fdb, neigh, before) == []      # in sync; a learned entry naming the right MAC stays
    m.remove_vm("red2")
    (after,) = m.dump()["baremetal"]
    assert shell.diff(fdb, neigh, after) == [
        "bridge fdb del 00:00:00:00:00:00 dev vxlan100 dst 10.0.2.1",
        f"bridge fdb del {RED2_MAC} dev vxlan100 dst 10.0.2.1",
        "ip neigh del 192.168.1.12 dev vxlan100"]


def test_a_moved_mac_is_replaced_not_deleted():
    want = {"device": "vxlan100", "fdb": [["02:00:00:00:00:07", "10.0.1.2"]], "neigh": []}
    assert shell.diff({("02:00:00:00:00:07", "10.0.1.1")}, {}, want) == [
        "bridge fdb replace 02:00:00:00:00:07 dev vxlan100 dst 10.0.1.2"]


# ---- the vrouter side
def pipe_for(server, paths=None):
    return Pipeline(VrouterConfig.from_dict(VncModel(copy.deepcopy(TOPO)).config_for(server)), paths)


def tap_of(server, vm):
    return next(v["tap"] for v in VncModel(copy.deepcopy(TOPO)).vms(server) if v["name"] == vm)


def test_the_probe_flag_is_checked():
    cfg = VncModel(copy.deepcopy(TOPO)).config_for("srv1")
    next(r for r in cfg["routes"] if r["prefix"] == "192.168.1.50/32")["nexthop"]["probe"] = "no"
    with pytest.raises(ConfigError, match=r"probe: expected true or false"):
        VrouterConfig.from_dict(cfg)


def decided(pipe, actions, now=0.0):
    """A miss's punt decided by the slow path as the agent would, installed: the released actions."""
    (request,) = pipe.take_punts(now) if actions == [] else (None,)
    assert request is not None, actions
    return pipe.install(SlowPath(pipe.config).decide(request), now)


def test_a_vm_reaches_the_host_over_vxlan_with_its_mac_and_no_path_slot():
    paths = Paths(seed=1)
    pipe = pipe_for("srv1", paths)
    frame = bytes(Ether(src=RED1_MAC, dst="02:00:00:00:00:01") / IP(src="192.168.1.11", dst="192.168.1.50") /
                  ICMP(id=5))
    (a,) = decided(pipe, pipe.from_vif(tap_of("srv1", "red1"), frame, 0.0))
    assert isinstance(a, ToTunnel) and (a.peer, a.encap) == ("10.0.2.9", "vxlan")
    pkt = VXLAN(a.payload)
    assert pkt.vni == 100 and pkt[Ether].dst == BMS_MAC and pkt[IP].dst == "192.168.1.50"
    assert paths.round(0.0) == []           # no path to the host is probed (it answers no probes)
    (b,) = pipe.from_vif(tap_of("srv1", "red1"), frame, 1.0)       # the hit path
    assert isinstance(b, ToTunnel) and b.payload == a.payload[:len(b.payload)]


def host_frame(op="who-has", pdst="192.168.1.11", psrc="192.168.1.50"):
    return bytes(VXLAN(vni=100, flags=0x08) / Ether(src=BMS_MAC, dst="ff:ff:ff:ff:ff:ff") /
                 ARP(op=op, hwsrc=BMS_MAC, psrc=psrc, pdst=pdst))


def test_the_server_of_the_vm_answers_the_hosts_flooded_arp_over_vxlan():
    pipe = pipe_for("srv1")
    (a,) = pipe.from_fabric("10.0.2.9", "vxlan", host_frame(), 0.0)
    assert isinstance(a, ToTunnel) and (a.peer, a.encap) == ("10.0.2.9", "vxlan") and 49152 <= a.sport <= 65535
    r = VXLAN(a.payload)
    assert r.vni == 100 and r[Ether].dst == BMS_MAC and r[Ether].src == RED1_MAC
    assert (r[ARP].op, r[ARP].hwsrc, r[ARP].psrc, r[ARP].hwdst, r[ARP].pdst) == \
        (2, RED1_MAC, "192.168.1.11", BMS_MAC, "192.168.1.50")
    assert pipe.stats()["fabric_arp_replies"] == 1


def test_other_servers_and_other_arp_are_ignored():
    pipe = pipe_for("srv1")
    assert pipe.from_fabric("10.0.2.9", "vxlan", host_frame(pdst="192.168.1.12"), 0.0) == [Drop("arp_ignored")]
    # A broadcast ARP reply is no question for this server: flooding's (core/flood.py), to the local VMs
    # only, never back into the fabric.
    flooded = pipe.from_fabric("10.0.2.9", "vxlan", host_frame(op="is-at"), 0.0)
    assert flooded and all(isinstance(a, ToVif) for a in flooded)
    assert pipe.from_fabric("10.0.2.9", "vxlan", host_frame()[:30], 0.0) == [Drop("malformed")]
    assert pipe.stats()["fabric_arp_replies"] == 0
    assert pipe.from_fabric("10.9.9.9", "vxlan", host_frame(), 0.0) == [Drop("invalid_source")]


def test_the_hosts_packet_to_a_vm_is_routed_by_its_inner_address():
    pipe = pipe_for("srv1")
    payload = bytes(VXLAN(vni=100, flags=0x08) / Ether(src=BMS_MAC, dst=RED1_MAC) /
                    IP(src="192.168.1.50", dst="192.168.1.11") / ICMP(id=9))
    (a,) = decided(pipe, pipe.from_fabric("10.0.2.9", "vxlan", payload, 0.0))
    assert isinstance(a, ToVif) and a.vif == tap_of("srv1", "red1") and Ether(a.frame)[IP].src == "192.168.1.50"


def test_what_goes_to_a_host_has_its_partial_checksum_completed():
    cfg = VrouterConfig.from_dict(VncModel(copy.deepcopy(TOPO)).config_for("srv1"))
    assert vtep.vtep_peers(cfg) == {"10.0.2.9"}
    pkt = IP(src="192.168.1.11", dst="192.168.1.50") / TCP(sport=1, dport=2) / b"data"
    raw = bytearray(bytes(pkt))
    raw[36:38] = pseudo_sum(0xC0A8010B, 0xC0A80132, 6, len(raw) - 20).to_bytes(2, "big")   # partial, as a VM sends
    prefix = b"\0" * PREFIX_LEN["vxlan"]
    done = vtep.complete("vxlan", prefix + bytes(raw))
    assert done[:22] == prefix and IP(done[22:]).chksum is not None
    assert IP(done[22:])[1].chksum == IP(bytes(pkt))[1].chksum     # what scapy computes in full
    sent = []

    class Fake:
        counters = {}

        def send(self, *a):
            sent.append(a)
            return True
    s = vtep.wrap(Fake(), cfg)
    s.send("10.0.1.2", "vxlan", 1, prefix + bytes(raw))          # a vrouter peer: left partial
    s.send("10.0.2.9", "vxlan", 1, prefix + bytes(raw))
    assert sent[0][3] == prefix + bytes(raw) and sent[1][3] == done and s.counters is Fake.counters
    assert vtep.wrap(s, VrouterConfig.from_dict(VncModel(copy.deepcopy(TOPO)).config_for("srv3"))).__class__ is Fake


# ---- run-time changes through the VNC (controllers/vnc_baremetal.py), its saved state, the vrouter's view

JOIN_BLUE = {"name": "bms1", "leaf": "leaf2", "address": "10.0.2.9", "network": "blue",
             "overlay_address": "192.168.1.60"}


def host_prefixes(m, server):
    return {(r["network"], r["prefix"]) for r in m.config_for(server)["routes"] if r["nexthop"].get("probe") is False}


def flood_peers(m, server, network):
    nets = m.config_for(server)["flood"]["networks"]
    return {e["peer"] for n in nets if n["network"] == network for e in n["endpoints"]}


def test_removing_a_host_takes_its_routes_and_flood_entry_off_every_vrouter():
    m = VncModel(copy.deepcopy(TOPO))
    assert host_prefixes(m, "srv1") == {("red", "192.168.1.50/32")} and "10.0.2.9" in flood_peers(m, "srv1", "red")
    change = vnc_baremetal.change(m, "remove", "bms1")
    assert change.servers == ("srv1", "srv2")           # red's servers; srv3 has no VM
    assert host_prefixes(m, "srv1") == host_prefixes(m, "srv2") == set()
    assert "10.0.2.9" not in flood_peers(m, "srv1", "red")
    assert m.dump()["baremetal"] == []
    assert vnc_baremetal.listing(m)["unjoined"] == [{"name": "bms1", "leaf": "leaf2", "address": "10.0.2.9"}]


def test_a_wired_host_joins_again_into_another_network():
    m = VncModel(copy.deepcopy(TOPO))
    vnc_baremetal.change(m, "remove", "bms1")
    change = vnc_baremetal.change(m, "add", dict(JOIN_BLUE))
    assert change.servers == ("srv2",)                  # blue1's server only
    assert host_prefixes(m, "srv2") == {("blue", "192.168.1.60/32")} and host_prefixes(m, "srv1") == set()
    (rec,) = m.dump()["baremetal"]
    assert (rec["device"], rec["vni"], rec["fdb"][0]) == ("vxlan200", 200, ["00:00:00:00:00:00", "10.0.2.1"])


@pytest.mark.parametrize("change, expected", [
    ({"name": "bms9"}, "baremetal['bms9']: no bare-metal host 'bms9' in this testbed's fabric"),
    ({"leaf": "leaf1"}, "baremetal['bms1'].leaf: bms1 is wired to leaf leaf2 in the fabric, not 'leaf1'"),
    ({"address": "10.0.2.8"}, "baremetal['bms1'].address: bms1 is wired to address 10.0.2.9 in the fabric, "
                              "not '10.0.2.8'"),
    ({"network": "green"}, "baremetal['bms1'].network: unknown virtual network 'green'"),
    ({"overlay_address": "192.168.1.50"}, "baremetal['bms1'].overlay_address: 192.168.1.50 is already used by "
                                          "VM 'blue1' in network 'blue'"),
    ({"overlay_address": "192.168.1.1"}, "baremetal['bms1'].overlay_address: 192.168.1.1 is the gateway"),
    ({"mac": "ff:ff:ff:ff:ff:ff"}, "baremetal['bms1'].mac: "),
    ({"colour": "red"}, "baremetal['bms1'].colour: unknown key"),
])
def test_a_join_is_checked_like_a_topology_entry_and_against_the_fabric(change, expected):
    m = VncModel(copy.deepcopy(TOPO))
    vnc_baremetal.change(m, "remove", "bms1")
    before = (m.generation, m.configs())
    with pytest.raises(VncError) as e:
        vnc_baremetal.change(m, "add", {**JOIN_BLUE, **change})
    assert str(e.value).startswith(expected), str(e.value)
    assert "\n" not in str(e.value) and (m.generation, m.configs()) == before


def test_refusals_of_joined_unknown_and_bad_requests():
    m = VncModel(copy.deepcopy(TOPO))
    with pytest.raises(VncError, match=r"joined to network 'red' already \(net baremetal rm bms1 first\)"):
        vnc_baremetal.change(m, "add", dict(JOIN_BLUE))
    with pytest.raises(VncError, match=r"^baremetal\['nope'\]: 'nope' is not a bare-metal host of this testbed$"):
        vnc_baremetal.change(m, "remove", "nope")
    with pytest.raises(VncError, match="unknown operation 'move'"):
        vnc_baremetal.change(m, "move", "bms1")
    with pytest.raises(VncError, match="^baremetal: expected a mapping"):
        vnc_baremetal.change(m, "add", "bms1")
    vnc_baremetal.change(m, "remove", "bms1")
    with pytest.raises(VncError, match=r"'bms1' is not joined"):
        vnc_baremetal.change(m, "remove", "bms1")
    with pytest.raises(VncError, match=r"duplicate name 'bms1' \(already used by bare-metal host 'bms1', not joined"):
        m.add_vm("bms1", "red", "srv1", "192.168.1.77")


def test_the_saved_state_carries_the_joined_hosts_across_a_restart():
    m = VncModel(copy.deepcopy(TOPO))
    vnc_baremetal.change(m, "remove", "bms1")
    gone = m.state()
    vnc_baremetal.change(m, "add", dict(JOIN_BLUE))
    moved = m.state()
    fresh = VncModel(copy.deepcopy(TOPO))
    fresh.restore(moved)
    assert fresh.configs() == m.configs() and fresh.dump()["baremetal"] == m.dump()["baremetal"]
    fresh.restore(gone)
    assert fresh.dump()["baremetal"] == [] and host_prefixes(fresh, "srv1") == set()
    older = {k: v for k, v in moved.items() if k != "baremetal"}      # saved before run-time hosts
    fresh.restore(older)
    assert fresh.dump()["baremetal"] == [] and vnc_baremetal.listing(fresh)["unjoined"]
    bad = copy.deepcopy(moved)
    bad["baremetal"][0]["overlay_address"] = "192.168.1.50"            # blue1's
    with pytest.raises(VncError, match="saved controller state is unusable: baremetal"):
        fresh.restore(bad)
    assert fresh.dump()["baremetal"] == []                             # untouched


def test_the_command_builds_the_entry_and_names_what_is_missing():
    args = argparse.Namespace(name="bms1", leaf="leaf2", address="10.0.2.9", network=None, overlay_address=None,
                              mac=None)
    with pytest.raises(cmd_baremetal.CommandError, match="^net baremetal add: give --network, --overlay-address$"):
        cmd_baremetal.host_item(args)
    args.network, args.overlay_address, args.mac = "blue", "192.168.1.60", "02:00:00:00:00:60"
    assert cmd_baremetal.host_item(args) == {**JOIN_BLUE, "mac": "02:00:00:00:00:60"}
    text = cmd_baremetal.format_hosts([], None, [{"name": "bms1", "leaf": "leaf2", "address": "10.0.2.9"}])
    assert text == "bms1: not joined (wired to leaf2, VTEP 10.0.2.9)\n"
    assert cmd_baremetal.format_hosts([], None) == "no bare-metal hosts\n"


def test_the_vrouters_view_lists_its_host_routes_and_arp_answers():
    m = VncModel(copy.deepcopy(TOPO))

    def view(server):
        cfg = VrouterConfig.from_dict(m.config_for(server))
        routes = [(ri.name, f"{int_to_ip(n)}/{p}", nh) for ri in build_instances(cfg).values()
                  for n, p, nh in ri.fib.routes()]
        return core_baremetal.view(routes, cfg.flood, {"fabric_arp_replies": 4})
    v = view("srv1")
    assert v == {"hosts": [{"network": "red", "prefix": "192.168.1.50/32", "vtep": "10.0.2.9", "vni": 100,
                            "mac": BMS_MAC, "flood_endpoint": True}], "fabric_arp_replies": 4}
    assert "red        192.168.1.50/32    10.0.2.9" in format_baremetal(v)
    assert "(fabric_arp_replies): 4" in format_baremetal(v)
    vnc_baremetal.change(m, "remove", "bms1")
    assert view("srv1")["hosts"] == []
    assert format_baremetal(view("srv1")).startswith("no bare-metal host routed on this server\n")
