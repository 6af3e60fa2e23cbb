"""Fabric decisions checked against a fake fabric that executes the flow and group entries."""
import struct
import zlib

import pytest
from os_ken.ofproto import ofproto_parser, ofproto_v1_3, ofproto_v1_3_parser

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

    def arp(self, leaf, frame):
        """Runs an ARP frame (a dict of OXM fields) through a leaf's flows: (out port, frame) or None."""
        entry = next(f for f in self.flows[leaf["dpid"]] if all(frame.get(k) == v for k, v in f.match))
        frame, out = dict(frame), None
        for action in entry.actions:
            if action[0] == "move":
                frame[action[2]] = frame[action[1]]
            elif action[0] == "set":
                frame[action[1]] = action[2]
            elif action[0] == "in_port":
                out = frame["in_port"]
            else:
                raise AssertionError(f"an ARP flow does {action!r}")
        return None if out is None else (out, frame)

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


def arp_request(fake, src, tpa, spa=None, eth_dst="ff:ff:ff:ff:ff:ff", op=1):
    """An ARP frame from server `src` as the fields a leaf matches and rewrites (OXM names)."""
    srv = next(s for s in fake.desc["servers"] if s["name"] == src)
    return {"in_port": srv["leaf_port"], "eth_type": 0x0806, "eth_src": srv["mac"], "eth_dst": eth_dst,
            "arp_op": op, "arp_sha": srv["mac"], "arp_spa": srv["ip"] if spa is None else spa,
            "arp_tha": "00:00:00:00:00:00", "arp_tpa": tpa}


def leaf_of(fake, src):
    return fake.by_name[next(s for s in fake.desc["servers"] if s["name"] == src)["leaf"]]


def test_every_server_gets_the_real_mac_of_every_other_from_its_leaf():
    desc, logic, fake = make(2, 3, 2)
    for a in desc["servers"]:
        for b in desc["servers"]:
            if a is b:
                continue
            req = arp_request(fake, a["name"], b["ip"])
            port, reply = fake.arp(leaf_of(fake, a["name"]), req)
            assert port == a["leaf_port"], (a["name"], b["name"])  # back out of the asker's port
            assert reply == {**req, "eth_src": b["mac"], "eth_dst": a["mac"], "arp_op": 2,
                             "arp_sha": b["mac"], "arp_spa": b["ip"], "arp_tha": a["mac"], "arp_tpa": a["ip"]}


def test_a_unicast_probe_of_a_known_neighbour_is_answered_too():
    # Linux re-confirms a stale entry with requests sent to the cached MAC (ucast_probes) first.
    desc, logic, fake = make()
    req = arp_request(fake, "srv1", "10.0.2.1", eth_dst="02:00:0a:00:02:01")
    port, reply = fake.arp(leaf_of(fake, "srv1"), req)
    assert port == req["in_port"] and reply["arp_op"] == 2 and reply["arp_sha"] == "02:00:0a:00:02:01"
    assert reply["eth_dst"] == "02:00:0a:00:01:01"


@pytest.mark.parametrize("src, kw", [
    ("srv1", {"tpa": "10.0.9.9"}),                        # no server has it
    ("srv1", {"tpa": "10.0.1.1"}),                        # gratuitous: about itself
    ("srv1", {"tpa": "10.0.1.1", "spa": "0.0.0.0"}),      # address conflict probe
    ("srv3", {"tpa": "10.0.1.1", "op": 2}),               # a reply, not a request
])
def test_arp_the_fabric_cannot_answer_is_dropped_in_the_leaf(src, kw):
    desc, logic, fake = make()
    assert fake.arp(leaf_of(fake, src), arp_request(fake, src, **kw)) is None


@pytest.mark.parametrize("shape", [(2, 2, 2), (2, 8, 4), (1, 3, 2)])
def test_no_entry_needs_the_controller(shape):
    """Nothing is sent to the controller: the data plane works with the controller stopped."""
    desc, logic, fake = make(*shape)
    for dpid in fake.sw:
        for f in logic.flows(dpid):
            assert all(a[0] != "controller" for a in f.actions), f
    for leaf in logic.leaves:
        answered = {f.match_dict["arp_tpa"] for f in logic.flows(leaf["dpid"]) if f.actions
                    and f.match_dict.get("arp_op") == 1}
        assert answered == {s["ip"] for s in desc["servers"]}


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
    miss = next(m for m, f in zip(msgs, flows, strict=True) if f.priority == 0)
    assert miss.instructions == []
    # the ARP responder as the switch will read it: decode what was encoded
    flow, msg = next((f, m) for m, f in zip(msgs, flows, strict=True)
                     if f.match_dict.get("arp_tpa") == "10.0.2.1" and f.actions)
    back = ofproto_parser.msg(dp, ofproto_v1_3.OFP_VERSION, msg.msg_type, msg.msg_len, msg.xid, bytes(msg.buf))
    acts = back.instructions[0].actions
    got = []
    for a in acts:
        if isinstance(a, ofproto_v1_3_parser.NXActionRegMove):
            got.append(("move", a.src_field, a.dst_field, a.n_bits))
        elif isinstance(a, ofproto_v1_3_parser.OFPActionSetField):
            got.append(("set", a.key, a.value))
        else:
            got.append(("output", a.port))
    assert got == [("move", "eth_src", "eth_dst", 48), ("set", "eth_src", "02:00:0a:00:02:01"),
                   ("set", "arp_op", 2), ("move", "arp_sha", "arp_tha", 48),
                   ("set", "arp_sha", "02:00:0a:00:02:01"), ("move", "arp_spa", "arp_tpa", 32),
                   ("set", "arp_spa", "10.0.2.1"), ("output", ofproto_v1_3.OFPP_IN_PORT)]
    assert dict(back.match.items()) == {"eth_type": 0x0806, "arp_op": 1, "arp_tpa": "10.0.2.1"}
