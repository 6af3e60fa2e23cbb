"""Configuration validation: good configs load, bad ones fail with one clear line naming the field."""
import pytest

from core_helpers import server_dict
from vrouter.core.codec.ipv4 import ip_to_int
from vrouter.core.config import ConfigError, VrouterConfig
from vrouter.core.fib import Fib
from vrouter.core.policy import CompiledPolicy


def test_example_config_loads_with_defaults():
    cfg = VrouterConfig.from_dict(server_dict("srv1"))
    assert cfg.flow.capacity == 65536 and cfg.flow.idle_timeout == 180.0 and cfg.flow.hold_queue == 3
    assert cfg.flow.mode == "proactive" and "10.0.2.1" in cfg.peers
    minimal = VrouterConfig.from_dict({"underlay_ip": "10.0.1.1",
                                       "networks": [{"name": "n", "id": 16, "subnets": ["10.1.0.0/16"]}]})
    assert minimal.network("n").gateway == ip_to_int("10.1.0.1")


def _with(path, value):
    d = server_dict("srv1")
    target = d
    for part in path[:-1]:
        target = target[part]
    if value is KeyError:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return d


BAD = [
    (("encapsulation",), "gre", "encapsulation"),
    (("underlay_ip",), "10.0.1", "underlay_ip"),
    (("networks", 0, "id"), 5, "networks[0].id"),
    (("networks", 1, "name"), "red", "networks[1].name"),
    (("networks", 0, "subnets"), ["192.168.1.1/24"], "host bits"),
    (("networks", 0, "gateway"), "10.0.0.1", "networks[0].gateway"),
    (("vifs", 0, "mac"), "02:00", "vifs[0].mac"),
    (("vifs", 0, "ip"), "10.9.9.9", "vifs[0].ip"),
    (("vifs", 0, "network"), "green", "vifs[0].network: unknown virtual network 'green'"),
    (("routes", 0, "nexthop"), {"type": "teleport"}, "routes[0].nexthop.type"),
    (("routes", 0, "nexthop"), {"type": "vif", "vif": "nope"}, "unknown vif"),
    (("routes", 0, "nexthop"), {"type": "vif", "vif": "tr-blue1"}, "belongs to network"),
    (("routes", 0, "nexthop", "label"), 2 ** 21, "routes[0].nexthop.label"),
    (("routes", 0, "prefix"), "192.168.1.12", "routes[0].prefix"),
    (("policies",), [{"network": "red", "rules": [{"action": "maybe"}]}], "rules[0].action"),
    (("policies",), [{"network": "red", "rules": [{"action": "deny", "dst_port": "99999"}]}], "dst_port"),
    (("policies",), [{"network": "red", "rules": [{"action": "deny", "protocol": "icmp", "dst_port": 1}]}],
     "ports need protocol"),
    (("policies",), [{"network": "red", "default": "perhaps"}], "default"),
    (("flow", "mode"), "eager", "flow.mode"),
    (("flow", "capacity"), 0, "flow.capacity"),
    (("flow", "idle_timeout"), -1, "flow.idle_timeout"),
    (("flow", "colour"), "red", "flow.colour: unknown key"),
    (("typo_field",), 1, "typo_field: unknown key"),
]


@pytest.mark.parametrize("path,value,needle", BAD, ids=[b[2] for b in BAD])
def test_bad_config_raises_one_line_config_error(path, value, needle):
    with pytest.raises(ConfigError) as exc:
        VrouterConfig.from_dict(_with(path, value))
    msg = str(exc.value)
    assert needle in msg and "\n" not in msg


def test_a_missing_mac_names_its_field_once():
    with pytest.raises(ConfigError) as exc:
        VrouterConfig.from_dict(_with(("vifs", 0, "mac"), None))
    assert str(exc.value) == "vifs[0].mac: None is not a MAC address like 02:00:00:00:00:01"


def test_not_a_mapping():
    with pytest.raises(ConfigError, match="mapping"):
        VrouterConfig.from_dict(["nope"])


def test_fib_longest_prefix_match():
    fib = Fib()
    fib.add(0, 0, "default")
    fib.add(ip_to_int("10.0.0.0"), 8, "ten")
    fib.add(ip_to_int("10.1.0.0"), 16, "ten-one")
    fib.add(ip_to_int("10.1.2.3"), 32, "host")
    assert fib.lookup(ip_to_int("10.1.2.3")) == "host"
    assert fib.lookup(ip_to_int("10.1.2.4")) == "ten-one"
    assert fib.lookup(ip_to_int("10.200.0.1")) == "ten"
    assert fib.lookup(ip_to_int("11.0.0.1")) == "default"
    assert len(fib) == 4 and fib.routes()[0][2] == "host"
    empty = Fib()
    assert empty.lookup(1) is None


def test_policy_first_match_wins_then_default():
    d = server_dict("srv1", policies=[{"network": "red", "default": "deny", "rules": [
        {"action": "deny", "protocol": "tcp", "dst": "192.168.1.12/32", "dst_port": "20-22"},
        {"action": "allow", "protocol": "tcp", "src": "192.168.1.0/24"},
        {"action": "allow", "protocol": "icmp"}]}])
    pol = CompiledPolicy(VrouterConfig.from_dict(d).policies[0])
    a, b = ip_to_int("192.168.1.11"), ip_to_int("192.168.1.12")
    assert pol.evaluate(6, a, b, 1000, 22) == (False, 0)
    assert pol.evaluate(6, a, b, 1000, 23) == (True, 1)
    assert pol.evaluate(1, a, b, 7, 7) == (True, 2)
    assert pol.evaluate(17, a, b, 1, 2) == (False, -1)
    assert CompiledPolicy(None).evaluate(17, a, b, 1, 2) == (True, -1)
