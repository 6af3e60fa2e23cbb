"""Offloads end to end (one testbed for the module): TSO super-frames from the VM, UDP GSO sends,
UDP_GRO reads merged into super-packets the receiving VM takes as one packet, byte-exact data
verified by the VMs' kernels, the GRO switch, and MPLSoGRE's one-send-per-segment fallback."""
import os
import re
import struct
import time

import pytest

from overlay_helpers import bring_up, expected_digest, needs_root, ping, transfer, vm_tap
from test_vrouter_io import nspair  # noqa: F401 (fixture)
from testbed import relay_floor
from testbed.measure.pairs import pick_pair
from testbed.overlay import forwarder_name
from vrouter.core import gso, latency
from vrouter.core.priority import CALM, RT_PRIORITY
from vrouter.core.warm import WARM_US
from vrouter.io import introspect, tap, tunnel

pytestmark = [pytest.mark.e2e, needs_root]

NBYTES = 8_000_000


def super_payload(nsegs: int, mss: int, label: int = 100) -> bytes:
    data = bytes(range(256)) * (nsegs * mss // 256 + 1)
    data = data[:nsegs * mss]
    tlen = 40 + len(data)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, tlen, 1, 0x4000, 64, 6, 0, bytes([192, 168, 1, 11]),
                     bytes([192, 168, 1, 12]))
    tcp = struct.pack("!HHIIBBHHH", 40000, 80, 1000, 1, 0x50, 0x18, 1000, 0, 0)
    return struct.pack("!I", label << 12 | 0x100 | 64) + ip + tcp + data


def rx_packets(tb, vm, intf):
    out = tb.host(vm).cmd("cat /proc/net/dev")
    line = next(ln for ln in out.splitlines() if ln.strip().startswith(intf + ":"))
    return int(line.split(":", 1)[1].split()[1])


def set_both(tb, **switches):
    for srv in ("srv1", "srv3"):
        introspect.query(tb.path, srv, "set", **switches)
        introspect.query(tb.path, srv, "reset")
    time.sleep(0.2)


@pytest.fixture(scope="module")
def tb(tmp_path_factory):
    bed = bring_up(tmp_path_factory.mktemp("offl"), "mplsoudp")
    assert ping(bed, "red1", "192.168.1.12") == 3
    yield bed
    bed.stop()


def test_vm_interface_advertises_offloads_and_fits_the_tunnel(tb):
    tap = vm_tap(tb, "red1")
    features = tb.host("red1").cmd(f"ethtool -k {tap}")
    assert re.search(r"^tcp-segmentation-offload: on", features, re.M)
    assert re.search(r"^tx-checksumming: on", features, re.M)
    mtu = int(re.search(r"mtu (\d+)", tb.host("red1").cmd(f"ip link show {tap}")).group(1))
    assert mtu == 1500 - 32  # MPLSoUDP: outer IPv4 + UDP + label


def test_bulk_tcp_is_merged_byte_exact_and_super_packets_reach_the_vm(tb):
    set_both(tb, gro=True, gso=True)
    tap = vm_tap(tb, "red2")
    rx0 = rx_packets(tb, "red2", tap)
    n, digest = transfer(tb, "red1", "red2", "192.168.1.12", 5301)
    assert (n, digest) == (NBYTES, expected_digest(NBYTES))
    vm_rx = rx_packets(tb, "red2", tap) - rx0
    rx = introspect.query(tb.path, "srv3", "stats")
    tx = introspect.query(tb.path, "srv1", "stats")
    mss_segments = NBYTES // 1416
    assert rx["gro"]["segments"] >= mss_segments
    # Merges happen (more than one segment each, on average); how MANY segments a merge gets depends on
    # how far the kernel's UDP_GRO coalesces on this machine's load, a figure for the bench (`testbed
    # bench throughput`: ">= 8 segments per GRO merge", met / NOT met), not for a pass/fail test: the
    # same run gave 16 one day and 2.6-3.8 another, on unchanged code.
    assert rx["gro"]["merged_deliveries"] > 0 and rx["gro"]["segments_per_merge"] >= 2, rx["gro"]
    # The VM's stack received super-packets: fewer packets than MSS-sized segments (by the same factor
    # of at least 2 as the merges above, for the same reason).
    assert vm_rx <= mss_segments / 2, (vm_rx, mss_segments)
    assert tx["gso"]["sends"] > 0 and tx["gso"]["segments_per_send"] >= 4, tx["gso"]
    vifs = {v["name"]: v for v in introspect.query(tb.path, "srv1", "vifs")}
    assert vifs[vm_tap(tb, "red1")]["rx_packets"] < mss_segments / 4  # super-frames from the VM


def _loop(tb, srv):
    """(Priority.stats() of srv's forwarder, the scheduling policy the kernel has for its process)."""
    pid = tb.supervisor.pid(forwarder_name(srv))
    return introspect.query(tb.path, srv, "stats")["priority"], os.sched_getscheduler(pid) & ~os.SCHED_RESET_ON_FORK


def _settle_realtime(tb, srvs, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(_loop(tb, s)[0]["mode"] == "realtime" for s in srvs):
            return True
        time.sleep(0.1)
    return False


def test_the_forwarder_loop_is_real_time_while_idle_and_normal_under_bulk(tb):
    """vrouter/core/priority.py on real forwarders: SCHED_FIFO while idle, the normal scheduler once
    a bulk transfer keeps them busy, SCHED_FIFO again after a calm spell."""
    srvs = ("srv1", "srv3")
    assert _settle_realtime(tb, srvs, CALM + 3)
    before = {}
    for srv in srvs:
        stats, policy = _loop(tb, srv)
        assert stats["error"] is None and stats["rt_priority"] >= 1
        assert policy == os.SCHED_FIFO, (srv, policy)
        before[srv] = stats
    # Reading counters between exchanges, as the experiments do, is not load: the loops stay real-time.
    for _ in range(40):
        for srv in srvs:
            introspect.query(tb.path, srv, "stats")
        time.sleep(0.02)
    for srv in srvs:
        assert _loop(tb, srv)[0]["to_normal"] == before[srv]["to_normal"], srv
    n, digest = transfer(tb, "red1", "red2", "192.168.1.12", 5305, nbytes=4_000_000)
    assert (n, digest) == (4_000_000, expected_digest(4_000_000))
    for srv in srvs:
        assert _loop(tb, srv)[0]["to_normal"] > before[srv]["to_normal"], srv
    assert _settle_realtime(tb, srvs, CALM + 3)
    for srv in srvs:
        stats, policy = _loop(tb, srv)
        assert stats["to_realtime"] > before[srv]["to_realtime"] and policy == os.SCHED_FIFO, (srv, stats)
    # Switched off at run time: the normal scheduler at once, and it stays so.
    try:
        for srv in srvs:
            assert introspect.query(tb.path, srv, "set", rt_priority=0)["priority"]["mode"] == "normal"
        assert ping(tb, "red1", "192.168.1.12") == 3
        assert all(_loop(tb, srv)[1] == os.SCHED_OTHER for srv in srvs)
    finally:
        for srv in srvs:
            introspect.query(tb.path, srv, "set", rt_priority=RT_PRIORITY)


def test_the_loop_keeps_waking_while_its_flows_are_active(tb):
    """vrouter/core/warm.py on a real forwarder (off by default): switched on, its waits are cut to
    warm_us while pings come; switched off, none is."""
    def capped():
        return introspect.query(tb.path, "srv1", "stats")["warm"]["capped_waits"]
    try:
        assert introspect.query(tb.path, "srv1", "set", warm_us=2000)["warm"]["warm_us"] == 2000
        assert ping(tb, "red1", "192.168.1.12") == 3
        assert capped() > 0
        assert introspect.query(tb.path, "srv1", "set", warm_us=0)["warm"]["warm_us"] == 0
        assert ping(tb, "red1", "192.168.1.12") == 3
        assert capped() == 0
    finally:
        introspect.query(tb.path, "srv1", "set", warm_us=WARM_US)


def test_gro_switch_off_gives_one_segment_per_delivery(tb):
    set_both(tb, gro=False, gso=True)
    try:
        n, digest = transfer(tb, "red1", "red2", "192.168.1.12", 5302, nbytes=2_000_000)
        assert (n, digest) == (2_000_000, expected_digest(2_000_000))
        gro = introspect.query(tb.path, "srv3", "stats")["gro"]
        assert gro["enabled"] is False and gro["deliveries"] > 0
        assert gro["segments_per_delivery"] == 1.0 and gro["merged_deliveries"] == 0
        assert set(k for k, v in gro["histogram"].items() if v) == {"1"}
    finally:
        set_both(tb, gro=True, gso=True)


def test_everything_off_is_packet_by_packet_and_still_exact(tb):
    set_both(tb, gro=False, gso=False)
    try:
        n, digest = transfer(tb, "red2", "red1", "192.168.1.11", 5303, nbytes=2_000_000)
        assert (n, digest) == (2_000_000, expected_digest(2_000_000))
        st = introspect.query(tb.path, "srv3", "stats")
        assert st["gso"]["sends"] == 0 and st["gso"]["fallback_super_frames"] == 0
        assert "tcp-segmentation-offload: off" in tb.host("red2").cmd(f"ethtool -k {vm_tap(tb, 'red2')}")
    finally:
        set_both(tb, gro=True, gso=True)


def test_set_refuses_bad_values_in_one_line(tb):
    with pytest.raises(introspect.IntrospectError, match="gro must be true or false"):
        introspect.query(tb.path, "srv1", "set", gro="yes")
    with pytest.raises(introspect.IntrospectError, match="give gro and/or gso"):
        introspect.query(tb.path, "srv1", "set")


def test_mplsogre_falls_back_to_one_send_per_segment(tmp_path_factory):
    bed = bring_up(tmp_path_factory.mktemp("gre"), "mplsogre")
    try:
        assert ping(bed, "red1", "192.168.1.12") == 3
        for srv in ("srv1", "srv3"):
            introspect.query(bed.path, srv, "reset")
        n, digest = transfer(bed, "red1", "red2", "192.168.1.12", 5304, nbytes=3_000_000)
        assert (n, digest) == (3_000_000, expected_digest(3_000_000))
        tx = introspect.query(bed.path, "srv1", "stats")
        rx = introspect.query(bed.path, "srv3", "stats")
        assert tx["gso"]["sends"] == 0                       # no UDP_SEGMENT on a raw IP socket
        assert tx["gso"]["fallback_super_frames"] > 0
        assert tx["gso"]["fallback_segments"] > tx["gso"]["fallback_super_frames"]
        assert tx["tunnels"]["tx_mplsogre"] >= 3_000_000 // 1432
        assert rx["gro"]["merged_deliveries"] > 0            # merged in Python from per-packet reads
    finally:
        bed.stop()


def test_gso_send_arrives_as_one_gro_read_with_its_segment_size(nspair):  # noqa: F811 (the fixture imported above)
    a, b = nspair  # two namespaces joined by a veth, no OVS: the tunnel layer against the kernel
    with tap.in_netns(a):
        tx = tunnel.Tunnels("10.99.0.1")
    with tap.in_netns(b):
        rx = tunnel.Tunnels("10.99.0.2")
    try:
        buf, chunk, n = gso.split_payload("mplsoudp", super_payload(20, 1400), 1400)
        with tap.in_netns(a):
            assert tx.send_gso("10.99.0.2", "mplsoudp", 50001, buf, chunk, n) == 1
        sock = next(s for s in rx.sockets() if s.getsockname()[1] == tunnel.MPLSOUDP_PORT)
        reads, deadline = [], time.monotonic() + 2
        while sum(len(r[2]) for r in reads) < len(buf) and time.monotonic() < deadline:
            reads += rx.receive_gro(sock)
            time.sleep(0.01)
        # The datagrams come back as sent, in as few reads as the kernel coalesced (here: one).
        assert b"".join(r[2] for r in reads) == buf
        assert all(r[0] == "10.99.0.1" for r in reads)
        assert reads[0][3] == chunk and len(reads) < n
        assert tx.counters["tx_gso_sends"] == 1 and tx.counters["tx_gso_segments"] == n
    finally:
        tx.close()
        rx.close()


def test_latency_stamps_cover_every_leg_of_a_ping_and_stop_when_switched_off(tb):
    """Issue 13's breakdown on a real pair of vrouters: each echo stamped once per vrouter and
    direction, the legs of every round trip joined, causally ordered; nothing stamped once off."""
    for srv in ("srv1", "srv3"):
        assert introspect.query(tb.path, srv, "stamp", on=True, take=True)["on"] is True
    assert ping(tb, "red1", "192.168.1.12", count=5) == 5
    stamps = []
    for srv in ("srv1", "srv3"):
        got = introspect.query(tb.path, srv, "stamp", on=False, take=True)
        assert got["on"] is False
        stamps += [latency.Stamp(srv, *s) for s in got["stamps"]]
    seqs = {(s.server, s.ingress, s.icmp_type) for s in stamps}
    assert seqs == {("srv1", "vif", 8), ("srv3", "fabric", 8), ("srv3", "vif", 0), ("srv1", "fabric", 0)}
    b = latency.breakdown("srv1", "srv3", stamps)
    assert b["round_trips"] == 5
    assert all(v > 0 for k, v in b["legs_us"].items()), b["legs_us"]     # every leg after the one before
    assert ping(tb, "red1", "192.168.1.12", count=2) == 2
    assert introspect.query(tb.path, "srv1", "stamp", take=True)["stamps"] == []


def test_the_echo_reply_is_read_straight_after_the_request_is_written(tb):
    """Forwarder.read_answer: the VM's kernel answers inside the TAP write, so srv3's vrouter finds
    the echo replies queued right after it writes the requests; srv1 writes replies, which get no
    answer, so it does not look for one (InProcess.on_fabric)."""
    for srv in ("srv1", "srv3"):
        introspect.query(tb.path, srv, "reset")
    assert ping(tb, "red1", "192.168.1.12", count=5) == 5
    found = {srv: introspect.query(tb.path, srv, "stats")["forwarder"].get("answers_read", 0)
             for srv in ("srv1", "srv3")}
    assert found["srv3"] >= 1 and found["srv1"] == 0, found


def test_the_bare_relay_carries_the_benchs_pings_and_leaves_nothing_behind(tb):
    """testbed/relay_floor.py, the bench's floor of a Python overlay: two relays move the VMs'
    frames over the servers' underlay; after close, no relay process and no TAP is left."""
    pair = pick_pair(tb.topology)
    relays = relay_floor.RelayPair(tb, pair)
    try:
        pids = [p.pid for p in relays.procs]
        assert relays.ping_median_us() is not None
        assert ping(tb, pair.client_vm.name, pair.server_vm.address) == 3    # the overlay beside it
    finally:
        relays.close()
    assert not any(os.path.exists(f"/proc/{pid}") for pid in pids)
    for host in (pair.client, pair.server, pair.client_vm.name, pair.server_vm.name):
        assert relays.name not in tb.host(host).cmd("ip -o link show")
