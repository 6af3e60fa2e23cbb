"""Fabric decisions checked against a fake fabric that executes the flow and group entries."""
import struct
import zlib

import pytest
from os_ken.ofproto import ofproto_v1_3, ofproto_v1_3_parser

from controllers.fabric_logic import Bucket, FabricLogic, Group, group_spec
from controllers.vnc import to_messages
from testbed import fabric as fabric_desc
from testbed import generator, topology


class FakeFabric:
    """Runs packets through the entries FabricLogic produced, hop by hop, like OVS would.

    `cut` holds links that are physically down; the controller only learns of them through
    set_port, so tests can show what happens before and after it reacts.
    """

    def __init__(self, desc, logic):
        self.desc = desc
        self.logic = logic
        self.sw = {s["dpid"]: s for s in desc["switches"]}
        self.by_name = {s["name"]: s for s in desc["switches"]}
        self.cut = set()  # frozenset({switch name, peer name})
        self.reload()

    def reload(self):
        self.flows = {d: sorted(self.logic.flows(d), key=lambda f: -f.priority) for d in self.sw}
        self.groups = {d: {g.group_id: g for g in self.logic.groups(d)} for d in self.sw}

    def port_live(self, sw, port):
        info = sw["ports"][str(port)]
        return info["kind"] == "server" or frozenset((sw["name"], info["peer"])) not in self.cut

    def send(self, src, dst_ip, proto=6, sport=1234, dport=80):
        """Returns (delivered-to server name or None, list of switch names traversed)."""
        srv = next(s for s in self.desc["servers"] if s["name"] == src)
        sw, path = self.by_name[srv["leaf"]], []
        for _ in range(8):
            path.append(sw["name"])
            entry = next(f for f in self.flows[sw["dpid"]]
                         if all({"eth_type": 0x0800, "ipv4_dst": dst_ip}.get(k) == v for k, v in f.match))
            if not entry.actions:
                return None, path
            kind, arg = entry.actions[0]
            if kind == "group":
                group: Group = self.groups[sw["dpid"]][arg]
                live = [b for b in group.buckets if self.port_live(sw, b.watch_port)]
                if not live:
                    return None, path
                h = zlib.crc32(struct.pack("!4sBHH", bytes(map(int, dst_ip.split("."))), proto, sport, dport))
                port = live[h % len(live)].out_port
            else:
                port = arg
            info = sw["ports"][str(port)]
            if info["kind"] == "server":
                return info["peer"], path
            if frozenset((sw["name"], info["peer"])) in self.cut:
                return None, path
            sw = self.by_name[info["peer"]]
        raise AssertionError(f"forwarding loop: {path}")


def make(spines=2, leaves=2, per_leaf=2):
    topo = topology.from_dict(generator.leaf_spine(spines, leaves, per_leaf))
    desc = fabric_desc.describe(topo, "vt")
    logic = FabricLogic(desc)
    return desc, logic, FakeFabric(desc, logic)


def fail_link(desc, logic, fake, a, b, up=False):
    key = frozenset((a, b))
    if up:
        fake.cut.discard(key)
    else:
        fake.cut.add(key)
    for name, peer in ((a, b), (b, a)):
        sw = fake.by_name[name]
        port = next(int(p) for p, i in sw["ports"].items() if i.get("peer") == peer)
        logic.set_port(sw["dpid"], port, up)
    fake.reload()


@pytest.mark.parametrize("shape", [(2, 2, 2), (2, 8, 4), (3, 4, 1), (1, 3, 2)])
def test_all_pairs_reach_each_other(shape):
    desc, logic, fake = make(*shape)
    for a in desc["servers"]:
        for b in desc["servers"]:
            if a is not b:
                got, path = fake.send(a["name"], b["ip"])
                assert got == b["name"], (a["name"], b["name"], path)


def test_same_leaf_traffic_stays_on_the_leaf():
    desc, logic, fake = make()
    got, path = fake.send("srv1", "10.0.1.2")
    assert got == "srv2" and path == ["leaf1"]


def test_flows_across_leaves_spread_over_both_spines():
    desc, logic, fake = make()
    spines = {fake.send("srv1", "10.0.2.1", sport=p)[1][1] for p in range(40000, 40016)}
    assert spines == {"spine1", "spine2"}


def test_udp_source_port_alone_spreads_flows():
    desc, logic, fake = make()
    groups = logic.groups(fake.by_name["leaf1"]["dpid"])
    assert len(groups) == 1 and len(groups[0].buckets) == 2
    spines = {fake.send("srv1", "10.0.2.1", proto=17, sport=p, dport=6635)[1][1] for p in range(49152, 49168)}
    assert spines == {"spine1", "spine2"}


def test_remote_link_failure_is_invisible_to_watch_port_until_controller_reacts():
    desc, logic, fake = make()
    fake.cut.add(frozenset(("spine1", "leaf2")))  # physically down, controller not told yet
    outcomes = {fake.send("srv1", "10.0.2.1", sport=p)[0] for p in range(40000, 40032)}
    assert None in outcomes  # some flows still hashed onto spine1 and are lost
    fail_link(desc, logic, fake, "spine1", "leaf2")
    for p in range(40000, 40032):
        got, path = fake.send("srv1", "10.0.2.1", sport=p)
        assert got == "srv3" and path[1] == "spine2"


def test_link_failure_reroutes_and_recovery_restores_ecmp():
    desc, logic, fake = make(2, 4, 2)
    fail_link(desc, logic, fake, "leaf1", "spine2")
    for srv in desc["servers"]:
        if srv["leaf"] != "leaf1":
            for p in range(40000, 40008):
                got, path = fake.send("srv1", srv["ip"], sport=p)
                assert got == srv["name"] and "spine2" not in path
    # other leaves must also avoid spine2 to reach leaf1
    for p in range(40000, 40008):
        got, path = fake.send("srv3", "10.0.1.1", sport=p)
        assert got == "srv1" and path[1] == "spine1"
    fail_link(desc, logic, fake, "leaf1", "spine2", up=True)
    spines = {fake.send("srv1", "10.0.2.1", sport=p)[1][1] for p in range(40000, 40016)}
    assert spines == {"spine1", "spine2"}


def test_group_loses_bucket_only_for_the_affected_destination():
    desc, logic, fake = make(2, 3, 1)
    leaf1 = fake.by_name["leaf1"]["dpid"]
    fail_link(desc, logic, fake, "spine1", "leaf2")
    groups = {g.group_id: len(g.buckets) for g in logic.groups(leaf1)}
    assert groups == {2: 1, 3: 2}


def test_set_port_reports_change_once_and_ignores_unknown_ports():
    desc, logic, fake = make()
    dpid = fake.by_name["leaf1"]["dpid"]
    assert logic.set_port(dpid, 1, False) is True
    assert logic.set_port(dpid, 1, False) is False
    assert logic.set_port(dpid, 1, True) is True
    assert logic.set_port(dpid, 99, False) is False
    assert logic.set_port(0xdead, 1, False) is False


def arp_request(sha, spa, tpa):
    mac = bytes.fromhex(sha.replace(":", ""))
    return (b"\xff" * 6 + mac + b"\x08\x06" + struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1)
            + mac + bytes(map(int, spa.split("."))) + b"\x00" * 6 + bytes(map(int, tpa.split("."))))


def test_arp_reply_carries_the_real_target_mac():
    desc, logic, fake = make()
    req = arp_request("02:00:0a:00:01:01", "10.0.1.1", "10.0.2.1")
    reply = logic.arp_reply(req)
    assert reply[:6] == bytes.fromhex("02000a000101")
    assert reply[6:12] == bytes.fromhex("02000a000201")
    op, sha, spa, tha, tpa = struct.unpack_from("!H6s4s6s4s", reply, 20)
    assert op == 2 and sha == bytes.fromhex("02000a000201") and spa == bytes([10, 0, 2, 1])
    assert tha == bytes.fromhex("02000a000101") and tpa == bytes([10, 0, 1, 1])


@pytest.mark.parametrize("frame", [
    arp_request("02:00:0a:00:01:01", "10.0.1.1", "10.0.9.9"),   # unknown target
    arp_request("02:00:0a:00:01:01", "10.0.1.1", "10.0.1.1"),   # gratuitous
    arp_request("02:00:0a:00:01:01", "192.0.2.1", "10.0.2.1"),  # sender outside the fabric
    b"\x00" * 20,                                              # truncated
])
def test_arp_reply_ignores_what_it_should_not_answer(frame):
    desc, logic, fake = make()
    assert logic.arp_reply(frame) is None


def test_fabric_description_ports_and_names():
    desc, logic, fake = make(2, 8, 4)
    names = [p["intf"] for s in desc["switches"] for p in s["ports"].values()]
    names += [s["intf"] for s in desc["servers"]]
    assert len(names) == len(set(names)) and all(n.startswith("vt-") and len(n) <= 15 for n in names)
    leaf1 = fake.by_name["leaf1"]
    assert {leaf1["ports"]["1"]["peer"], leaf1["ports"]["2"]["peer"]} == {"spine1", "spine2"}
    assert len({s["dpid"] for s in desc["switches"]}) == 10


@pytest.mark.parametrize("prefix", ["", "VT", "toolong", "1a", "a-b"])
def test_bad_prefix_is_rejected(prefix):
    with pytest.raises(fabric_desc.FabricError):
        fabric_desc.check_prefix(prefix)


def test_group_spec_hashes_the_5_tuple_in_the_datapath_and_watches_ports():
    spec = group_spec(Group(3, (Bucket(1, 1), Bucket(2, 2))))
    # dp_hash algorithm 0 is the IP 5-tuple (UDP ports included: tests/e2e/test_fabric_forwarding.py)
    assert spec.startswith("add_or_mod group_id=3,type=select,selection_method=dp_hash,selection_method_param=0,")
    assert "fields(" not in spec  # fields make OVS hash in the slow path: an upcall per new 5-tuple
    assert spec.endswith("bucket=bucket_id:0,watch_port:1,actions=output:1,"
                         "bucket=bucket_id:1,watch_port:2,actions=output:2")
    assert "bucket" not in group_spec(Group(4, ()))


def test_adapter_turns_flows_into_encodable_openflow13_messages():
    class FakeDatapath:
        ofproto, ofproto_parser, id = ofproto_v1_3, ofproto_v1_3_parser, 0x1001

        def set_xid(self, msg):
            msg.xid = 1

    desc, logic, fake = make()
    dp = FakeDatapath()
    flows = logic.flows(fake.by_name["leaf1"]["dpid"])
    msgs = to_messages(dp, flows)
    assert len(msgs) == len(flows)
    for m, f in zip(msgs, flows, strict=True):
        m.serialize()  # raises if a field cannot be encoded
        assert m.priority == f.priority and m.cookie != 0
        assert dict(m.match.items()) == f.match_dict
    arp = next(m for m, f in zip(msgs, flows, strict=True) if f.match_dict.get("eth_type") == 0x0806)
    assert arp.instructions[0].actions[0].port == ofproto_v1_3.OFPP_CONTROLLER
    miss = next(m for m, f in zip(msgs, flows, strict=True) if f.priority == 0)
    assert miss.instructions == []
