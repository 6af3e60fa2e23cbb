"""The forwarder's offload glue without root: VM MTU per encapsulation, GSO sends vs the MPLSoGRE /
gso-off fallback (what reaches the tunnel layer), the MSS of frames released by install, the
statistics, and the introspection `set` request."""
import argparse

import pytest

from core_helpers import server
from offload_helpers import FakeTunnels, prefix, tcp_ip
from vrouter.core import gso
from vrouter.core.actions import ToTunnel
from vrouter.core.offload import OVERHEAD, Offloads, vm_mtu
from vrouter.processes.introspect import Introspector
from vrouter.processes.launch import switch_value


@pytest.mark.parametrize("encap,mtu", [("mplsoudp", 1468), ("mplsogre", 1472), ("vxlan", 1450)])
def test_vm_mtu_leaves_room_for_the_tunnel(encap, mtu):
    assert vm_mtu(server("srv1", encap=encap)) == mtu == 1500 - OVERHEAD[encap]


def super_frame(n=10, mss=1400):
    data = bytes(range(256)) * (n * mss // 256 + 1)
    return tcp_ip(data[:n * mss], seq=5000, flags="PA")


def test_udp_super_frame_is_one_gso_burst_and_gre_falls_back_to_one_send_per_segment():
    ip = super_frame()
    off = Offloads()
    for encap in ("mplsoudp", "vxlan", "mplsogre"):
        t = FakeTunnels()
        off.send_split(t, ToTunnel("10.0.2.1", encap, 50000, prefix(encap) + ip), 1400)
        expected = gso.segments(prefix(encap), ip, 1400)
        assert len(expected) == 10
        if encap == "mplsogre":
            assert t.gso == [] and [s[3] for s in t.sent] == expected
            assert {s[:3] for s in t.sent} == {("10.0.2.1", "mplsogre", 50000)}
        else:
            assert t.sent == []
            (peer, enc, sport, buf, chunk, n), = t.gso
            assert (peer, enc, sport, n) == ("10.0.2.1", encap, 50000, 10)
            assert [buf[o:o + chunk] for o in range(0, len(buf), chunk)] == expected
    c = off.counters
    assert (c["gso_super_frames"], c["gso_segments"], c["fallback_super_frames"], c["fallback_segments"]) == \
        (2, 20, 1, 10)


def test_gso_switch_off_sends_packet_by_packet():
    off = Offloads(gso=False)
    t = FakeTunnels()
    off.send_split(t, ToTunnel("10.0.2.1", "mplsoudp", 50000, prefix("mplsoudp") + super_frame(3)), 1400)
    assert t.gso == [] and len(t.sent) == 3


def test_malformed_super_frame_is_counted_not_raised():
    off = Offloads()
    t = FakeTunnels()
    off.send_split(t, ToTunnel("10.0.2.1", "mplsoudp", 50000, prefix("mplsoudp") + b"\x45" + bytes(10)), 1400)
    assert t.sent == t.gso == [] and off.counters["gso_malformed"] == 1


def test_released_super_frame_is_cut_at_the_vm_mss():
    off = Offloads()
    off.mtu = 1468
    payload = prefix("mplsoudp") + super_frame(4, 1428)
    assert off.released_mss("mplsoudp", payload) == 1468 - 40
    assert off.released_mss("mplsoudp", prefix("mplsoudp") + tcp_ip(b"x" * 1000)) == 0


def test_stats_histogram_and_averages():
    off = Offloads()
    for nsegs, count in ((1, 4), (2, 1), (9, 2), (40, 1), (70, 1)):
        off.hist[nsegs] += count
    s = off.stats({"tx_gso_sends": 4, "tx_gso_segments": 90})
    assert s["gro"]["histogram"] == {"1": 4, "2-3": 1, "4-7": 0, "8-15": 2, "16-31": 0, "32-63": 1, "64+": 1}
    assert s["gro"]["deliveries"] == 9 and s["gro"]["segments"] == 4 + 2 + 18 + 40 + 70
    assert s["gro"]["segments_per_delivery"] == round(134 / 9, 2)
    assert s["gso"]["segments_per_send"] == 22.5


def test_switch_argument():
    assert switch_value("on") is True and switch_value("off") is False
    with pytest.raises(argparse.ArgumentTypeError, match="give on or off, not 'yes'"):
        switch_value("yes")


class FakeForwarder:
    def __init__(self):
        self.calls = []

    def set_offloads(self, **kw):
        self.calls.append(kw)
        return {"gro": kw.get("gro", True), "gso": kw.get("gso", True)}

    def set_priority(self, n):
        self.calls.append({"rt_priority": n})
        return {"rt_priority": n}

    def set_warm(self, us):
        self.calls.append({"warm_us": us})
        return {"warm_us": us}


def test_set_request_checks_its_arguments():
    fwd = FakeForwarder()
    intro = Introspector(fwd)
    assert intro.handle({"op": "set", "gro": False}) == {"ok": True, "result": {"gro": False, "gso": True}}
    assert fwd.calls == [{"gro": False}]
    assert intro.handle({"op": "set", "gso": 1})["error"] == "set: gso must be true or false, got 1"
    assert intro.handle({"op": "set"})["error"] == \
        "set: give gro and/or gso (true or false), spin_us, defer_us or warm_us (microseconds), rt_priority (0..99)"
    assert intro.handle({"op": "set", "spin_us": -5})["error"] == "set: spin_us must be 0..10000 microseconds, got -5"
    assert intro.handle({"op": "set", "spin_us": True})["error"].startswith("set: spin_us must be")
    assert intro.handle({"op": "set", "defer_us": 20_000})["error"] == \
        "set: defer_us must be 0..10000 microseconds, got 20000"
    assert intro.handle({"op": "set", "defer_us": 250})["result"]["coalesce"]["defer_us"] == 250
    assert fwd.coalesce.delay == 250e-6
    assert fwd.calls == [{"gro": False}]


def test_set_checks_the_loops_priority_and_keep_warm():
    fwd = FakeForwarder()
    intro = Introspector(fwd)
    assert intro.handle({"op": "set", "rt_priority": 7}) == {"ok": True, "result": {"priority": {"rt_priority": 7}}}
    for bad in (100, -1, True, 1.5, "1"):
        assert intro.handle({"op": "set", "rt_priority": bad})["error"] == \
            f"set: rt_priority must be a whole number 0..99, got {bad!r}"
    assert intro.handle({"op": "set", "warm_us": 500}) == {"ok": True, "result": {"warm": {"warm_us": 500}}}
    assert intro.handle({"op": "set", "warm_us": 20_000})["error"] == \
        "set: warm_us must be 0..10000 microseconds, got 20000"
    assert intro.handle({"op": "set", "warm_us": False})["error"].startswith("set: warm_us must be")
    assert fwd.calls == [{"rt_priority": 7}, {"warm_us": 500}]
