"""Offloads of the multi-core vrouter without root: channel records that carry the virtio_net_hdr and
UDP_GRO segment size, batches bounded by MAX_BATCH_BYTES, steering of super-frames and coalesced
reads, a worker's GSO sends and GRO merges on its shard (flushed per batch), the GRO switch, the
counters summed over workers, and the workers' send errors judged like the forwarder's."""
import errno
import socket
from pathlib import Path

import pytest
import yaml

from offload_helpers import FakeTunnels, prefix, tcp_ip
from vrouter.core import gso, rps_channel
from vrouter.core.codec import ethernet, virtio
from vrouter.core.config import VROUTER_MAC, VrouterConfig
from vrouter.core.multicore import MulticoreConfig
from vrouter.core.offload import Offloads, averages
from vrouter.core.rps_route import Outbox, Router
from vrouter.core.slowpath import SlowPath
from vrouter.io import ipc, rps_kernel, tunnel
from vrouter.processes.datapath import VNET_LEN, VifPort
from vrouter.processes.dispatcher import _sum_into
from vrouter.processes.worker import Worker

CONFIG = yaml.safe_load((Path(__file__).parents[1] / "fixtures" / "replay-srv1.yaml").read_text())
VIF, VM_MAC, PEER, MSS = "tr-red1", bytes.fromhex("02000000010b"), "10.0.2.1", 1400


def super_tap_read(nsegs=10, seq=5000, flags="PA"):
    """A TAP read of a TSO super-frame from VM tr-red1: virtio_net_hdr (TCPV4, gso_size MSS) + frame."""
    ip = tcp_ip((bytes(range(256)) * (nsegs * MSS // 256 + 1))[:nsegs * MSS], seq=seq, flags=flags)
    return virtio.tcpv4_gso(14, 20, 20, MSS) + ethernet.build(VROUTER_MAC, VM_MAC, ethernet.ETH_P_IP) + ip


def coalesced_read(nsegs, first=0, encap="mplsoudp"):
    """What one UDP_GRO read returns for segments first..first+nsegs-1 of the reply flow: (buffer,
    segment size)."""
    reply = tcp_ip(bytes([7]) * (nsegs * MSS), src="192.168.1.12", dst="192.168.1.11", sport=80, dport=40000,
                   seq=1000 + first * MSS, ident=1 + first)
    buf, chunk, n = gso.segment(prefix(encap), reply, MSS)
    assert n == nsegs
    return buf, chunk


# ---------------------------------------------------------------- records and batches
def test_records_carry_the_tap_read_whole_and_the_gro_segment_size():
    read = super_tap_read()
    buf, chunk = coalesced_read(5)
    recs = [("tap", VIF, read, 0), ("mplsoudp", PEER, buf, chunk)]
    assert rps_channel.decode(rps_channel.encode(recs)) == recs
    (_k, _t, payload, _s), = rps_channel.decode(rps_channel.encode(recs[:1]))
    h = virtio.parse(payload[:VNET_LEN])
    assert h.is_tcpv4_gso and h.gso_size == MSS


def test_a_read_of_super_frames_is_sent_in_batches_that_fit_the_channel():
    """64 reads of 64 KB (4 MB) used to be one datagram, above the channel's 4 MB message limit."""
    sent = []
    outbox = Outbox(lambda dest, parts, n: sent.append((dest, b"".join(bytes(p) for p in parts), n)))
    big = [bytes([i]) * 65000 for i in range(64)]
    for i, payload in enumerate(big):
        outbox.add(("worker", i % 2), "vxlan", PEER, payload, 1450)
        assert all(len(d) < rps_channel.MAX_BATCH_BYTES + 65535 + 64 for _, d, _ in sent)
    outbox.flush()
    assert all(len(d) < ipc.SEQPACKET_MAX for _, d, _ in sent)
    assert len(sent) > 2                                    # not one datagram per destination
    for w in (0, 1):
        got = [r for dest, d, n in sent if dest == ("worker", w) for r in rps_channel.decode(d)]
        assert [r[2] for r in got] == big[w::2] and {r[3] for r in got} == {1450}
    assert sum(n for *_, n in sent) == 64
    outbox.flush()
    assert sum(n for *_, n in sent) == 64                   # nothing left behind, nothing twice


def test_full_batches_go_through_a_real_channel_in_order():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    ipc.tune_seqpacket(a)
    ipc.tune_seqpacket(b)
    b.setblocking(False)
    got = []

    def send(_dest, parts, _n):
        a.sendmsg(parts)
        got.extend(rps_channel.decode(b.recv(ipc.SEQPACKET_MAX)))   # a worker keeps up
    outbox = Outbox(send)
    for i in range(64):
        outbox.add(("worker", 0), "tap", VIF, bytes([i]) * 65559)
    outbox.flush()
    assert [r[2][0] for r in got] == list(range(64))
    a.close()
    b.close()


def _router(mode="rps"):
    return Router(MulticoreConfig.from_dict({"mode": mode, "workers": [0, 1]}).steering, "10.0.1.1")


def test_super_frames_and_coalesced_reads_are_steered_by_their_first_headers():
    router = _router()
    read = super_tap_read()
    assert router.from_tap(VIF, 100, read, VNET_LEN) == router.from_tap(VIF, 100, read[VNET_LEN:])
    buf, chunk = coalesced_read(8)
    for mode in ("rps", "extended"):
        r = _router(mode)
        whole = r.from_fabric("mplsoudp", PEER, 50000, buf)
        assert whole == r.from_fabric("mplsoudp", PEER, 50000, buf[:chunk])
        if mode == "extended":
            assert r.stage2("mplsoudp", buf) == r.stage2("mplsoudp", buf[:chunk])
    # The reply's coalesced read reaches the worker the VM's super-frame went to (sharded table).
    assert router.from_fabric("mplsoudp", PEER, 50000, buf) == router.from_tap(VIF, 100, read, VNET_LEN)


# ---------------------------------------------------------------- a worker's shard
@pytest.fixture
def worker():
    """A worker with the pipeline, TAP and tunnels the dispatcher would give it, the flow of VM
    tr-red1 to 192.168.1.12:80 established (forward and proactive reverse entry)."""
    ctrl, other = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    w = Worker(0, ctrl, [], kernel=False, first=True)
    w.datapath.configure(VrouterConfig.from_dict(CONFIG))
    w.datapath.sender = FakeTunnels()
    vm, tap_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)     # keeps frame boundaries
    vm.setblocking(False)
    w.datapath.vifs[VIF] = VifPort(None, [tap_end.fileno()], None)
    syn = ethernet.build(VROUTER_MAC, VM_MAC, ethernet.ETH_P_IP) + tcp_ip(b"", seq=4999, flags="S", partial=False)
    assert w.datapath.pipeline.from_vif(VIF, syn, 0.0) == []
    (request,) = w.datapath.pipeline.take_punts(0.0)
    w.datapath.pipeline.install(SlowPath(w.datapath.config).decide(request, 0.0), 0.0)
    w.vm = vm
    yield w
    vm.close()
    tap_end.close()
    ctrl.close()
    other.close()


def tap_writes(w):
    out = []
    while True:
        try:
            data = w.vm.recv(1 << 17)
        except BlockingIOError:
            return out
        out.append((virtio.parse(data[:VNET_LEN]), data[VNET_LEN:]))


def test_super_frame_record_is_one_gso_send(worker):
    worker.datapath.sender.gso.clear()
    read = super_tap_read(10)
    worker._process([("tap", VIF, read, 0)])
    (peer, encap, _sport, buf, chunk, n), = worker.datapath.sender.gso
    assert (peer, encap, n) == (PEER, "mplsoudp", 10) and worker.datapath.sender.sent == []
    assert chunk == 4 + 40 + MSS and len(buf) == 10 * chunk
    st = worker._answer({"op": "stats"})
    assert st["gso"]["super_frames"] == 1 and st["forwarder"]["packets"] == 1
    # bytes of the frame, as the VIF counts them: the virtio_net_hdr in front is not packet data
    assert st["forwarder"]["bytes"] == len(read) - VNET_LEN == worker._answer({"op": "vifs"})[VIF]["rx_bytes"]
    assert worker._answer({"op": "vifs"})[VIF]["rx_super_frames"] == 1


def test_mplsogre_super_frame_falls_back_to_one_send_per_segment():
    cfg = dict(CONFIG, encapsulation="mplsogre")
    ctrl, other = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    w = Worker(0, ctrl, [], kernel=False, first=True)
    w.datapath.configure(VrouterConfig.from_dict(cfg))
    w.datapath.sender = FakeTunnels()
    syn = ethernet.build(VROUTER_MAC, VM_MAC, ethernet.ETH_P_IP) + tcp_ip(b"", seq=4999, flags="S", partial=False)
    assert w.datapath.pipeline.from_vif(VIF, syn, 0.0) == []
    (request,) = w.datapath.pipeline.take_punts(0.0)
    w.datapath.pipeline.install(SlowPath(w.datapath.config).decide(request, 0.0), 0.0)
    w.datapath.sender.sent.clear()
    w._process([("tap", VIF, super_tap_read(6), 0)])
    assert w.datapath.sender.gso == [] and len(w.datapath.sender.sent) == 6
    assert {s[1] for s in w.datapath.sender.sent} == {"mplsogre"}
    assert w.datapath.offloads.counters["fallback_segments"] == 6
    ctrl.close()
    other.close()


def test_coalesced_reads_merge_into_one_super_packet_per_batch(worker):
    first, chunk = coalesced_read(8)
    second, _ = coalesced_read(8, first=8)
    worker._process([("mplsoudp", PEER, first, chunk), ("mplsoudp", PEER, second, chunk)])
    (h, frame), = tap_writes(worker)
    assert h.is_tcpv4_gso and h.gso_size == MSS and h.flags & virtio.NEEDS_CSUM
    assert len(frame) == 14 + 40 + 16 * MSS and frame[:6] == VM_MAC
    # Merges end with the batch: the next batch starts its own.
    third, _ = coalesced_read(4, first=16)
    fourth, _ = coalesced_read(4, first=20)
    worker._process([("mplsoudp", PEER, third, chunk)])
    worker._process([("mplsoudp", PEER, fourth, chunk)])
    assert [len(f) for _, f in tap_writes(worker)] == [14 + 40 + 4 * MSS] * 2
    gro = worker._answer({"op": "stats"})["gro"]
    assert (gro["merged_deliveries"], gro["merged_segments"], gro["segments_per_merge"]) == (3, 24, 8.0)
    assert worker.counters["packets"] == 24


def test_gro_switch_off_delivers_every_segment_alone(worker):
    assert worker._answer({"op": "set", "gro": False}) == {"gro": False, "gso": True}
    buf, chunk = coalesced_read(5)
    worker._process([("mplsoudp", PEER, buf, chunk)])
    writes = tap_writes(worker)
    assert len(writes) == 5 and all(not h.is_tcpv4_gso and h.flags & virtio.NEEDS_CSUM for h, _ in writes)
    assert worker._answer({"op": "reset"}) is True
    assert worker._answer({"op": "stats"})["gro"]["deliveries"] == 0


def test_worker_offload_counters_sum_like_one_vrouter():
    """The dispatcher sums the workers' sections and recomputes the averages from the sums."""
    parts, whole = [], Offloads()
    for hist, sends, segs in (({1: 3, 16: 2}, 4, 90), ({40: 1}, 1, 30)):
        o = Offloads()
        o.hist.update(hist)
        whole.hist.update(hist)
        parts.append(o.stats({"tx_gso_sends": sends, "tx_gso_segments": segs}))
    total = {"gro": {}, "gso": {}}
    for p in parts:
        _sum_into(total, {k: p[k] for k in total})
    averages(total)
    expect = whole.stats({"tx_gso_sends": 5, "tx_gso_segments": 120})
    for k in ("deliveries", "segments", "segments_per_delivery", "histogram"):
        assert total["gro"][k] == expect["gro"][k], k
    assert total["gso"]["segments_per_send"] == 24.0


# ---------------------------------------------------------------- send errors
class _Refusing:
    def sendto(self, *_):
        raise OSError(errno.EINVAL, "Invalid argument")

    sendmsg = sendto


def test_worker_sender_counts_einval_like_the_forwarder_instead_of_raising():
    assert rps_kernel.Sender.SEND_ERRORS == tunnel.Tunnels.SEND_ERRORS and errno.EINVAL in rps_kernel.Sender.SEND_ERRORS
    s = rps_kernel.Sender.__new__(rps_kernel.Sender)          # no raw GRE socket: no root needed
    tunnel.EntropySender.__init__(s, "127.0.0.1", 4)
    s._sender = lambda encap, sport: _Refusing()
    assert s.send(PEER, "mplsoudp", 50000, b"x" * 100) is False
    buf, chunk = coalesced_read(4)
    assert s.send_gso(PEER, "mplsoudp", 50000, buf, chunk, 4) == 1
    assert s.counters["tx_errors"] == 1 + 4        # packets lost: the datagram and the 4 segments
    assert s.counters["tx_mplsoudp"] == s.counters["tx_gso_sends"] == s.counters["tx_gso_segments"] == 0


class _RefusingSecond:
    """Takes the first send, refuses the next (EAGAIN: the socket's buffer filled up)."""

    def __init__(self):
        self.calls = 0

    def sendmsg(self, *_):
        self.calls += 1
        if self.calls > 1:
            raise OSError(errno.EAGAIN, "Resource temporarily unavailable")

    sendto = sendmsg


def test_gso_send_counts_only_the_segments_the_kernel_took():
    """A super-frame of 46 segments needs two UDP_SEGMENT sends (65,507 bytes each at most); the second
    is refused: only the first slice's segments were sent. The old code counted all 46 as sent and both
    sends as made."""
    s = rps_kernel.Sender.__new__(rps_kernel.Sender)
    tunnel.EntropySender.__init__(s, "127.0.0.1", 4)
    sock = _RefusingSecond()
    s._sender = lambda encap, sport: sock
    buf, chunk = coalesced_read(46)
    per = len(gso.sends(buf, chunk)[0]) // chunk
    assert 0 < per < 46
    assert s.send_gso(PEER, "mplsoudp", 50000, buf, chunk, 46) == 2
    assert s.counters["tx_mplsoudp"] == s.counters["tx_gso_segments"] == per
    assert s.counters["tx_gso_sends"] == 1 and s.counters["tx_errors"] == 46 - per


class _Recording:
    def __init__(self):
        self.sent = []

    def sendmsg(self, parts, _cmsg, _flags, dst):
        self.sent.append((b"".join(bytes(p) for p in parts), dst))

    def sendto(self, data, dst):
        self.sent.append((bytes(data), dst))


def test_a_port_without_a_socket_sends_through_the_raw_socket_with_its_own_udp_header():
    """A new flow's packet binds no socket (socket + bind + the LRU's close per new flow was ~15%
    of the forwarder in a flood): the raw socket carries it with the entropy port in a UDP header
    of our own (checksum 0); a port that has a socket (made by a GSO send) keeps using it."""
    s = rps_kernel.Sender.__new__(rps_kernel.Sender)
    tunnel.EntropySender.__init__(s, "127.0.0.1", 4)
    s._raw_udp = raw = _Recording()
    bound = _Recording()
    made = []
    s._sender = lambda encap, sport: made.append(sport) or bound
    assert s.send(PEER, "vxlan", 50123, b"p" * 30) is True
    ((data, dst),) = raw.sent
    assert dst == (PEER, 0) and data == (50123).to_bytes(2, "big") + (4789).to_bytes(2, "big") + \
        (38).to_bytes(2, "big") + b"\x00\x00" + b"p" * 30
    assert made == [] and s.counters["tx_vxlan"] == s.counters["tx_unbound"] == 1
    s._pool[50124] = bound                        # a port that has its socket
    assert s.send(PEER, "mplsoudp", 50124, b"q" * 10) is True
    assert bound.sent == [(b"q" * 10, (PEER, 6635))] and made == [50124] and len(raw.sent) == 1
