"""Topology loading and validation: every rule of docs/topology-format.md, reported with its place."""
import copy

import pytest
import yaml

from testbed import DEFAULT_TOPOLOGY, generator, topology
from testbed.topology import TopologyError

OVERLAY = {
    "encapsulation": "mplsoudp",
    "virtual_networks": [
        {"name": "red", "id": 100, "subnets": ["192.168.1.0/24"], "gateway": "192.168.1.1"},
        {"name": "blue", "id": 200, "subnets": ["192.168.1.0/24", "10.9.0.0/16"]},
    ],
    "vms": [
        {"name": "red1", "network": "red", "server": "srv1", "address": "192.168.1.11"},
        {"name": "red2", "network": "red", "server": "srv3", "address": "192.168.1.12", "mac": "02:aa:00:00:00:02"},
        {"name": "blue1", "network": "blue", "server": "srv2", "address": "192.168.1.11"},
    ],
    "policies": [{"network": "red", "default": "allow", "rules": [
        {"action": "deny", "protocol": "tcp", "src": "192.168.1.0/24", "dst": "192.168.1.12/32", "dst_port": 22},
        {"action": "allow", "protocol": "udp", "src_port": "1000-2000"},
    ]}],
}


def base():
    doc = generator.leaf_spine(2, 2, 2, "t")
    doc.update(copy.deepcopy(OVERLAY))
    return doc


def problems(doc):
    with pytest.raises(TopologyError) as exc:
        topology.from_dict(doc, source="t.yaml")
    return exc.value.problems


def one_problem(doc, where, words):
    found = problems(doc)
    assert any(p.startswith(where + ":") and all(w in p for w in words) for p in found), found


def test_default_topology_is_2_spines_2_leaves_2_servers_each():
    topo = topology.load(DEFAULT_TOPOLOGY)
    assert len(topo.spines) == 2 and len(topo.leaves) == 2 and len(topo.servers) == 4
    for leaf in topo.leaves:
        assert sum(1 for s in topo.servers if topo.leaf_of(s.name) == leaf.name) == 2


def test_full_document_with_overlay_is_valid():
    topo = topology.from_dict(base())
    assert topo.encapsulation == "mplsoudp"
    assert [n.gateway for n in topo.virtual_networks] == ["192.168.1.1", "192.168.1.1"]
    assert topo.vms[1].mac == "02:aa:00:00:00:02"
    rules = topo.policies[0].rules
    assert rules[0].dst_port == "22" and rules[1].src_port == "1000-2000" and rules[1].dst == "0.0.0.0/0"


@pytest.mark.parametrize("shape", [(1, 1, 1), (2, 8, 4), (4, 16, 2)])
def test_generated_topologies_validate_and_round_trip_through_yaml(shape, tmp_path):
    doc = generator.leaf_spine(*shape)
    f = tmp_path / "g.yaml"
    f.write_text(generator.to_yaml(doc))
    topo = topology.load(f)
    spines, leaves, per_leaf = shape
    assert (len(topo.spines), len(topo.leaves), len(topo.servers)) == (spines, leaves, leaves * per_leaf)
    assert len(topo.links) == spines * leaves + leaves * per_leaf


@pytest.mark.parametrize("args", [(0, 2, 2), (2, 0, 2), (2, 2, 0), (2, 256, 1), (2, 2, 255)])
def test_generator_rejects_bad_parameters(args):
    with pytest.raises(generator.GeneratorError):
        generator.leaf_spine(*args)


def mutate(path, value):
    doc = base()
    target = doc
    for key in path[:-1]:
        target = target[key]
    if value is DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return doc


DELETE = object()


@pytest.mark.parametrize("path,value,where,words", [
    (("servers", 3, "address"), "10.0.1.300", "servers[3].address", ["'10.0.1.300' is not an IPv4 address"]),
    (("servers", 1, "address"), "10.0.1.1", "servers[1].address", ["duplicate address"]),
    (("servers", 1, "address"), "10.1.0.1", "servers[1].address", ["outside the underlay"]),
    (("servers", 1, "address"), "10.0.0.0", "servers[1].address", ["network or broadcast"]),
    (("servers", 1, "name"), "srv1", "servers[1].name", ["duplicate name"]),
    (("servers", 1, "name"), "leaf1", "servers[1].name", ["duplicate name"]),
    (("servers", 1, "port"), 3, "servers[1].port", ["unknown key"]),
    (("switches", 0, "role"), "core", "switches[0].role", ["not a role"]),
    (("switches", 0, "name"), "9bad", "switches[0].name", ["not a valid name"]),
    (("underlay",), "10.0.0.1/16", "underlay", ["CIDR"]),
    (("underlay",), DELETE, "document", ["missing required key 'underlay'"]),
    (("flavour",), "x", "flavour", ["unknown key"]),
    (("links", 0), ["leaf1", "spine9"], "links[0][1]", ["'spine9' is not a switch or server"]),
    (("links", 0), ["leaf1", "leaf2"], "links[0]", ["links must join"]),
    (("links", 0), ["spine1", "spine1"], "links[0]", ["to itself"]),
    (("links", 1), ["leaf1", "spine1"], "links[1]", ["duplicate link"]),
    (("links", 1), ["leaf1"], "links[1]", ["pair of node names"]),
    (("links", 4), ["srv1", "spine1"], "links[4]", ["links must join"]),
    (("links", 5), ["srv1", "leaf2"], "links", ["'srv1' must link to exactly one leaf, links to 2"]),
    (("encapsulation",), "ipip", "encapsulation", ["not an encapsulation"]),
    (("virtual_networks", 0, "id"), 15, "virtual_networks[0].id", ["MPLS label in 16..1048575"]),
    (("virtual_networks", 1, "id"), 100, "virtual_networks[1].id", ["duplicate id"]),
    (("virtual_networks", 1, "name"), "red", "virtual_networks[1].name", ["duplicate name"]),
    (("virtual_networks", 0, "subnets"), ["192.168.1.0/33"], "virtual_networks[0].subnets[0]", ["CIDR"]),
    (("virtual_networks", 0, "subnets"), [], "virtual_networks[0].subnets", ["non-empty list"]),
    (("virtual_networks", 1, "subnets"), ["10.9.0.0/16", "10.9.1.0/24"], "virtual_networks[1].subnets",
     ["overlaps"]),
    (("virtual_networks", 0, "gateway"), "10.0.0.1", "virtual_networks[0].gateway", ["not inside"]),
    (("vms", 0, "server"), "srv9", "vms[0].server", ["unknown server 'srv9'"]),
    (("vms", 0, "network"), "green", "vms[0].network", ["unknown virtual network 'green'"]),
    (("vms", 0, "address"), "192.168.2.5", "vms[0].address", ["outside the subnets of network 'red'"]),
    (("vms", 0, "address"), "192.168.1.12", "vms[1].address", ["duplicate address 192.168.1.12 in network 'red'"]),
    (("vms", 0, "address"), "192.168.1.1", "vms[0].address", ["gateway"]),
    (("vms", 0, "address"), "192.168.1.255", "vms[0].address", ["broadcast"]),
    (("vms", 0, "name"), "srv1", "vms[0].name", ["duplicate name"]),
    (("vms", 0, "mac"), "02:aa:00:00:00:02", "vms[1].mac", ["duplicate MAC"]),
    (("vms", 0, "mac"), "01:00:00:00:00:01", "vms[0].mac", ["multicast"]),
    (("vms", 0, "mac"), "zz", "vms[0].mac", ["not a MAC"]),
    (("policies", 0, "network"), "green", "policies[0].network", ["unknown virtual network 'green'"]),
    (("policies", 0, "default"), "maybe", "policies[0].default", ["allow or deny"]),
    (("policies", 0, "rules", 0, "dst_port"), "2000-1000", "policies[0].rules[0].dst_port", ["port range"]),
    (("policies", 0, "rules", 0, "dst_port"), 70000, "policies[0].rules[0].dst_port", ["port range"]),
    (("policies", 0, "rules", 0, "protocol"), "icmp", "policies[0].rules[0].dst_port", ["need protocol tcp or udp"]),
    (("policies", 0, "rules", 0, "protocol"), "sctp", "policies[0].rules[0].protocol", ["not a protocol"]),
    (("policies", 0, "rules", 0, "action"), "reject", "policies[0].rules[0].action", ["allow or deny"]),
    (("policies", 0, "rules", 0, "src"), "192.168.1.1/24", "policies[0].rules[0].src", ["CIDR"]),
    (("policies", 0, "rules", 0, "ttl"), 3, "policies[0].rules[0].ttl", ["unknown key"]),
])
def test_each_problem_is_reported_with_its_place(path, value, where, words):
    one_problem(mutate(path, value), where, words)


def test_a_fabric_needs_a_leaf():
    doc = base()
    doc["switches"] = [{"name": "spine1", "role": "spine"}]
    one_problem(doc, "switches", ["at least one leaf"])


def test_vxlan_ids_use_the_vni_range():
    doc = base()
    doc["encapsulation"] = "vxlan"
    doc["virtual_networks"][0]["id"] = 5
    assert topology.from_dict(doc).virtual_networks[0].id == 5
    doc["virtual_networks"][0]["id"] = 16777216
    one_problem(doc, "virtual_networks[0].id", ["VNI in 1..16777215"])


def test_policy_for_same_network_twice_is_rejected():
    doc = base()
    doc["policies"].append({"network": "red"})
    one_problem(doc, "policies[1].network", ["already has a policy"])


def test_all_problems_are_listed_at_once():
    doc = mutate(("servers", 3, "address"), "10.0.1.300")
    doc["vms"][0]["server"] = "nowhere"
    doc["encapsulation"] = "ipip"
    assert len(problems(doc)) >= 3


def test_file_errors_name_the_file_and_never_raise_anything_else(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("name: x\nunderlay: [\n")
    with pytest.raises(TopologyError) as exc:
        topology.load(f)
    assert str(exc.value).startswith(f"{f}: line ") and "YAML syntax error" in str(exc.value)
    f.write_text("name: x\nname: y\n")
    with pytest.raises(TopologyError) as exc:
        topology.load(f)
    assert "line 2: duplicate key 'name'" in str(exc.value)
    f.write_text("- just a list\n")
    with pytest.raises(TopologyError, match="top level"):
        topology.load(f)
    with pytest.raises(TopologyError, match="cannot read file"):
        topology.load(tmp_path / "missing.yaml")


@pytest.mark.parametrize("section", ["switches", "servers", "links", "vms", "virtual_networks", "policies"])
def test_wrong_types_in_sections_are_problems_not_crashes(section):
    for junk in ("text", 3, {"a": 1}, [3], [None], [["x"]]):
        doc = base()
        doc[section] = junk
        try:
            topology.from_dict(doc)
        except TopologyError as exc:
            assert exc.problems
        else:
            pytest.fail(f"{section}={junk!r} accepted")


def test_yaml_dump_of_loaded_topology_loads_again(tmp_path):
    topo = topology.from_dict(base())
    f = tmp_path / "again.yaml"
    f.write_text(topo.to_yaml())
    assert yaml.safe_load(f.read_text()) == base()
    assert len(topology.load(f).vms) == 3
