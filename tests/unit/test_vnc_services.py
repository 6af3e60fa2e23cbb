"""The VNC model's services: composite routes in every config of the network, member VIFs' service
addresses, run-time changes refused at their first problem, persistence."""
import pytest

from controllers.vnc_model import VncError, VncModel
from test_vnc_model import overlapping_topology, routes_by
from vrouter.core.config import VrouterConfig

SVC = "192.168.1.100"


def model(members=("red1", "red2")):
    topo = overlapping_topology()
    topo["services"] = [{"name": "web", "network": "red", "address": SVC, "members": list(members)}]
    return VncModel(topo)


def composite(m, server):
    return routes_by(m.config_for(server))[("red", SVC + "/32")]


def test_every_server_of_the_network_routes_the_service_to_its_members():
    m = model()
    nh1 = composite(m, "srv1")
    assert nh1["type"] == "composite" and nh1["service"] == "web"
    assert [(x["member"], x["type"]) for x in nh1["members"]] == [("red1", "vif"), ("red2", "tunnel")]
    assert nh1["members"][1]["peer"] == "10.0.2.1"
    assert [x["type"] for x in composite(m, "srv2")["members"]] == ["tunnel", "vif"]
    vifs = {v["name"]: v for v in m.config_for("srv1")["vifs"]}
    assert vifs[m.vm("red1")["tap"]]["services"] == [SVC]
    assert "services" not in vifs[m.vm("blue1")["tap"]]
    for server in m.servers():
        VrouterConfig.from_dict(m.config_for(server))        # the vrouter accepts every one


def test_member_changes_reach_every_server_of_the_network():
    m = model()
    change = m.remove_service_member("web", "red2")
    assert set(change.servers) == {"srv1", "srv2"}
    assert [x["member"] for x in composite(m, "srv2")["members"]] == ["red1"]
    assert "services" not in m.config_for("srv2")["vifs"][0]
    m.add_service_member("web", "red2")
    assert [x["member"] for x in composite(m, "srv1")["members"]] == ["red1", "red2"]
    m.remove_service("web")
    assert ("red", SVC + "/32") not in routes_by(m.config_for("srv1"))


@pytest.mark.parametrize("change, message", [
    (lambda m: m.add_service("db", "red", "192.168.1.11", ["red1"]), "already used by VM 'red1'"),
    (lambda m: m.add_service("db", "red", SVC, ["red1"]), "already used by service 'web'"),
    (lambda m: m.add_service("web", "red", "192.168.1.101", ["red1"]), "duplicate name 'web'"),
    (lambda m: m.add_service("db", "red", "192.168.1.101", ["blue1"]), "is in network 'blue', not 'red'"),
    (lambda m: m.add_service("db", "red", "192.168.1.101", []), "non-empty list"),
    (lambda m: m.add_service_member("web", "red9"), "unknown VM 'red9'"),
    (lambda m: m.add_service_member("web", "red1"), "is a member already"),
    (lambda m: m.remove_service_member("web", "red9"), "is not a member"),
    (lambda m: m.remove_service("nope"), "unknown service 'nope'"),
    (lambda m: m.add_vm("red9", "red", "srv1", SVC), "already used by service 'web'"),
])
def test_bad_changes_are_refused_and_change_nothing(change, message):
    m = model()
    before = m.configs()
    with pytest.raises(VncError, match=message):
        change(m)
    assert m.configs() == before


def test_the_last_member_stays_until_the_service_goes():
    m = model(members=("red2",))
    with pytest.raises(VncError, match="last member"):
        m.remove_service_member("web", "red2")
    with pytest.raises(VncError, match="last member of service 'web'"):
        m.remove_vm("red2")
    m2 = model()
    m2.remove_vm("red2")            # a VM that goes leaves its services
    assert m2.services()[0]["members"] == ["red1"]


def test_services_survive_a_controller_restart():
    m = model()
    m.remove_service_member("web", "red1")
    again = model()
    again.restore(m.state())
    assert again.services() == m.services() and again.configs() == m.configs()
