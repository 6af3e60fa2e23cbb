"""The gateway topology (testbed/gateway.py, natschema): its checks, the VNC's NAT configs and
run-time changes, and the fabric's next-hop flows toward hosts' MACs."""
import copy

import pytest
import yaml

from controllers.fabric_logic import PRIO_NEXTHOP, FabricLogic
from controllers.vnc_model import VncError, VncModel
from testbed import REPO, fabric
from testbed.topology import TopologyError, from_dict

DOC = yaml.safe_load((REPO / "topologies" / "gateway.yaml").read_text())


def problems(**changes):
    doc = copy.deepcopy(DOC)
    for key, value in changes.items():
        if value is None:
            doc.pop(key, None)
        else:
            doc[key] = value
    with pytest.raises(TopologyError) as e:
        from_dict(doc)
    return e.value.problems


def test_the_gateway_topology_validates_and_describes_the_gateway_on_its_leaf():
    topo = from_dict(copy.deepcopy(DOC))
    assert topo.gateway.leaf == "leaf2" and topo.floating_ips == {"red1": "198.51.100.11"} and topo.snat == ["blue"]
    desc = fabric.describe(topo, "nt")
    gw = desc["gateway"]
    assert gw["leaf"] == "leaf2" and gw["intf"] == "nt-g0" and gw["hosts"][0]["intf"] == "nt-x1"
    flows = FabricLogic(desc).flows(next(s["dpid"] for s in desc["switches"] if s["name"] == "leaf1"))
    to_gw = [f for f in flows if f.priority == PRIO_NEXTHOP and f.match_dict.get("eth_dst") == gw["mac"]]
    assert len(to_gw) == 1 and to_gw[0].actions[0][0] == "group"


def test_gateway_section_problems_are_reported_at_their_place():
    gw = {**DOC["gateway"], "leaf": "spine1", "address": "10.0.1.1",
          "hosts": [{"name": "inet1", "address": "203.0.113.1"}]}
    out = problems(gateway=gw)
    assert "gateway.leaf: 'spine1' is not a leaf of this topology" in out
    assert "gateway.address: 10.0.1.1 is the address of server 'srv1'" in out
    assert any(p.startswith("gateway.hosts[0].address: 203.0.113.1 is the network's own") for p in out)


def test_floating_ip_and_snat_problems():
    assert problems(floating_ips=[{"vm": "red1", "address": "198.51.100.254"}]) == [
        "floating_ips[0].address: 198.51.100.254 is the SNAT address of server 'srv1'"]
    assert problems(floating_ips=[{"vm": "red9", "address": "198.51.100.12"}])[0].startswith(
        "floating_ips[0].vm: unknown VM")
    assert problems(snat=["blue", "blue"]) == ["snat[1]: network 'blue' is listed twice"]
    assert problems(gateway=None) == ["floating_ips: needs a gateway section (the way out of the virtual networks)",
                                      "snat: needs a gateway section (the way out of the virtual networks)"]


def test_vnc_gives_each_server_its_nat_and_changes_it_at_run_time():
    model = VncModel(copy.deepcopy(DOC), prefix="nt")
    nat = model.config_for("srv1")["nat"]
    assert nat["snat_address"] == "198.51.100.254" and nat["snat_networks"] == ["blue"]
    assert nat["floating_ips"] == [{"vif": "nt-t1", "address": "198.51.100.11"}]
    assert model.config_for("srv3")["nat"]["snat_address"] == "198.51.100.252"
    change = model.set_floating_ip("red3", "198.51.100.13")
    assert change.servers == ("srv3",)
    assert model.dump()["gateway_routes"]["198.51.100.13"] == "10.0.2.1"
    with pytest.raises(VncError, match="already the floating IP of VM 'red1'"):
        model.set_floating_ip("red3", "198.51.100.11")
    model.set_floating_ip("red3", None)
    assert "198.51.100.13" not in model.dump()["gateway_routes"]
    assert model.set_snat("red", True).servers == ("srv1", "srv3")
    with pytest.raises(VncError, match="no gateway section"):
        VncModel({k: v for k, v in DOC.items() if k not in ("gateway", "floating_ips", "snat")}).set_snat("red", True)
