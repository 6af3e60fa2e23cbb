"""Flooding (vrouter/core/flood.py, floodschema.py, controllers/vnc_flood.py): the VNC's flood lists,
ingress replication, split horizon, no copy into another network, MAC learning and ageing, the
storm limit, and the checks of the settings. Three servers' pipelines wired back to back (Pair)."""
import argparse

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import ARP, Ether

from controllers.vnc_flood import set_flood
from controllers.vnc_model import VncModel
from core_helpers import Pair
from testbed import cmd_flood
from vrouter.core import floodschema
from vrouter.core.actions import Drop, ToTunnel, ToVif
from vrouter.core.codec import mpls, vxlan
from vrouter.core.codec.ipv4 import ip_to_int
from vrouter.core.config import ConfigError, VrouterConfig
from vrouter.core.flood import l2_prefix
from vrouter.core.gso import pseudo_sum
from vrouter.core.pipeline import Pipeline
from vrouter.io.control import VncError
from vrouter.tools.floodtable import format_flood

SERVERS = {"srv1": "10.0.1.1", "srv2": "10.0.1.2", "srv3": "10.0.2.1"}
VMS = [("red1", "red", "srv1", "192.168.1.11"), ("red2", "red", "srv1", "192.168.1.12"),
       ("red3", "red", "srv2", "192.168.1.13"), ("red4", "red", "srv3", "192.168.1.14"),
       ("blue1", "blue", "srv1", "192.168.1.11"), ("blue2", "blue", "srv2", "192.168.1.12")]
BCAST = "ff:ff:ff:ff:ff:ff"


def topology(encap="mplsoudp", flood=None):
    doc = {"servers": [{"name": n, "address": a} for n, a in SERVERS.items()], "encapsulation": encap,
           "virtual_networks": [{"name": "red", "id": 100, "subnets": ["192.168.1.0/24"]},
                                {"name": "blue", "id": 200, "subnets": ["192.168.1.0/24"]}],
           "vms": [{"name": n, "network": net, "server": s, "address": a} for n, net, s, a in VMS]}
    if flood is not None:
        doc["flood"] = flood
    return doc


class Bed:
    """The VNC model and one pipeline per server, wired: tunnel copies reach the peer's from_fabric."""

    def __init__(self, encap="mplsoudp", flood=None):
        self.model = VncModel(topology(encap, flood), prefix="fl")
        self.vm = {v["name"]: v for v in self.model.vms()}
        self.tap = {n: v["tap"] for n, v in self.vm.items()}
        self.name = {t: n for n, t in self.tap.items()}
        self.pair = Pair({s: VrouterConfig.from_dict(self.model.config_for(s)) for s in SERVERS})

    def mac(self, vm):
        return self.vm[vm]["mac"]

    def send(self, vm, frame, now=0.0):
        """Where ``frame`` sent by ``vm`` ends: {VM name: [frames]}, and the drops."""
        srv = self.vm[vm]["server"]
        out = self.pair.run(srv, self.pair.pipe[srv].from_vif(self.tap[vm], bytes(frame), now), now)
        got, drops = {}, []
        for a in out:
            if isinstance(a, ToVif):
                got.setdefault(self.name[a.vif], []).append(a.frame)
            else:
                drops.append(a)
        return got, drops

    def counters(self, srv, net):
        view = self.pair.pipe[srv].flood.describe(0.0)
        return next(n for n in view["networks"] if n["network"] == net)["counters"]


def arp(vm, target, bed, op=1, dst=BCAST, tha="00:00:00:00:00:00"):
    v = bed.vm[vm]
    return Ether(src=v["mac"], dst=dst) / ARP(op=op, hwsrc=v["mac"], psrc=v["address"], hwdst=tha, pdst=target)


def udp(vm, dst_ip, dst_mac, bed, src_ip=None, sport=68, dport=67):
    v = bed.vm[vm]
    return Ether(src=v["mac"], dst=dst_mac) / IP(src=src_ip or v["address"], dst=dst_ip) / UDP(
        sport=sport, dport=dport) / b"hello"


# ---------------------------------------------------------------- the VNC's flood lists

def test_the_vnc_gives_each_server_the_other_servers_of_each_local_network():
    m = VncModel(topology(), prefix="fl")
    labels = m.flood.labels
    assert set(labels.values()).isdisjoint({100, 200}) and len(set(labels.values())) == 2
    f1 = {n["network"]: n for n in m.config_for("srv1")["flood"]["networks"]}
    assert [e["peer"] for e in f1["red"]["endpoints"]] == ["10.0.1.2", "10.0.2.1"]
    assert [e["peer"] for e in f1["blue"]["endpoints"]] == ["10.0.1.2"]
    assert all(e == {**e, "encap": "mplsoudp", "label": labels[n]} for n in f1 for e in f1[n]["endpoints"])
    assert [n["network"] for n in m.config_for("srv3")["flood"]["networks"]] == ["red"]   # no blue VM there
    vx = VncModel(topology("vxlan"), prefix="fl").config_for("srv2")["flood"]["networks"]
    assert {n["network"]: [e["label"] for e in n["endpoints"]] for n in vx} == {"blue": [200], "red": [100, 100]}


def test_l2_labels_avoid_network_ids_and_each_other():
    ids = {"a": 16, "b": floodschema.L2_LABEL_BASE + 16, "c": 1048575, "d": 17}
    labels = floodschema.l2_labels(ids)
    assert len(set(labels.values())) == 4 and not set(labels.values()) & set(ids.values())
    assert all(floodschema.L2_LABEL_BASE <= v <= mpls.MAX_LABEL for v in labels.values())


def test_flooding_off_leaves_the_section_out_and_the_old_behaviour():
    bed = Bed(flood={"enabled": False})
    assert "flood" not in bed.model.config_for("srv1")
    got, drops = bed.send("red1", arp("red1", "192.168.1.99", bed))
    assert got == {} and drops == [Drop("no_route")]


# ---------------------------------------------------------------- replication

@pytest.mark.parametrize("encap", ["mplsoudp", "mplsogre", "vxlan"])
def test_arp_for_an_unknown_address_reaches_every_member_and_no_other_network(encap):
    bed = Bed(encap)
    frame = bytes(arp("red1", "192.168.1.99", bed))
    got, drops = bed.send("red1", frame)
    assert sorted(got) == ["red2", "red3", "red4"] and drops == []
    assert all(fs == [frame] for fs in got.values())        # the frame unchanged, one copy each
    assert bed.counters("srv1", "red")["to_tunnels"] == 2 and bed.counters("srv1", "red")["to_vms"] == 1
    assert bed.counters("srv2", "red")["from_fabric"] == 1
    assert bed.counters("srv2", "blue")["from_fabric"] == 0


def test_the_tunnel_copy_carries_the_l2_label_and_the_frame():
    bed = Bed()
    frame = bytes(arp("red1", "192.168.1.99", bed))
    out = bed.pair.pipe["srv1"].from_vif(bed.tap["red1"], frame, 0.0)
    tunnels = [a for a in out if isinstance(a, ToTunnel)]
    label = bed.model.flood.labels["red"]
    assert {a.peer for a in tunnels} == {"10.0.1.2", "10.0.2.1"}
    assert all(a.payload == l2_prefix("mplsoudp", label) + frame for a in tunnels)
    assert mpls.parse_stack(tunnels[0].payload, 0)[0][0].label == label
    assert vxlan.parse(l2_prefix("vxlan", 100), 0) == 100


def test_a_routed_address_is_still_answered_by_the_vrouter():
    bed = Bed()
    got, drops = bed.send("red1", arp("red1", "192.168.1.13", bed))     # red3's: proxy ARP
    (reply,) = got["red1"]
    assert Ether(reply)[ARP].op == 2 and list(got) == ["red1"] and drops == []


@pytest.mark.parametrize("dst_ip,dst_mac", [("255.255.255.255", BCAST), ("192.168.1.255", BCAST),
                                            ("224.1.2.3", "01:00:5e:01:02:03")])
def test_broadcast_and_multicast_reach_the_members(dst_ip, dst_mac):
    bed = Bed()
    got, _ = bed.send("red3", udp("red3", dst_ip, dst_mac, bed))
    assert sorted(got) == ["red1", "red2", "red4"]
    got, _ = bed.send("blue2", udp("blue2", dst_ip, dst_mac, bed))
    assert sorted(got) == ["blue1"]


def test_a_dhcp_discover_from_no_address_is_flooded_but_a_spoofed_one_is_not():
    bed = Bed()
    got, _ = bed.send("red1", udp("red1", "255.255.255.255", BCAST, bed, src_ip="0.0.0.0"))
    assert sorted(got) == ["red2", "red3", "red4"]
    got, drops = bed.send("red1", udp("red1", "255.255.255.255", BCAST, bed, src_ip="192.168.1.77"))
    assert got == {} and drops == [Drop("spoofed_source")]
    forged = Ether(src="02:99:00:00:00:01", dst=BCAST) / ARP(op=1, psrc="192.168.1.11", pdst="192.168.1.99")
    assert bed.send("red1", forged) == ({}, [Drop("spoofed_source")])


def test_a_partial_udp_checksum_is_completed_on_the_tunnel_copy():
    bed = Bed()
    pkt = udp("red1", "255.255.255.255", BCAST, bed)
    raw = bytearray(bytes(pkt))
    raw[40:42] = pseudo_sum(ip_to_int("192.168.1.11"), 0xFFFFFFFF, 17, 13).to_bytes(2, "big")   # as offload leaves it
    assert bytes(raw) != bytes(pkt)
    out = bed.pair.pipe["srv1"].from_vif(bed.tap["red1"], bytes(raw), 0.0)
    local = next(a for a in out if isinstance(a, ToVif))
    copy = next(a for a in out if isinstance(a, ToTunnel)).payload[4:]
    assert local.frame == bytes(raw)                        # the local TAP gets the VM's virtio header too
    assert copy[40:42] == bytes(Ether(bytes(pkt)))[40:42]   # the full checksum


def test_split_horizon_a_copy_from_the_fabric_only_goes_to_local_members():
    bed = Bed()
    label = bed.model.flood.labels["red"]
    frame = bytes(arp("red1", "192.168.1.99", bed))
    out = bed.pair.pipe["srv1"].from_fabric("10.0.1.2", "mplsoudp", l2_prefix("mplsoudp", label) + frame, 0.0)
    assert sorted(bed.name[a.vif] for a in out) == ["red1", "red2"] and all(isinstance(a, ToVif) for a in out)


def test_an_unknown_l2_label_is_still_an_unknown_label():
    bed = Bed()
    frame = bytes(arp("red1", "192.168.1.99", bed))
    out = bed.pair.pipe["srv1"].from_fabric("10.0.1.2", "mplsoudp", l2_prefix("mplsoudp", 777) + frame, 0.0)
    assert out == [Drop("unknown_label")]


# ---------------------------------------------------------------- MAC learning

def test_the_reply_to_a_flooded_request_goes_back_as_unicast_and_ages():
    bed = Bed()
    bed.send("red1", arp("red1", "192.168.1.99", bed), now=0.0)      # srv2 and srv3 learn red1's MAC
    reply = arp("red3", "192.168.1.11", bed, op=2, dst=bed.mac("red1"), tha=bed.mac("red1"))
    out = bed.pair.pipe["srv2"].from_vif(bed.tap["red3"], bytes(reply), 1.0)
    assert [(type(a), a.peer) for a in out] == [(ToTunnel, "10.0.1.1")]     # no flood
    got, _ = bed.send("red3", reply, now=1.0)
    assert list(got) == ["red1"]                  # and srv1 knows red1's MAC: to red1 only
    assert bed.counters("srv2", "red")["unicast"] == 2 and bed.counters("srv1", "red")["unicast"] == 1
    got, _ = bed.send("red3", reply, now=1.0 + 301.0)                # aged (mac_age 300 s): flooded,
    assert sorted(got) == ["red1", "red4"]        # srv1 still gives it to red1 only (its own VM's MAC)
    assert bed.counters("srv2", "red")["aged"] == 1 and bed.counters("srv2", "red")["unknown_unicast"] == 1


def test_local_unicast_goes_to_the_local_vm_and_mac_tables_are_per_network():
    bed = Bed()
    reply = arp("red1", "192.168.1.12", bed, op=2, dst=bed.mac("red2"))
    got, _ = bed.send("red1", reply)
    assert list(got) == ["red2"]
    bed.send("red1", arp("red1", "192.168.1.99", bed))
    view = bed.pair.pipe["srv2"].flood.describe(0.0)
    macs = {n["network"]: [m["mac"] for m in n["macs"] if not m["local"]] for n in view["networks"]}
    assert macs == {"blue": [], "red": [bed.mac("red1")]}


# ---------------------------------------------------------------- the storm limit

def test_a_storm_is_cut_by_the_vms_bucket_and_others_still_flood():
    bed = Bed(flood={"rate": 10, "burst": 5})
    frame = udp("red1", "255.255.255.255", BCAST, bed)
    passed = sum(bool(bed.send("red1", frame, now=0.0)[0]) for _ in range(50))
    assert passed == 5
    assert bed.pair.pipe["srv1"].drop_stats()["flood_storm"] == 45
    assert bed.counters("srv1", "red")["storm_drops"] == 45
    assert sorted(bed.send("red2", udp("red2", "255.255.255.255", BCAST, bed), now=0.0)[0]) == ["red1", "red3", "red4"]
    assert sum(bool(bed.send("red1", frame, now=1.0)[0]) for _ in range(50)) == 5     # 10/s, capped at 5
    got, _ = bed.send("red1", arp("red1", "192.168.1.13", bed), now=1.0)          # proxy ARP is not flooding
    assert list(got) == ["red1"]


def test_set_flood_changes_every_config_and_survives_a_restore():
    m = VncModel(topology(), prefix="fl")
    change = set_flood(m, {"rate": 50, "burst": 10})
    assert change.servers == ("srv1", "srv2", "srv3")
    assert m.config_for("srv1")["flood"]["rate"] == 50.0
    saved = m.state()
    fresh = VncModel(topology(), prefix="fl")
    fresh.restore(saved)
    assert fresh.config_for("srv2")["flood"]["burst"] == 10
    set_flood(m, {"enabled": False})
    assert "flood" not in m.config_for("srv1")
    with pytest.raises(VncError, match=r"^flood.rate: expected frames per second"):
        set_flood(m, {"rate": 0})
    with pytest.raises(VncError, match=r"^flood.storm: unknown key"):
        set_flood(m, {"storm": 1})


# ---------------------------------------------------------------- the checks

@pytest.mark.parametrize("given,problem", [
    ({"rate": -1}, "flood.rate: expected frames per second in (0, 1000000]"),
    ({"burst": 0}, "flood.burst: expected a whole number of frames in 1..16777216, got 0"),
    ({"enabled": "yes"}, "flood.enabled: expected true or false, got 'yes'"),
    ({"mac_age": 0}, "flood.mac_age: expected a positive number of seconds, got 0"),
    ([], "flood: expected a mapping, got []"),
])
def test_bad_settings_are_one_clear_line(given, problem):
    with pytest.raises(VncError) as e:
        VncModel(topology(flood=given), prefix="fl")
    assert str(e.value).startswith(problem)


def test_the_vrouter_refuses_an_l2_label_that_is_a_network_id_and_a_bad_endpoint():
    d = VncModel(topology(), prefix="fl").config_for("srv1")
    d["flood"]["networks"][0]["label"] = 200
    with pytest.raises(ConfigError, match=r"^flood.networks\[0\].label: L2 label 200 is already used by "):
        VrouterConfig.from_dict(d)
    d = VncModel(topology(), prefix="fl").config_for("srv1")
    d["flood"]["networks"][1]["endpoints"][0]["encap"] = "ipip"
    with pytest.raises(ConfigError, match=r"^flood.networks\[1\].endpoints\[0\].encap: 'ipip' is not an encapsulation"):
        VrouterConfig.from_dict(d)


def test_a_config_without_flood_costs_no_flood_object():
    d = VncModel(topology(flood={"enabled": False}), prefix="fl").config_for("srv1")
    assert Pipeline(VrouterConfig.from_dict(d)).flood is None


# ---------------------------------------------------------------- the tools around it

def test_vr_flood_table_and_net_flood_options():
    bed = Bed()
    bed.send("red1", arp("red1", "192.168.1.99", bed))
    text = format_flood(bed.pair.pipe["srv2"].flood.describe(0.0))
    assert "Network red (vrf 100, L2 label 524388)" in text and "from_fabric 1" in text
    assert f"{bed.mac('red1')}  10.0.1.1 mplsoudp label 524388" in text
    assert format_flood({"enabled": False, "why": "off"}) == "Flooding off: off\n"
    args = argparse.Namespace(state="off", rate=5.0, burst=None, mac_age=None)
    assert cmd_flood.changes(args) == {"enabled": False, "rate": 5.0}
    assert cmd_flood.describe({"enabled": False}) == "flooding off"
