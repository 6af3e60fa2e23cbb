"""Flow records (vrouter/core/flowrecords.py): one record per ended pair with both directions' counts,
each end reason, the decision and its rule, the bound and its loss counter, refusals aggregated."""
import argparse

import pytest

from controllers.vnc_model import VncModel
from controllers.vnc_records import set_records
from core_helpers import VM1, VM2, VM3, VM3_MAC, Pair, server, server_dict, udp_frame
from test_core_flood import topology
from test_core_pressure import reply_in, udp_in, udp_out
from test_core_pressure import setup as pressure_setup
from test_core_tcpstate import ISN1, ISN2, handshake, seg, send
from testbed import cmd_records
from vrouter.core import flowrecords, schema
from vrouter.core.codec.l4 import TCP_ACK, TCP_FIN
from vrouter.core.config import ConfigError, VrouterConfig
from vrouter.core.flowrecords import FlowRecords
from vrouter.core.pipeline import Pipeline
from vrouter.core.slowpath import SlowPath
from vrouter.io.control import VncError

UDP_IP = 20 + 8 + 1         # IPv4 + UDP headers + the helpers' one-byte payload


def setup(**flow):
    return pressure_setup(**{"records": True, **flow})


def pair(**flow):
    return Pair(flow={"records": True, **flow})


def drained(pipe):
    return pipe.table.records.drain()


def test_udp_pair_aged_idle_with_both_directions_counted():
    pipe, slow = setup(idle_timeout=5.0)
    for i in range(3):
        udp_out(pipe, slow, 4000, now=0.1 * i)
    reply_in(pipe, 4000, now=0.5)
    reply_in(pipe, 4000, now=0.6)
    assert pipe.expire(3.0) == 0 and drained(pipe) == []          # still live: no record
    assert pipe.expire(6.0) == 2
    (r,) = drained(pipe)
    assert (r["network"], r["proto"], r["src"], r["dst"], r["sport"], r["dport"]) == ("red", "udp", VM1, VM2, 4000, 53)
    assert (r["packets"], r["bytes"], r["rpackets"], r["rbytes"]) == (3, 3 * UDP_IP, 2, 2 * UDP_IP)
    assert (r["start"], r["end"]) == (0.0, 0.6)
    assert (r["decision"], r["rule"], r["rdecision"], r["end_reason"]) == ("allow", -1, "allow", "idle_timeout")
    assert r["vif"] == "tr-red1"


def test_unreplied_pair_ends_by_the_unreplied_timeout():
    pipe, slow = setup(unreplied_timeout=2.0)
    udp_out(pipe, slow, 4001)
    pipe.expire(3.0)
    (r,) = drained(pipe)
    assert (r["end_reason"], r["packets"], r["rpackets"]) == ("unreplied_timeout", 1, 0)


def test_tcp_teardown_at_both_vrouters_with_the_forward_direction_first_seen():
    p = pair(closed_linger=2.0)
    handshake(p)                                                   # 2 segments each way
    send(p, 1, seg(1, TCP_FIN | TCP_ACK, ISN1 + 1, ISN2 + 1))
    send(p, 2, seg(2, TCP_FIN | TCP_ACK, ISN2 + 1, ISN1 + 2))
    send(p, 1, seg(1, TCP_ACK, ISN1 + 2, ISN2 + 2))
    for srv, pipe in p.pipe.items():
        assert pipe.expire(2.5) == 2
        (r,) = drained(pipe)
        assert (r["src"], r["sport"], r["dst"], r["dport"]) == (VM1, 40000, VM2, 80), srv   # VM1 opened it
        assert (r["packets"], r["rpackets"], r["tcp_state"], r["end_reason"]) == (4, 3, "closed", "tcp_closed")
        assert r["bytes"] == 4 * 40 and r["rbytes"] == 3 * 40


def test_unfinished_close_ends_by_the_close_timeout():
    p = pair(close_timeout=1.0)
    handshake(p)
    send(p, 1, seg(1, TCP_FIN | TCP_ACK, ISN1 + 1, ISN2 + 1))
    send(p, 2, seg(2, TCP_FIN | TCP_ACK, ISN2 + 1, ISN1 + 1))      # FIN both ways, neither acknowledged
    pipe = p.pipe["srv1"]
    pipe.expire(1.5)
    assert [r["end_reason"] for r in drained(pipe)] == ["tcp_close_timeout"]


def test_denied_flow_carries_the_rule_that_denied_it():
    rules = [{"action": "allow", "protocol": "tcp"}, {"action": "deny", "dst": VM2 + "/32"}]
    cfg = server("srv1", flow={"records": True}, policies=[{"network": "red", "rules": rules}])
    pipe, slow = Pipeline(cfg), SlowPath(cfg)
    udp_out(pipe, slow, 4002)
    udp_out(pipe, slow, 4002, now=0.5)
    pipe.expire(20.0)
    (r,) = drained(pipe)
    assert (r["decision"], r["rule"], r["reason"], r["packets"]) == ("deny", 1, "policy_deny", 2)


def test_eviction_is_an_end_reason():
    pipe, slow = setup(capacity=4, vm_flow_limit=8, network_flow_limit=8)
    udp_out(pipe, slow, 1)
    udp_out(pipe, slow, 2)
    udp_out(pipe, slow, 3, now=1.0)                                 # the table is full: the oldest unreplied goes
    assert [(r["sport"], r["end_reason"]) for r in drained(pipe)] == [(1, "evicted")]


def test_a_stale_setup_queue_request_is_an_end_reason():
    pipe, _ = setup()
    pipe.from_vif("tr-red1", udp_frame(VM1, VM2, 10, 53), 20.0)
    pipe.take_punts(23.0)                                           # waited longer than hold_timeout
    assert [r["end_reason"] for r in drained(pipe)] == ["setup_queue_stale"]


def test_a_network_removed_by_a_new_config_flushes_its_pairs():
    pipe, slow = setup()
    udp_out(pipe, slow, 11)
    d = server_dict("srv1", flow={"records": True})
    d["networks"] = [n for n in d["networks"] if n["name"] != "red"]
    d["vifs"] = [v for v in d["vifs"] if v["network"] != "red"]
    d["routes"] = [r for r in d["routes"] if r["network"] != "red"]
    pipe.apply_config(VrouterConfig.from_dict(d))
    assert [(r["sport"], r["end_reason"]) for r in drained(pipe)] == [(11, "flush")]


def test_a_held_record_has_its_held_packets_and_decision_held():
    pipe, _ = setup()
    pipe.from_vif("tr-red1", udp_frame(VM1, VM2, 7, 53), 0.0)
    pipe.from_vif("tr-red1", udp_frame(VM1, VM2, 7, 53), 0.1)
    pipe.expire(5.0)
    (r,) = drained(pipe)
    assert (r["decision"], r["held_packets"], r["end_reason"]) == ("held", 2, "hold_timeout")


def test_refusals_are_aggregated_per_network_vif_and_reason():
    pipe, slow = setup(vm_flow_limit=2, capacity=64)
    udp_out(pipe, slow, 1, now=1.0)                                  # a proactive pair: 2 entries
    for i in range(5):
        udp_out(pipe, slow, 100 + i, now=2.0 + i)                    # refused: vm_flow_limit
    udp_out(pipe, slow, 200, vif="tr-red3", src=VM3, mac=VM3_MAC, now=3.0)      # another VM: admitted
    out = drained(pipe)
    (agg,) = [r for r in out if r["kind"] == "refused"]
    assert (agg["network"], agg["vif"], agg["reason"], agg["flows"]) == ("red", "tr-red1", "vm_flow_limit", 5)
    assert (agg["start"], agg["end"]) == (2.0, 6.0)
    assert drained(pipe) == []                                       # an interval's aggregate, then none
    assert pipe.table.records.stats()["refusals"] == 5


def test_the_queue_is_bounded_and_counts_what_it_lost():
    pipe, slow = setup()
    pipe.table.records = FlowRecords(kept=3)
    for i in range(5):
        udp_out(pipe, slow, 10 + i)
    pipe.expire(100.0)
    rec = pipe.table.records
    out = rec.drain()
    assert [r["sport"] for r in out] == [12, 13, 14]                # the newest kept
    assert (rec.records, rec.lost) == (5, 2)


def test_records_off_records_nothing_and_shutdown_ends_live_pairs():
    pipe, slow = pressure_setup()                                    # the default: off
    assert pipe.table.records is None
    pipe, slow = setup(records=False)
    assert pipe.table.records is None
    udp_out(pipe, slow, 5)
    assert pipe.expire(100.0) == 2                                   # ageing unchanged
    pipe, slow = setup()
    udp_out(pipe, slow, 5)
    udp_in(pipe, slow, 6)                                            # from the fabric: charged to tr-red1
    rec = pipe.table.records
    rec.end_all(pipe.table, "shutdown")
    out = rec.drain()
    assert sorted((r["sport"], r["end_reason"]) for r in out) == [(5, "shutdown"), (6, "shutdown")]
    assert len(pipe.table) == 4                                      # recorded, not removed


def test_turning_records_on_and_off_keeps_or_drops_the_recorder():
    rec = FlowRecords()
    assert flowrecords.configured(rec, True) is rec
    assert flowrecords.configured(None, True) is not None
    assert flowrecords.configured(rec, False) is None


@pytest.mark.parametrize("value", ["yes", 1, None])
def test_the_records_setting_is_a_boolean(value):
    p = schema.Problems()
    schema.flow_settings(p, "flow", {"records": value})
    assert p.lines == [f"flow.records: expected true or false, got {value!r}"]
    with pytest.raises(ConfigError, match="flow.records: expected true or false"):
        server("srv1", flow={"records": value})


def test_every_end_reason_is_explained():
    assert all(isinstance(v, str) and v for v in flowrecords.END_REASONS.values())


# ---------------------------------------------------------------- run-time switch (testbed net records)

def test_the_vnc_switches_every_vrouters_records_and_keeps_it_in_its_state():
    m = VncModel(topology(), prefix="fr")
    assert not any(m.config_for(s)["flow"].get("records", False) for s in m.servers())
    assert set_records(m, True).servers == ("srv1", "srv2", "srv3")
    assert all(VrouterConfig.from_dict(m.config_for(s)).flow.records for s in m.servers())
    assert set_records(m, True).servers == ()                      # unchanged: nothing pushed
    fresh = VncModel(topology(), prefix="fr")
    fresh.restore(m.state())
    assert fresh.dump()["flow"]["records"] is True
    old = m.state()
    del old["flow_records"]                                        # saved before the switch existed
    fresh = VncModel(topology(), prefix="fr")
    fresh.restore(old)
    assert fresh.dump()["flow"].get("records", False) is False
    with pytest.raises(VncError, match=r"^flow.records: expected true or false, got 'yes'$"):
        set_records(m, "yes")
    set_records(m, False)
    assert not VrouterConfig.from_dict(m.config_for("srv1")).flow.records


def test_a_pushed_config_turns_a_running_pipelines_records_on_and_off():
    pipe, slow = pressure_setup()
    udp_out(pipe, slow, 5)
    on = VrouterConfig.from_dict({**pipe.config.to_dict(), "flow": {**pipe.config.to_dict()["flow"], "records": True}})
    pipe.apply_config(on)
    assert pipe.expire(100.0) == 2                                  # the pair live when records went on: recorded
    assert [r["sport"] for r in drained(pipe)] == [5]
    pipe.apply_config(VrouterConfig.from_dict({**on.to_dict(), "flow": {**on.to_dict()["flow"], "records": False}}))
    assert pipe.table.records is None
    udp_out(pipe, slow, 6, now=101.0)
    assert pipe.expire(300.0) == 2 and pipe.table.records is None


def test_net_records_parses_on_off_and_show():
    p = argparse.ArgumentParser()
    cmd_records._arguments(p)
    assert p.parse_args(["on"]).state == "on" and p.parse_args([]).state is None
    with pytest.raises(SystemExit):
        p.parse_args(["maybe"])
    assert cmd_records.describe(True) == "flow records on"
