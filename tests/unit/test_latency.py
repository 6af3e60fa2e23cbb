"""Issue 13's latency tools without root: the stamps' ICMP parsing and the round-trip breakdown
(vrouter/core/latency.py), the datapath that takes the stamps, the epoll poller, the spin budget."""
import collections
import os
import socket
import struct
import time
from selectors import EVENT_READ, EVENT_WRITE

import pytest

from core_helpers import VM1, VM2, Pair, icmp_frame
from offload_helpers import prefix, tcp_ip
from vrouter.core import latency
from vrouter.core.codec import virtio
from vrouter.core.gro import icmp_type, inner_proto
from vrouter.core.latency import LEGS, SEND_CALLS, Stamp, breakdown, echo, legs_of, ping_sent_ns
from vrouter.core.offload import Offloads
from vrouter.core.spin import Spin
from vrouter.io.poller import Poller
from vrouter.processes.datapath import AgentLink, Datapath, VifPort

NOW = 1_796_000_000 * 10**9


def ping_frame(ident, seq, sent_ns, type_=8):
    """An echo as iputils ping sends it: a struct timeval, then filler, in the data."""
    tv = struct.pack("<qq", sent_ns // 10**9, sent_ns % 10**9 // 1000) + bytes(range(40))
    return icmp_frame(VM1, VM2, ident=ident, seq=seq, type_=type_, payload=tv)


def test_echo_is_parsed_and_other_packets_are_not():
    f = ping_frame(77, 5, NOW)
    t, ident, seq, data = echo(f, 14)
    assert (t, ident, seq, data) == (8, 77, 5, 14 + 20 + 8)
    assert ping_sent_ns(f, data, NOW + 500_000) == NOW
    assert ping_sent_ns(f, data, NOW + 3600 * 10**9) == 0              # not a timestamp near the read
    assert echo(icmp_frame(VM1, VM2, type_=3), 14) is None               # unreachable: not an echo
    udp = bytearray(f)
    udp[14 + 9] = 17
    assert echo(bytes(udp), 14) is None
    assert echo(f[:30], 14) is None


def trip(ident, seq, base=NOW, wake=100_000):
    """The four stamps of one round trip, each stage `wake` ns after the last, 1 ms apart between hops."""
    ms = 1_000_000
    def st(server, ingress, t, start):
        return Stamp(server, ingress, t, ident, seq, start, start + wake, start + 2 * wake, start + 3 * wake,
                     start + 4 * wake)
    return [st("srv1", "vif", 8, base), st("srv3", "fabric", 8, base + ms), st("srv3", "vif", 0, base + 2 * ms),
            st("srv1", "fabric", 0, base + 3 * ms)]


def test_breakdown_joins_both_vrouters_stamps_into_the_legs_of_the_critical_path():
    stamps = trip(9, 1) + trip(9, 2) + trip(9, 3)[:2]       # the third trip never came back
    legs = legs_of("srv1", "srv3", stamps)
    assert set(legs[(9, 1)]) == set(LEGS + SEND_CALLS) and len(legs[(9, 3)]) < len(LEGS)
    b = breakdown("srv1", "srv3", stamps)
    assert b["round_trips"] == 2
    L = b["legs_us"]
    assert L["wake_vm_to_src"] == L["src_read"] == L["src_pipeline"] == L["src_send_call"] == 100.0
    assert L["send_fabric_out"] == 1000.0 - 300.0          # decided at +300 us, received at +1 ms
    assert L["vm_turnaround"] == 1000.0 - 400.0 + 100.0    # written at +1.4 ms, epoll back at +2.1 ms
    assert b["sum_us"] == pytest.approx(3000.0 + 400.0)    # VM sent -> the reply written to it
    assert b["vrouter_us"] == pytest.approx(b["sum_us"] - 2 * 700.0)
    assert breakdown("srv1", "srv3", trip(9, 1)[:3])["round_trips"] == 0
    assert breakdown("srv3", "srv1", stamps)["round_trips"] == 0  # srv3's VM did not ping


class Sent:
    def __init__(self):
        self.counters = {}
        self.sent = []

    def send(self, peer, encap, sport, payload):
        self.sent.append((peer, encap, sport, bytes(payload)))
        return True


def datapath_pair():
    pair = Pair()
    pair.send("srv1", "tr-red1", icmp_frame(VM1, VM2, ident=41, seq=1))     # both entries exist now
    dps = {}
    for name in ("srv1", "srv2"):
        dp = Datapath(AgentLink(collections.Counter(), lambda *a: None), Offloads())
        dp.pipeline, dp.config, dp.sender = pair.pipe[name], pair.cfg[name], Sent()
        dps[name] = dp
    return pair, dps


def test_a_stamping_datapath_stamps_each_echo_once_and_skips_gro_for_a_lone_icmp_read():
    pair, dps = datapath_pair()
    src, dst = dps["srv1"], dps["srv2"]
    r, w = os.pipe()
    dst.vifs["tr-red2"] = VifPort(pair.cfg["srv2"].vifs[0], [w], None)
    try:
        for dp in dps.values():
            dp.set_stamping(True)
            dp.woke_ns = time.time_ns()
        sent_at = time.time_ns() - 50_000
        src.from_tap("tr-red1", [virtio.PLAIN + ping_frame(41, 2, sent_at)])
        (peer, encap, _sport, payload), = src.sender.sent
        dst.from_reads([(pair.address["srv1"], encap, payload, 0)], [time.time_ns()])
        frame = os.read(r, 4096)
        assert frame[:virtio.HDR_LEN] == virtio.PLAIN and echo(frame, virtio.HDR_LEN + 14)[1:3] == (41, 2)
        (a,), (b,) = src.take_stamps(), dst.take_stamps()
        assert a[:5] == ("vif", 8, 41, 2, sent_at - sent_at % 1000)
        assert b[0:4] == ("fabric", 8, 41, 2) and all(b[4:])
        assert a[5] <= a[6] <= a[7] <= a[8]
        assert dst.offloads.gro.segments == 0 and dst.offloads.hist[1] == 1     # no GRO for the ping
        assert src.take_stamps() == []
        src.set_stamping(False)
        src.from_tap("tr-red1", [virtio.PLAIN + ping_frame(41, 3, sent_at)])
        assert src.stamps is None and len(src.sender.sent) == 2                 # off: forwarded, not stamped
    finally:
        os.close(r)
        os.close(w)


def test_poller_keeps_selectors_interface():
    p = Poller()
    a, b = socket.socketpair()
    try:
        key = p.register(a, EVENT_READ, ("sock", 1))
        assert p.select(0) == []
        b.send(b"x")
        (k, ev), = p.select(0)
        assert k is key and k.fileobj is a and k.data == ("sock", 1) and ev == EVENT_READ
        p.modify(a, EVENT_READ | EVENT_WRITE, ("sock", 2))
        (k, ev), = p.select(0)
        assert ev == EVENT_READ | EVENT_WRITE and k.data == ("sock", 2)
        with pytest.raises(KeyError):
            p.register(a, EVENT_READ)
        p.unregister(a)
        assert p.select(0) == [] and p.get_map() == {}
        with pytest.raises(KeyError):
            p.unregister(a)
    finally:
        a.close()
        b.close()
        p.close()


def test_spin_is_bounded_by_its_budget_per_second():
    s = Spin(50, budget=0.001)                  # 1 ms of every second
    assert s.deadline(10.0) == pytest.approx(10.0 + 50e-6)
    for _ in range(20):
        if s.deadline(10.0) is None:
            break
        s.spent(50e-6, False)
    assert s.deadline(10.5) is None and s.exhausted >= 1        # the budget is gone for this second
    assert s.deadline(11.0) is not None                        # a new second, a new budget
    assert Spin(0).deadline(1.0) is None and not Spin(0).enabled
    with pytest.raises(ValueError):
        Spin(-1)
    assert latency.VROUTER_LEGS and set(latency.VROUTER_LEGS) < set(LEGS)


def test_only_tcp_reads_wait_for_the_drain_to_merge():
    tcp = prefix("mplsoudp") + tcp_ip(b"x" * 100)
    ping = prefix("mplsoudp") + ping_frame(1, 1, NOW)[14:]
    assert inner_proto("mplsoudp", tcp) == 6 and inner_proto("mplsoudp", tcp * 2) == 6
    assert inner_proto("mplsoudp", ping) == 1
    assert inner_proto("mplsoudp", b"\x00" * 10) == 0
    pong = prefix("vxlan") + ping_frame(1, 1, NOW, type_=0)[14:]
    assert icmp_type("vxlan", pong) == 0 and icmp_type("mplsoudp", ping) == 8
    assert icmp_type("mplsoudp", ping[:24]) == -1           # cut short before the ICMP header
