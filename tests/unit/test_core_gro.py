"""GRO merge engine: GSO/GRO round trips, Linux's merge and flush rules, the switch, the hold timeout,
and a property test that merged data is always exactly the in-order concatenation of its segments."""
import struct

from hypothesis import event, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP

from core_helpers import Pair
from offload_helpers import ip_parts, joined, kernel_complete, prefix, scapy_l4_checksum, tcp_ip, udp_ip
from vrouter.core import gro as gro_mod
from vrouter.core import gso
from vrouter.core.codec import ipv4, virtio
from vrouter.core.gro import Gro, vnet_for_frame
from vrouter.tools import bench_gro

TS = [("NOP", None), ("NOP", None), ("Timestamp", (5, 6))]


def stream(n, size=1400, seq=1000, ident=1, encap="mplsoudp", label=100, **kw):
    """n contiguous full-size segments of one flow, as tunnel payloads."""
    return [prefix(encap, label) + tcp_ip(bytes([i % 251]) * size, seq=seq + i * size, ident=ident + i, **kw)
            for i in range(n)]


def merge(*args, **kw):
    """`gro.merge`, every delivery joined (see offload_helpers.joined)."""
    return [joined(d) for d in gro_mod.merge(*args, **kw)]


def feed(payloads, encap="mplsoudp", g=None):
    g = g or Gro()
    for p in payloads:
        g.add(encap, p)
    return [joined(d) for d in g.flush()], g


def shape(deliveries):
    return [d[1] for d in deliveries]


def data_of(payload, h=4):
    return ip_parts(payload[h:])[2]


def test_udp_gro_read_of_40_segments_is_one_super_packet():
    segs = stream(40)
    buf = b"".join(segs)
    (d,) = merge("mplsoudp", buf, len(segs[0]))
    payload, n, gso_size, vnet = d
    assert (n, gso_size) == (40, 1400)
    assert data_of(payload) == b"".join(data_of(s) for s in segs)
    ip = IP(payload[4:])
    assert ip.len == 40 + 40 * 1400 and ip.id == 1 and ip[TCP].seq == 1000 and ipv4.checksum(payload[4:24]) == 0
    h = virtio.parse(vnet)
    assert (h.flags, h.gso_type, h.hdr_len, h.gso_size, h.csum_start, h.csum_offset) == (1, 1, 54, 1400, 34, 16)
    frame = b"\0" * 14 + payload[4:]
    assert int.from_bytes(kernel_complete(frame, vnet)[50:52], "big") == scapy_l4_checksum(payload[4:])


def test_a_merge_is_delivered_as_its_headers_and_its_data():
    """The head is the tunnel and inner headers (44 bytes with MPLSoUDP), the tail every segment's
    data; a packet delivered alone is its own bytes with no tail."""
    segs = stream(5)
    buf = b"".join(segs) + stream(1, seq=99999)[0]
    (m, single) = gro_mod.merge("mplsoudp", buf, len(segs[0]))
    head, tail, n, gso_size, _ = m
    assert (len(head), n, gso_size) == (4 + 40, 5, 1400)
    assert tail == b"".join(data_of(s) for s in segs)
    assert single[1] is None and single[0] == buf[5 * len(segs[0]):]


def test_gso_then_gro_gives_back_the_super_packet_for_every_encap():
    original = tcp_ip(bytes(range(256)) * 200, flags="PA", options=TS, ident=900)
    for encap in ("mplsoudp", "mplsogre", "vxlan"):
        buf, chunk, n = gso.segment(prefix(encap), original, 1388)
        (d,) = merge(encap, buf, chunk)
        assert d[0] == prefix(encap) + original and d[1:3] == (n, 1388)
        assert virtio.parse(d[3]).hdr_len == 14 + 20 + 32
        # MPLSoGRE has no UDP_GRO: the forwarder feeds packets one by one, same result.
        assert feed(gso.segments(prefix(encap), original, 1388), encap)[0] == [d]


def test_segments_with_complete_checksums_merge_into_a_partial_one():
    segs = stream(5, partial=False)
    (d,), _ = feed(segs)
    assert d[1] == 5 and gso.partial_offset(d[0], 4) == (20, 16)


def test_psh_and_fin_end_the_merge_after_joining_it():
    segs = stream(6)
    segs[2] = prefix("mplsoudp") + tcp_ip(bytes([2]) * 1400, seq=1000 + 2 * 1400, ident=3, flags="PA")
    segs[5] = prefix("mplsoudp") + tcp_ip(bytes([5]) * 1400, seq=1000 + 5 * 1400, ident=6, flags="FA")
    out, g = feed(segs)
    assert shape(out) == [3, 3]
    assert [str(IP(d[0][4:])[TCP].flags) for d in out] == ["PA", "FA"]
    assert g.stats()["flush"]["psh"] == 1 and g.stats()["flush"]["fin"] == 1


def test_rst_syn_urg_and_pure_acks_pass_alone_after_the_merge_of_their_flow():
    for flags, data in (("RA", b""), ("RA", b"r" * 10), ("UA", b"u" * 1400), ("SA", b""), ("A", b"")):
        segs = stream(3)
        segs.insert(2, prefix("mplsoudp") + tcp_ip(data, seq=1000 + 2 * 1400, ident=3, flags=flags))
        out, g = feed(segs)
        assert shape(out) == [2, 1, 1], flags
        assert out[1][0] == segs[2]
        assert g.stats()["flush"]["other_packet"] == 1


def test_a_gap_or_reordering_flushes_and_the_late_segment_starts_over():
    segs = stream(6)
    out, g = feed(segs[:2] + segs[3:] + segs[2:3])
    assert shape(out) == [2, 3, 1] and g.stats()["flush"]["not_contiguous"] == 2
    assert b"".join(data_of(d[0]) for d in out) == b"".join(data_of(s) for s in segs[:2] + segs[3:] + segs[2:3])


def test_header_changes_flush():
    base = dict(seq=1000 + 1400, ident=2)
    for change in (dict(ack=2), dict(window=7), dict(ttl=3), dict(tos=4), dict(options=TS), dict(flags="AC"),
                   dict(ident=9), dict(df=False)):
        segs = stream(1) + [prefix("mplsoudp") + tcp_ip(b"b" * 1400, **{**base, **change})] + \
            [prefix("mplsoudp") + tcp_ip(b"c" * 1400, seq=1000 + 2800, ident=3, **{k: v for k, v in change.items()
                                                                                    if k != "ident"})]
        out, g = feed(segs)
        assert shape(out)[0] == 1, change
        assert g.stats()["flush"]["headers"] >= 1


def test_cwr_is_allowed_on_the_first_segment_only_and_sets_gso_ecn():
    segs = stream(3)
    segs[0] = prefix("mplsoudp") + tcp_ip(bytes([0]) * 1400, seq=1000, ident=1, flags="AC")
    (d,), _ = feed(segs)
    assert d[1] == 3 and virtio.parse(d[3]).gso_type == virtio.GSO_TCPV4 | virtio.GSO_ECN
    assert str(IP(d[0][4:])[TCP].flags) == "AC"


def test_fixed_ip_id_merges_only_with_df():
    fixed = [prefix("mplsoudp") + tcp_ip(b"f" * 100, seq=1 + i * 100, ident=7) for i in range(4)]
    assert shape(feed(fixed)[0]) == [4]
    no_df = [prefix("mplsoudp") + tcp_ip(b"f" * 100, seq=1 + i * 100, ident=7, df=False) for i in range(4)]
    assert shape(feed(no_df)[0]) == [1, 1, 1, 1]


def test_a_short_segment_ends_the_merge_and_a_longer_one_cannot_join():
    segs = stream(2) + [prefix("mplsoudp") + tcp_ip(b"s" * 100, seq=1000 + 2800, ident=3)] + \
        stream(2, seq=1000 + 2900, ident=4)
    out, g = feed(segs)
    assert shape(out) == [3, 2] and g.stats()["flush"]["short"] == 1
    longer = stream(2, size=1000) + [prefix("mplsoudp") + tcp_ip(b"l" * 1400, seq=3000, ident=3)]
    assert shape(feed(longer)[0]) == [2, 1]


def test_ip_total_length_never_exceeds_65535():
    segs = stream(60, size=1448, options=TS)
    out, g = feed(segs)
    assert shape(out) == [45, 15] and g.stats()["flush"]["size"] == 1
    assert all(IP(d[0][4:]).len <= 65535 for d in out)
    assert IP(out[0][0][4:]).len == 20 + 32 + 45 * 1448


def test_labels_and_flows_keep_separate_merges_and_their_own_order():
    red = stream(4, label=100)
    blue = stream(4, label=200)
    other = stream(4, sport=40001)
    mixed = [x for trio in zip(red, blue, other, strict=True) for x in trio]
    out, _ = feed(mixed)
    assert sorted(shape(out)) == [4, 4, 4]
    by_first = {d[0][:4] + d[0][24:26]: d for d in out}
    for flow in (red, blue, other):
        d = by_first[flow[0][:4] + flow[0][24:26]]
        assert data_of(d[0]) == b"".join(data_of(s) for s in flow)


def test_switch_off_passes_every_segment_alone_still_flagging_partial_checksums():
    segs = stream(5)
    out = merge("mplsoudp", b"".join(segs), len(segs[0]), gro=False)
    assert [d[0] for d in out] == segs and shape(out) == [1] * 5
    assert all(d[2] == 0 and d[3] == virtio.partial(34, 16) for d in out)
    full = stream(1, partial=False)
    assert merge("mplsoudp", full[0], 0, gro=False) == [(full[0], 1, 0, virtio.PLAIN)]


def test_single_packets_keep_their_bytes_and_get_the_right_header():
    udp = prefix("vxlan") + udp_ip(b"dns?")
    (d,) = merge("vxlan", udp, 0)
    assert d == (udp, 1, 0, virtio.partial(34, 6))
    lone = stream(1, encap="mplsogre")[0]
    assert merge("mplsogre", lone, 0) == [(lone, 1, 0, virtio.partial(34, 16))]
    for encap, junk in (("mplsoudp", b""), ("mplsoudp", b"\x00\x01\x41\x40" + b"\xff" * 60), ("bogus", lone),
                        ("vxlan", b"\x08" + b"\0" * 7 + b"\xff" * 12 + b"\x08\x06" + b"\0" * 28)):
        assert merge(encap, junk, 0) == [(junk, 1, 0, virtio.PLAIN)]


def test_a_truncated_datagram_in_a_batch_is_judged_on_its_own_bytes():
    udp = prefix("mplsoudp") + udp_ip(b"q" * 40)
    # Cut right before its (partial) UDP checksum field: the next datagram's first bytes are that field.
    out = merge("mplsoudp", udp, 4 + 26)
    assert out[0] == (udp[:30], 1, 0, virtio.PLAIN) and sum(d[1] for d in out) == 3


def test_hold_across_reads_until_the_timeout():
    g = Gro(timeout=0.5)
    segs = stream(3)
    g.add("mplsoudp", segs[0], now=10.0)
    g.add("mplsoudp", segs[1], now=10.125)
    assert g.flush_expired(10.25) == [] and g.next_deadline() == 10.5
    g.add("mplsoudp", segs[2], now=10.375)
    (d,) = g.flush_expired(10.5)
    assert d[2] == 3 and g.next_deadline() is None and g.stats()["flush"]["timeout"] == 1


def test_stats_count_deliveries_and_segments_per_merge():
    _, g = feed(stream(8) + stream(1, seq=99999))
    s = g.stats()
    assert (s["segments"], s["delivered"], s["merged"], s["merged_segments"], s["single"]) == (9, 2, 1, 8, 1)
    assert s["segments_per_merge"] == 8.0 and s["open"] == 0


# ---------------------------------------------------------------- property tests
FLAGS = st.sampled_from(["A"] * 14 + ["PA", "FA", "RA", "SA", "UA", "AC"])
SIZE = st.one_of(st.just(1000), st.just(1000), st.just(1000), st.integers(0, 1500))   # mostly full segments
SEGMENT = st.tuples(SIZE, FLAGS, st.integers(0, 20))   # size, flags, 0 = a gap before it


@st.composite
def traffic(draw):
    """Up to 3 flows (two labels, two ports) of random segments, interleaved, sometimes reordered."""
    flows = draw(st.lists(st.tuples(st.sampled_from([100, 200]), st.sampled_from([40000, 40001]),
                                    st.lists(SEGMENT, min_size=1, max_size=40)), min_size=1, max_size=3))
    out = []
    for label, sport, segs in flows:
        seq, ident, pkts = draw(st.integers(0, 2**32 - 1)), draw(st.integers(0, 65535)), []
        for size, flags, gap in segs:
            if gap == 0:
                seq += 1000
            pkts.append(prefix("mplsoudp", label) + tcp_ip(b"d" * size, seq=seq & 0xFFFFFFFF, ident=ident & 0xFFFF,
                                                           flags=flags, sport=sport))
            seq += size
            ident += 1
        if draw(st.booleans()) and len(pkts) > 2:
            i = draw(st.integers(0, len(pkts) - 2))
            pkts[i], pkts[i + 1] = pkts[i + 1], pkts[i]
        out.append(pkts)
    order = draw(st.permutations([i for i, p in enumerate(out) for _ in p]))
    cursors = [0] * len(out)
    mixed = []
    for i in order:
        mixed.append(out[i][cursors[i]])
        cursors[i] += 1
    return mixed


def _flow(payload):
    return payload[:4], payload[24:26]


@given(traffic(), st.booleans())
@settings(max_examples=150, deadline=None)
def test_merges_are_exact_in_order_concatenations_of_mergeable_segments(mixed, use_batch_api):
    g = Gro()
    if use_batch_api:
        for p in mixed:
            g.add_batch("mplsoudp", p, len(p))
    else:
        for p in mixed:
            g.add("mplsoudp", p)
    out = [joined(d) for d in g.flush()]
    event(f"largest merge {min(max(d[1] for d in out), 5)}")
    assert sum(d[1] for d in out) == len(mixed)
    pending = {}
    for p in mixed:
        pending.setdefault(_flow(p), []).append(p)
    for payload, n, gso_size, vnet in out:
        group = [pending[_flow(payload)].pop(0) for _ in range(n)]
        if n == 1:
            assert payload == group[0] and gso_size == 0
            continue
        ip = IP(payload[4:])
        firsts = [IP(s[4:]) for s in group]
        assert ip.len <= 65535 and ipv4.checksum(payload[4:24]) == 0
        assert data_of(payload) == b"".join(data_of(s) for s in group)
        assert ip[TCP].seq == firsts[0][TCP].seq and gso_size == len(data_of(group[0]))
        for a, b in zip(group, group[1:], strict=False):
            assert IP(b[4:])[TCP].seq == (IP(a[4:])[TCP].seq + len(data_of(a))) & 0xFFFFFFFF
        assert all(0 < len(data_of(s)) <= gso_size for s in group)
        assert all(len(data_of(s)) == gso_size for s in group[:-1])
        flags = [int(f[TCP].flags) for f in firsts]
        assert not any(f & 0x26 for f in flags) and not any(f & 0x09 for f in flags[:-1])
        assert not any(f & 0x80 for f in flags[1:])
        assert int(ip[TCP].flags) == flags[0] | flags[-1] & 0x09
        assert int.from_bytes(kernel_complete(b"\0" * 14 + payload[4:], vnet)[50:52], "big") == \
            scapy_l4_checksum(payload[4:])
    assert all(not left for left in pending.values())


@given(st.binary(max_size=200), st.sampled_from(["mplsoudp", "mplsogre", "vxlan"]), st.integers(0, 80))
@settings(max_examples=300, deadline=None)
def test_arbitrary_bytes_never_raise(junk, encap, seg):
    g = Gro()
    g.add_batch(encap, junk, seg)
    g.add(encap, prefix(encap) + junk)
    out = g.flush()
    assert sum(d[2] for d in out) == g.stats()["segments"]


def test_reasons_are_the_documented_ones():
    _, g = feed(stream(2))
    assert set(g.stats()["flush"]) == set(gro_mod.REASONS)
    assert struct.calcsize("<BBHHHH") == virtio.HDR_LEN


def test_bench_reports_gro_and_gso_rows_and_json_figures():
    res = bench_gro.run(quick=True)
    lines = []
    bench_gro.report(res, lines.append)
    assert [r["name"] for r in res["rows"]][0] == "gro merge, 40 x 1400 B per read"
    assert all(isinstance(res[k], int) and res[k] > 0 for k in ("gro_merge_segments_per_s",
                                                               "gro_receive_segments_per_s", "gso_send_segments_per_s"))
    assert len(lines) == len(res["rows"]) + 2 and "segs/s" in lines[0]


def test_held_super_packet_released_by_install_gets_a_header_from_the_frame_alone():
    pair = Pair()
    original = tcp_ip(bytes(range(256)) * 100, options=TS, src="192.168.1.11", dst="192.168.1.12")
    (d,) = merge("mplsoudp", *gso.segment(prefix("mplsoudp"), original, 1448)[:2])   # joined: held whole
    assert pair.pipe["srv2"].from_fabric("10.0.1.1", "mplsoudp", d[0], 1.0) == []
    (request,) = pair.pipe["srv2"].take_punts(1.0)
    (to_vm,) = pair.pipe["srv2"].install(pair.slow["srv2"].decide(request, 1.0), 1.0)
    vnet, frame = vnet_for_frame(to_vm.frame, mtu=1500)
    assert vnet == d[3] and frame == to_vm.frame
    # A frame within the MTU is flagged only when its checksum is partial; a non-partial super-packet
    # gets its field made partial so NEEDS_CSUM completes it right.
    plain = b"\0" * 12 + b"\x08\x00" + udp_ip(b"x", partial=False)
    assert vnet_for_frame(plain) == (virtio.PLAIN, plain)
    assert vnet_for_frame(b"\0" * 12 + b"\x08\x00" + tcp_ip(b"x"))[0] == virtio.partial(34, 16)
    full = b"\0" * 12 + b"\x08\x00" + tcp_ip(b"y" * 3000, partial=False)
    vnet, fixed = vnet_for_frame(full)
    assert virtio.parse(vnet).gso_size == 1460 and gso.partial_offset(fixed, 14) == (20, 16)
    assert kernel_complete(fixed, vnet) == full
    assert vnet_for_frame(b"short") == (virtio.PLAIN, b"short")
