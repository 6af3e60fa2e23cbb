"""One overlay schema: the same bad input gets the same verdict from all three entry points.

Each case changes one overlay item of a small valid topology and goes through a topology file
(testbed.topology.from_dict, collects every problem), the VNC (controllers.vnc_model: the topology,
or the run-time call that adds the item) and the vrouter config of srv1 (VrouterConfig.from_dict).
All three must accept it, or all three refuse it naming the same field with the same reason.
"""
import copy
import re

import pytest

from controllers.vnc_model import VncError, VncModel
from testbed import topology
from testbed.topology import TopologyError
from vrouter.core import schema
from vrouter.core.codec import mpls, outer
from vrouter.core.codec import vxlan as vxlan_codec
from vrouter.core.config import ConfigError, VrouterConfig

FABRIC = {
    "underlay": "10.0.0.0/16",
    "switches": [{"name": "spine1", "role": "spine"}, {"name": "leaf1", "role": "leaf"}],
    "servers": [{"name": "srv1", "address": "10.0.1.1"}, {"name": "srv2", "address": "10.0.1.2"}],
    "links": [["leaf1", "spine1"], ["srv1", "leaf1"], ["srv2", "leaf1"]],
}
RED1_MAC = "02:00:00:00:01:0b"


def overlay():
    """red and blue share a subnet (on purpose: tenant address spaces are independent)."""
    return {
        "encapsulation": "mplsoudp",
        "virtual_networks": [{"name": "red", "id": 100, "subnets": ["192.168.1.0/24"]},
                             {"name": "blue", "id": 200, "subnets": ["192.168.1.0/24"]}],
        "vms": [{"name": "red1", "network": "red", "server": "srv1", "address": "192.168.1.11",
                 "mac": RED1_MAC},
                {"name": "red2", "network": "red", "server": "srv2", "address": "192.168.1.12"},
                {"name": "blue1", "network": "blue", "server": "srv1", "address": "192.168.1.11"}],
        "policies": [],
    }


# ---- the three entry points; each returns None (accepted) or its one-line problem
def via_topology(doc):
    try:
        topology.from_dict({**copy.deepcopy(FABRIC), **copy.deepcopy(doc)})
    except TopologyError as exc:
        assert len(exc.problems) == 1, exc.problems      # each case breaks exactly one rule
        return exc.problems[0]
    return None


def via_vnc(doc, kind):
    """Networks and the encapsulation come with the topology; a VM or a policy (the last one of
    its list) is added by the run-time call, to a model made from the rest."""
    doc = {**copy.deepcopy(FABRIC), **copy.deepcopy(doc)}
    try:
        if kind == "vm":
            vm = doc["vms"].pop()
            VncModel(doc).add_vm(vm["name"], vm["network"], vm["server"], vm["address"], vm.get("mac"))
        elif kind == "policy":
            pol = doc["policies"].pop()
            VncModel(doc).set_policy(pol["network"], {k: v for k, v in pol.items() if k != "network"})
        else:
            VncModel(doc)
    except VncError as exc:
        return str(exc)
    return None


def via_config(doc):
    """srv1's config as the VNC would build it, from the overlay as written."""
    config = {
        "server": "srv1", "underlay_ip": "10.0.1.1", "encapsulation": doc.get("encapsulation", "mplsoudp"),
        "networks": copy.deepcopy(doc["virtual_networks"]),
        "vifs": [{"name": vm["name"], "network": vm["network"], "ip": vm["address"],
                  "mac": vm.get("mac") or schema.default_mac(vm["name"]),
                  **({"flow_limit": vm["flow_limit"]} if "flow_limit" in vm else {})}
                 for vm in doc["vms"] if vm["server"] == "srv1"],
        **({"flow": copy.deepcopy(doc["flow"])} if "flow" in doc else {}),
        "policies": copy.deepcopy(doc["policies"]),
    }
    try:
        VrouterConfig.from_dict(config)
    except ConfigError as exc:
        return str(exc)
    return None


def reason(line):
    """(field, reason) of a problem: the place's last name, the text without who else uses it."""
    place, _, text = line.partition(": ")
    field = place.rsplit(".", 1)[-1]
    return {"ip": "address"}.get(field, field), re.sub(r" \(already used by [^)]*\)$", "", text)


def with_network(**net):
    doc = overlay()
    doc["virtual_networks"].append({"name": "green", "id": 300, "subnets": ["10.9.0.0/16"], **net})
    return doc


def with_vm(**vm):
    doc = overlay()
    doc["vms"].append({"name": "red9", "network": "red", "server": "srv1", "address": "192.168.1.19", **vm})
    return doc


def with_rule(network="red", **r):
    doc = overlay()
    doc["policies"].append({"network": network, "default": "deny", "rules": [{"action": "allow", **r}]})
    return doc


def with_links(*pairs):
    """Policies whose allow rules name other networks: (network, named) pairs, in order."""
    doc = overlay()
    doc["policies"] = [{"network": net, "rules": [{"action": "allow", "network": named}]} for net, named in pairs]
    return doc


def with_flow(**flow):
    return {**overlay(), "flow": flow}


def vxlan(vid):
    doc = with_network(id=vid)
    doc["encapsulation"] = "vxlan"
    return doc


CASES = [
    # (id, document, kind, refused: None or (field, words in the reason))
    ("id too big", with_network(id=1048576), "network", ("id", "is not an MPLS label in 16..1048575")),
    ("id 0", with_network(id=0), "network", ("id", "is not an MPLS label in 16..1048575")),
    ("id negative", with_network(id=-1), "network", ("id", "is not an MPLS label")),
    ("id reserved label", with_network(id=15), "network", ("id", "is not an MPLS label")),
    ("id not a number", with_network(id="300"), "network", ("id", "is not an MPLS label")),
    ("id duplicate", with_network(id=100), "network", ("id", "duplicate id 100")),
    ("largest label", with_network(id=1048575), "network", None),
    ("vxlan VNI too big", vxlan(16777216), "network", ("id", "is not a VNI in 1..16777215")),
    ("vxlan VNI 0", vxlan(0), "network", ("id", "is not a VNI in 1..16777215")),
    ("vxlan small VNI", vxlan(5), "network", None),
    ("vxlan large VNI", vxlan(16777215), "network", None),
    ("unknown encapsulation", {**overlay(), "encapsulation": "ipip"}, "network",
     ("encapsulation", "'ipip' is not an encapsulation")),
    ("unknown field", with_network(colour="green"), "network", ("colour", "unknown key")),
    ("bad network name", with_network(name="9green"), "network", ("name", "is not a valid name")),
    ("overlap inside a network", with_network(subnets=["10.9.0.0/16", "10.9.1.0/24"]), "network",
     ("subnets", "10.9.0.0/16 overlaps 10.9.1.0/24")),
    ("overlap between networks", with_network(subnets=["192.168.1.0/24"]), "network", None),
    ("subnet host bits", with_network(subnets=["10.9.0.1/16"]), "network", ("subnets[0]", "CIDR")),
    ("gateway outside", with_network(gateway="10.8.0.1"), "network", ("gateway", "not inside")),
    ("duplicate MAC in a network", with_vm(mac=RED1_MAC), "vm",
     ("mac", "duplicate MAC 02:00:00:00:01:0b in network 'red'")),
    ("same MAC, other network, same server", with_vm(network="blue", address="192.168.1.19", mac=RED1_MAC),
     "vm", ("mac", "duplicate MAC 02:00:00:00:01:0b on server 'srv1'")),
    ("same MAC, other network, other server",
     with_vm(network="blue", server="srv2", mac=RED1_MAC), "vm", None),
    ("MAC upper case", with_vm(mac="02:AA:00:00:00:09"), "vm", None),
    ("bad MAC", with_vm(mac="zz"), "vm", ("mac", "'zz' is not a MAC address")),
    ("multicast MAC", with_vm(mac="01:00:5e:00:00:01"), "vm", ("mac", "is a multicast MAC address")),
    ("address outside the subnet", with_vm(address="10.9.9.9"), "vm",
     ("address", "10.9.9.9 is outside the subnets of network 'red' (192.168.1.0/24)")),
    ("address is the gateway", with_vm(address="192.168.1.1"), "vm", ("address", "is the gateway of network 'red'")),
    ("broadcast address", with_vm(address="192.168.1.255"), "vm", ("address", "broadcast")),
    ("not an address", with_vm(address="192.168.1.300"), "vm", ("address", "is not an IPv4 address")),
    ("duplicate address", with_vm(address="192.168.1.11"), "vm",
     ("address", "duplicate address 192.168.1.11 in network 'red'")),
    ("unknown network", with_vm(network="green"), "vm", ("network", "unknown virtual network 'green'")),
    ("protocol 47 (GRE)", with_rule(protocol=47), "policy", None),
    ("protocol 132 (SCTP)", with_rule(protocol=132), "policy", None),
    ("protocol 0", with_rule(protocol=0), "policy", None),
    ("protocol by name, any case", with_rule(protocol="TCP", dst_port=22), "policy", None),
    ("protocol 300", with_rule(protocol=300), "policy", ("protocol", "300 is not a protocol")),
    ("protocol gre by name", with_rule(protocol="gre"), "policy", ("protocol", "'gre' is not a protocol")),
    ("ports need tcp or udp", with_rule(protocol="icmp", dst_port=7), "policy",
     ("dst_port", "ports need protocol tcp or udp")),
    ("ports with protocol 17", with_rule(protocol=17, src_port="1000-2000"), "policy", None),
    ("bad port range", with_rule(protocol="tcp", dst_port="2000-1000"), "policy", ("dst_port", "port range")),
    ("bad action", with_rule(action="reject"), "policy", ("action", "'reject' is not an action")),
    ("prefix with host bits", with_rule(src="192.168.1.1/24"), "policy", ("src", "CIDR form")),
    ("unknown rule field", with_rule(ttl=3), "policy", ("ttl", "unknown key")),
    ("rule naming its own network", with_links(("red", "red")), "policy",
     ("network", "a rule names another network, not its own ('red')")),
    ("connecting overlapping networks", with_links(("red", "blue"), ("blue", "red")), "policy",
     ("network", "cannot connect networks 'blue' and 'red': their subnets overlap (192.168.1.0/24 and "
                 "192.168.1.0/24); connected networks share addresses in one routing instance")),
    ("naming an overlapping network one-sidedly", with_links(("red", "blue")), "policy", None),
    ("policy of an unknown network", with_rule(network="green"), "policy",
     ("network", "unknown virtual network 'green'")),
    # Flow-entry limits and the flow settings: the VNC takes them with the topology.
    ("VM flow limit", with_vm(flow_limit=100), "topology", None),
    ("VM flow limit 0", with_vm(flow_limit=0), "topology", ("flow_limit", "expected a flow-entry limit in 1..")),
    ("VM flow limit not a number", with_vm(flow_limit="lots"), "topology", ("flow_limit", "got 'lots'")),
    ("network flow limit", with_network(flow_limit=5000), "network", None),
    ("network flow limit true", with_network(flow_limit=True), "network", ("flow_limit", "got True")),
    ("flow settings", with_flow(vm_flow_limit=100, network_flow_limit=300, setup_rate=500, burst_tokens=50,
                                unreplied_timeout=5, resume_fraction=0.5, held_limit=10, vm_held_limit=2),
     "topology", None),
    ("negative setup rate", with_flow(setup_rate=-1), "topology", ("setup_rate", "expected a rate >= 0")),
    ("resume fraction 0", with_flow(resume_fraction=0), "topology", ("resume_fraction", "a fraction in (0, 1]")),
    ("resume fraction above 1", with_flow(resume_fraction=1.5), "topology", ("resume_fraction", "a fraction")),
    ("unreplied timeout 0", with_flow(unreplied_timeout=0), "topology", ("unreplied_timeout", "positive number")),
    ("held limit 0", with_flow(held_limit=0), "topology", ("held_limit", "expected an integer in 1..")),
    ("unknown flow setting", with_flow(colour=1), "topology", ("colour", "unknown key")),
]


@pytest.mark.parametrize("doc,kind,refused", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_every_entry_point_gives_the_same_verdict(doc, kind, refused):
    verdicts = {"topology": via_topology(doc), "vnc": via_vnc(doc, kind), "config": via_config(doc)}
    if refused is None:
        assert verdicts == dict.fromkeys(verdicts), verdicts
        return
    assert all(verdicts.values()), verdicts
    reasons = {k: reason(v) for k, v in verdicts.items()}
    assert len(set(reasons.values())) == 1, verdicts         # same field, same words
    field, words = refused
    assert reasons["topology"][0] == field and words in reasons["topology"][1], verdicts
    assert all("\n" not in v for v in verdicts.values())


def test_flow_mode_is_checked_alike_by_the_vnc_and_the_config():
    model = VncModel({**FABRIC, **overlay()})
    with pytest.raises(VncError) as vnc:
        model.set_flow_mode("eager")
    config = model.config_for("srv1")
    config["flow"]["mode"] = "eager"
    with pytest.raises(ConfigError) as cfg:
        VrouterConfig.from_dict(config)
    assert str(vnc.value) == str(cfg.value) == "flow.mode: 'eager' is not a flow mode (expected proactive or reactive)"


def test_collecting_and_raising_report_the_same_first_problem():
    bad = {"name": "red", "id": 5, "subnets": ["10.0.0.0/8", "10.1.0.0/16"], "gateway": "11.0.0.1"}
    collected = schema.Problems()
    assert schema.network(collected, "networks[0]", bad, "mplsoudp", {}, {}) is None
    assert [line.split(":")[0] for line in collected.lines] == \
        ["networks[0].id", "networks[0].subnets", "networks[0].gateway"]
    with pytest.raises(ValueError) as first:
        schema.network(schema.Problems(ValueError), "networks[0]", bad, "mplsoudp", {}, {})
    assert str(first.value) == collected.lines[0] == \
        "networks[0].id: 5 is not an MPLS label in 16..1048575 (encapsulation mplsoudp)"


def test_constants_come_from_the_codecs():
    assert schema.ENCAPS is outer.ENCAPS and schema.MPLSOUDP_PORT == outer.MPLSOUDP_PORT
    assert schema.ID_RANGES == {"mplsoudp": (16, mpls.MAX_LABEL), "mplsogre": (16, mpls.MAX_LABEL),
                                "vxlan": (1, vxlan_codec.MAX_VNI)}


def test_rules_are_written_back_in_the_config_form():
    p = schema.Problems(ValueError)
    r = schema.rule(p, "r", {"action": "deny", "protocol": 6, "dst": "10.0.0.0/8", "dst_port": "22-22"})
    assert r.to_dict() == {"action": "deny", "protocol": "tcp", "src": "0.0.0.0/0", "dst": "10.0.0.0/8",
                           "src_port": None, "dst_port": "22"}
    assert schema.rule(p, "r", {"action": "allow", "protocol": 47}).to_dict()["protocol"] == 47
    assert schema.rule(p, "r", {"action": "allow"}).protocol is None


def test_default_macs_are_locally_administered_unicast():
    mac = schema.default_mac("red1")
    assert mac == schema.default_mac("red1") != schema.default_mac("red2")
    assert schema.mac(schema.Problems(ValueError), "m", mac) == mac
