"""The bulk path's entries that spare a copy against the plain ones, side by side on two identical
vrouters: the same actions, the same frame bytes once joined, the same flow entries (packets, bytes,
TCP state, held packets) and counters.

- Merged GRO deliveries as head + tail against the joined payload: a hit to a VM, a miss held for
  the slow path, a DROP entry, a transit packet sent back into the fabric, inputs that do not fit,
  and the datapath's one writev.
- TAP reads routed in place behind their virtio_net_hdr (``from_vif(..., at)``) against the frame
  cut out: a hit to the fabric, a hit to a local VM, a miss, and the datapath's send."""
import collections
import socket

import pytest

from core_helpers import SRV1, SRV2, VM1, VM2, VM3, server, tcp_frame
from offload_helpers import FakeTunnels, joined, prefix, tcp_ip
from vrouter.core import gso
from vrouter.core.actions import Drop, ToTunnel, ToVif, ToVifParts
from vrouter.core.codec import virtio
from vrouter.core.codec.ipv4 import ip_to_int
from vrouter.core.codec.l4 import TCP_ACK, TCP_SYN
from vrouter.core.gro import Gro
from vrouter.core.offload import Offloads
from vrouter.core.pipeline import Pipeline
from vrouter.core.slowpath import SlowPath
from vrouter.processes.datapath import VNET_LEN, AgentLink, Datapath, VifPort

MSS = 1400
DENY_HTTP = [{"network": "red", "rules": [{"action": "deny", "protocol": "tcp", "dst_port": "80"}]}]
OTHER = "192.168.1.50"       # a source no server hosts: srv1 routes its packets to VM2 back into the fabric


def merged(nsegs=10, seq=1000, flags="A", encap="mplsoudp", src=VM1, dst=VM2):
    """One GRO merge of a coalesced read of the stream src -> dst:80: (head, tail, nsegs, gso_size, vnet)."""
    data = (bytes(range(256)) * (nsegs * MSS // 256 + 1))[:nsegs * MSS]
    buf, chunk, n = gso.segment(prefix(encap), tcp_ip(data, seq=seq, flags=flags, src=src, dst=dst), MSS)
    (d,) = Gro().batch(encap, buf, chunk)
    assert d[1] is not None and d[2] == n == nsegs
    return d


def pipes(name="srv2", **kw):
    """Two identical vrouters: one takes deliveries unjoined, the other joined."""
    return Pipeline(server(name, **kw)), Pipeline(server(name, **kw))


def establish(pipe, outer=SRV1, src=VM1, dst=VM2, name="srv2", **kw):
    """The flow's first packet (a SYN from the fabric) missed, punted and decided."""
    syn = prefix("mplsoudp") + tcp_ip(b"", seq=999, flags="S", src=src, dst=dst, partial=False)
    assert pipe.from_fabric(outer, "mplsoudp", syn, 0.0) == []
    (request,) = pipe.take_punts(0.0)
    return pipe.install(SlowPath(server(name, **kw)).decide(request, 0.0), 0.0)


def whole(actions):
    """Actions with every ToVif's frame joined: what reaches the VM."""
    return [ToVif(a.vif, a.frame + a.tail) if isinstance(a, ToVifParts) else a for a in actions]


def state(pipe):
    """Everything the pipeline keeps about its flows, comparable between two pipelines."""
    entries = sorted(
        (e.key, e.kind, e.reason, e.packets, e.bytes, e.tcp, e.fin_seq, e.last_used, e.wscale,
         None if e.tw is None else bytes(e.tw),
         [tuple(bytes(x) if isinstance(x, (bytes, bytearray, memoryview)) else x for x in h) for h in e.held])
        for e in pipe.table.entries.values())
    return entries, pipe.stats(), pipe.drop_stats()


def both(new, old, d, now=1.0, outer=SRV1, encap="mplsoudp"):
    """Deliver ``d`` to ``new`` unjoined and to ``old`` joined; return (new's actions, old's)."""
    head, tail = d[0], d[1]
    return (new.from_fabric(outer, encap, head, now, tail),
            old.from_fabric(outer, encap, joined(d)[0], now))


@pytest.mark.parametrize("encap", ["mplsoudp", "mplsogre", "vxlan"])
def test_a_hit_to_a_vm_is_decided_on_the_head_and_carries_the_data_apart(encap):
    new, old = pipes(encap=encap)
    for p in (new, old):
        establish(p, encap=encap)
    for i, flags in enumerate(("A", "PA", "A", "FA")):      # FIN: the TCP state reads the head's flags
        d = merged(seq=1000 + i * 10 * MSS, flags=flags, encap=encap)
        a, b = both(new, old, d, now=1.0 + i, encap=encap)
        (to_vm,) = a
        assert isinstance(to_vm, ToVifParts) and to_vm.tail == d[1] and len(to_vm.frame) == 14 + 40
        assert whole(a) == b and state(new) == state(old)
    fwd = new.table.entries[(100, 6, ip_to_int(VM1), ip_to_int(VM2), 40000, 80)]
    assert fwd.packets == 1 + 4 and fwd.bytes == 40 + 4 * (40 + 10 * MSS) and fwd.fin_seq >= 0


def test_a_miss_is_held_whole_and_released_like_a_joined_one():
    new, old = pipes()
    d = merged()
    a, b = both(new, old, d)
    assert a == b == []
    (held,) = next(e for e in new.table.entries.values() if e.held).held
    assert held[3] == joined(d)[0]                         # the slow path keeps every byte
    assert state(new) == state(old)
    (ra,), (rb,) = new.take_punts(1.0), old.take_punts(1.0)
    assert ra == rb
    slow = SlowPath(server("srv2"))
    released_new, released_old = new.install(slow.decide(ra, 1.0), 1.0), old.install(slow.decide(rb, 1.0), 1.0)
    assert released_new == released_old and type(released_new[0]) is ToVif       # whole, as it was held
    assert state(new) == state(old)


def test_a_drop_entry_drops_on_the_head_and_counts_like_a_joined_packet():
    new, old = pipes(policies=DENY_HTTP)
    for p in (new, old):
        assert establish(p, policies=DENY_HTTP) == [Drop("policy_deny")]
    a, b = both(new, old, merged())
    assert a == b == [Drop("policy_deny")]
    assert state(new) == state(old) and new.drop_stats()["policy_deny"] == 2


def test_a_transit_packet_back_into_the_fabric_is_joined_and_rewritten_as_before():
    new, old = pipes("srv1")
    for p in (new, old):
        establish(p, outer=SRV2, src=OTHER, name="srv1")
    a, b = both(new, old, merged(src=OTHER), outer=SRV2)
    (out,) = a
    assert isinstance(out, ToTunnel) and out.peer == SRV2 and a == b
    assert state(new) == state(old)


def test_inputs_that_do_not_fit_take_the_joined_path():
    new, old = pipes()
    for p in (new, old):
        establish(p)
    d = merged()
    short = (d[0], d[1][:-1], *d[2:])                      # IPv4 total length beyond the data
    for case, outer in ((short, SRV1), (d, "10.9.9.9")):   # ... and an outer source that is no peer
        a, b = both(new, old, case, outer=outer)
        assert a == b and isinstance(a[0], Drop)
    assert state(new) == state(old)
    assert new.drop_stats()["invalid_source"] == 1


# ---------------------------------------------------------------- the shell's write
def test_the_datapath_writes_a_merge_as_one_frame_without_joining_it():
    config = server("srv2")
    dp = Datapath(AgentLink(collections.Counter(), lambda _s, _e: None), Offloads(), clock=lambda: 1.0)
    dp.configure(config)
    old = Pipeline(config)
    for p in (dp.pipeline, old):
        establish(p)
    vm, tap_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    tap_end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
    port = dp.vifs["tr-red2"] = VifPort(None, [tap_end.fileno()], None)
    try:
        data = bytes(range(256)) * 55
        buf, chunk, _ = gso.segment(prefix("mplsoudp"), tcp_ip(data[:10 * MSS]), MSS)
        dp.from_reads([(SRV1, "mplsoudp", buf, chunk)])
        written = vm.recv(1 << 17)
        (d,) = Gro().batch("mplsoudp", buf, chunk)
        (expected,) = old.from_fabric(SRV1, "mplsoudp", joined(d)[0], 1.0)
        assert written == d[4] + expected.frame
        assert port.counters["tx_packets"] == 1 and port.counters["tx_bytes"] == len(written) - VNET_LEN
        assert state(dp.pipeline) == state(old)
    finally:
        vm.close()
        tap_end.close()


# ---------------------------------------------------------------- TAP reads in place
def tap_read(frame, mss=0):
    """A TAP read: virtio_net_hdr (TCPV4 with gso_size ``mss`` if given) + the frame."""
    return (virtio.tcpv4_gso(14, 20, 20, mss) if mss else virtio.PLAIN) + frame


def test_a_tap_read_is_routed_in_place_like_the_frame_cut_out():
    """To the fabric and to a local VM, each flow's first packet missing and the next one hitting,
    and a frame too short to parse: the same actions and entries as for the frame alone."""
    new, old = pipes("srv1")
    slow = SlowPath(server("srv1"))
    data = bytes(range(256)) * 200
    frames = [tcp_frame(VM1, VM2, 40000, 80, TCP_SYN), tcp_frame(VM1, VM2, 40000, 80, TCP_ACK, payload=data, seq=1),
              tcp_frame(VM1, VM3, 40001, 80, TCP_SYN), tcp_frame(VM1, VM3, 40001, 80, TCP_ACK, payload=data, seq=1),
              b"short"]
    kinds = []
    for frame in frames:
        a = new.from_vif("tr-red1", tap_read(frame), 1.0, VNET_LEN)
        b = old.from_vif("tr-red1", frame, 1.0)
        for p, acts in ((new, a), (old, b)):
            for request in p.take_punts(1.0):          # a miss: held, decided, released as a plain frame
                acts += p.install(slow.decide(request, 1.0), 1.0)
        assert a == b, frame[:60]
        assert state(new) == state(old)
        kinds.append(type(a[0]).__name__)
    assert kinds == ["ToTunnel", "ToTunnel", "ToVif", "ToVif", "Drop"]


def test_the_datapath_sends_a_super_frame_read_in_place():
    config = server("srv1")
    dp = Datapath(AgentLink(collections.Counter(), lambda _s, _e: None), Offloads(), clock=lambda: 1.0)
    dp.configure(config)
    dp.sender = FakeTunnels()
    old = Pipeline(config)
    syn = tcp_frame(VM1, VM2, 40000, 80, TCP_SYN)
    for p in (dp.pipeline, old):
        assert p.from_vif("tr-red1", syn, 0.0) == []
        (request,) = p.take_punts(0.0)
        p.install(SlowPath(config).decide(request, 0.0), 0.0)
    dp.sender.sent.clear()
    big = tcp_frame(VM1, VM2, 40000, 80, TCP_ACK, payload=bytes(range(256)) * 40, seq=1)
    dp.from_tap("tr-red1", [tap_read(big, MSS)])
    (tun,) = old.from_vif("tr-red1", big, 1.0)
    (peer, encap, sport, buf, chunk, n), = dp.sender.gso
    assert (peer, encap, sport) == (tun.peer, tun.encap, tun.sport)
    assert (buf, chunk, n) == gso.split_payload(encap, tun.payload, MSS)
    assert state(dp.pipeline) == state(old)
