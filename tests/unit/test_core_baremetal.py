"""Bare-metal hosts, the pure parts: the schema's `baremetal:` checks (topology and VNC), the VNC's
routes and host entries (controllers/vnc_baremetal.py), their differences against a device's tables
(testbed/baremetal.py), the VXLAN next hop without probes, and the vrouter's answer to flooded ARP
(vrouter/core/fabric_arp.py)."""
import copy

import pytest
import yaml
from scapy.layers.inet import ICMP, IP, TCP
from scapy.layers.l2 import ARP, Ether
from scapy.layers.vxlan import VXLAN

from controllers.vnc_model import VncModel
from testbed import baremetal as shell
from testbed.topology import TopologyError, from_dict
from vrouter.core.actions import Drop, ToTunnel, ToVif
from vrouter.core.config import ConfigError, VrouterConfig
from vrouter.core.gso import PREFIX_LEN, pseudo_sum
from vrouter.core.paths import Paths
from vrouter.core.pipeline import Pipeline
from vrouter.core.schema import default_mac
from vrouter.core.slowpath import SlowPath
from vrouter.io import vtep
from vrouter.io.control import VncError

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
