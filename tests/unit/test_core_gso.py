"""GSO splitter: segments as Linux's tcp_gso_segment makes them, one UDP_SEGMENT buffer, partial
checksums a NEEDS_CSUM receiver completes to what scapy computes, and the pipeline taking super-frames."""
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP

from core_helpers import VM1, VM2, Pair, tcp_frame
from offload_helpers import ip_parts, kernel_complete, prefix, scapy_l4_checksum, tcp_ip, udp_ip
from vrouter.core import gso
from vrouter.core.actions import ToTunnel, ToVif, ToVifParts
from vrouter.core.codec import ethernet, ipv4, virtio
from vrouter.core.codec.errors import Malformed
from vrouter.core.codec.l4 import TCP_ACK, TCP_SYN
from vrouter.core.config import VROUTER_MAC
from vrouter.core.gro import Gro

TS = [("NOP", None), ("NOP", None), ("Timestamp", (11, 22))]
DATA = bytes(range(256)) * 64 + b"tail"                     # 16388 bytes: 12 segments of 1400


def test_segments_match_linux_tcp_gso_segment():
    ip = tcp_ip(DATA, seq=4_294_960_000, flags="FPAC", ident=65530, options=TS)   # seq and id wrap
    segs = gso.segments(prefix("mplsoudp"), ip, 1400)
    assert len(segs) == 12
    for i, s in enumerate(segs):
        assert s[:4] == prefix("mplsoudp")
        p = IP(s[4:])
        data = DATA[i * 1400:(i + 1) * 1400]
        assert bytes(p[TCP].payload) == data and p.len == 20 + 32 + len(data)
        assert p.id == (65530 + i) & 0xFFFF and p.flags == "DF" and p.ttl == 64
        assert p[TCP].seq == (4_294_960_000 + i * 1400) & 0xFFFFFFFF and p[TCP].options == IP(ip)[TCP].options
        expected = {"A"} | ({"C"} if i == 0 else set()) | ({"F", "P"} if i == 11 else set())
        assert set(str(p[TCP].flags)) == expected
        check = IP(s[4:])
        del check.chksum
        assert IP(bytes(check)).chksum == p.chksum                          # real IPv4 header checksum
        assert gso.partial_offset(s, 4) == (20, 16)                           # TCP checksum left partial
        assert gso.complete_checksum(s, 4)[4:] == s[4:20 + 16 + 4] + \
            scapy_l4_checksum(s[4:]).to_bytes(2, "big") + s[4 + 20 + 18:]


def test_one_buffer_of_equal_chunks_for_udp_segment():
    ip = tcp_ip(DATA)
    buf, chunk, n = gso.segment(prefix("vxlan"), ip, 1400)
    assert (chunk, n) == (22 + 40 + 1400, 12)
    assert len(buf) == 11 * chunk + 22 + 40 + len(DATA) - 11 * 1400
    assert [buf[i:i + chunk] for i in range(0, len(buf), chunk)] == gso.segments(prefix("vxlan"), ip, 1400)


def test_packet_within_one_mss_is_unchanged():
    ip = tcp_ip(b"x" * 1400, flags="PA")
    assert gso.segment(prefix("mplsoudp"), ip, 1400) == (prefix("mplsoudp") + ip, 4 + len(ip), 1)
    assert gso.segments(prefix("mplsogre"), ip, 1400) == [prefix("mplsogre") + ip]
    ack = tcp_ip(b"")
    assert gso.segment(b"", ack, 1400)[2] == 1


def test_segments_put_ip_options_between_the_ipv4_and_tcp_headers():
    ip = bytearray(tcp_ip(DATA))
    alert = b"\x94\x04\x00\x00"                                          # router alert
    ip[20:20] = alert
    ip[0] = 0x46
    ip[2:4] = (len(ip)).to_bytes(2, "big")
    ip[10:12] = b"\0\0"
    ip[10:12] = ipv4.checksum(ip[:24]).to_bytes(2, "big")
    segs = gso.segments(prefix("mplsoudp"), bytes(ip), 1400)
    assert len(segs) == 12
    for i, s in enumerate(segs):
        assert s[4] == 0x46 and s[4 + 20:4 + 24] == alert and ipv4.checksum(s[4:4 + 24]) == 0
        assert bytes(IP(s[4:])[TCP].payload) == DATA[i * 1400:(i + 1) * 1400]


def test_sends_respect_the_kernel_limits_and_cover_the_buffer():
    ip = tcp_ip(b"z" * (65535 - 52), options=TS)
    buf, chunk, n = gso.segment(prefix("mplsoudp"), ip, 1448)
    parts = gso.sends(buf, chunk)
    assert n == 46 and len(parts) == 2
    assert b"".join(bytes(p) for p in parts) == buf
    assert all(len(p) <= gso.MAX_SEND_BYTES and len(p) % chunk == 0 for p in parts[:-1])
    small = gso.sends(b"a" * 100 * 500, 100, max_segments=64)
    assert [len(p) for p in small] == [6400] * 7 + [5200]
    assert gso.sends(b"abc", 1400) == [b"abc"]


def test_split_payload_takes_the_pipeline_output_for_each_encap():
    ip = tcp_ip(DATA)
    for encap in ("mplsoudp", "mplsogre", "vxlan"):
        buf, chunk, n = gso.split_payload(encap, prefix(encap) + ip, 1000)
        assert (buf, chunk, n) == gso.segment(prefix(encap), ip, 1000)


def test_partial_offset_recognises_partial_tcp_and_udp_only():
    assert gso.partial_offset(tcp_ip(b"abc")) == (20, 16)
    assert gso.partial_offset(udp_ip(b"abc")) == (20, 6)
    assert gso.partial_offset(tcp_ip(b"abc", partial=False)) is None
    assert gso.partial_offset(udp_ip(b"abc", partial=False)) is None
    assert gso.partial_offset(b"\x45" + b"\0" * 10) is None


def test_completing_an_already_complete_checksum_that_equals_the_pseudo_sum_is_harmless():
    """Why the receiver may trust 'field == pseudo-header sum': a complete checksum with that value
    completes to itself. Two data bytes are chosen so the complete checksum hits the pseudo sum."""
    base = tcp_ip(b"ab\0\0", partial=False)
    c0 = scapy_l4_checksum(base)
    p = gso.pseudo_sum(0xC0A8010B, 0xC0A8010C, 6, len(base) - 20)
    s0 = gso.fold((~c0 & 0xFFFF) + (~p & 0xFFFF))                  # sum of the segment without the field
    x = gso.fold((~p & 0xFFFF) + (~p & 0xFFFF) + (~s0 & 0xFFFF))    # make ~(s0 + x + p) == p
    pkt = tcp_ip(b"ab" + x.to_bytes(2, "big"), partial=False)
    assert scapy_l4_checksum(pkt) == p == int.from_bytes(pkt[36:38], "big")
    assert gso.partial_offset(pkt) == (20, 16)
    frame = b"\0" * 14 + pkt
    assert kernel_complete(frame, virtio.partial(34, 16)) == frame


@given(st.binary(min_size=0, max_size=3000), st.integers(1, 1500), st.sampled_from(["A", "PA", "FA", "FPAC"]),
       st.integers(0, 2**32 - 1), st.integers(0, 65535), st.booleans())
@settings(max_examples=120, deadline=None)
def test_any_split_completes_to_scapy_checksums_and_reassembles(data, mss, flags, seq, ident, df):
    ip = tcp_ip(data, seq=seq, flags=flags, ident=ident, df=df)
    segs = gso.segments(b"", ip, mss)
    assert b"".join(ip_parts(s)[2] for s in segs) == data
    assert len(segs) == max(1, -(-len(data) // mss))
    for s in segs:
        completed = kernel_complete(b"\0" * 14 + s, virtio.partial(34, 16))[14:]
        assert int.from_bytes(completed[36:38], "big") == scapy_l4_checksum(s)
        assert gso.complete_checksum(s) == completed


def test_complete_checksum_matches_scapy_for_udp_and_odd_lengths():
    for pkt in (udp_ip(b"odd"), udp_ip(b"even"), tcp_ip(b"x" * 1001)):
        full = gso.complete_checksum(pkt)
        assert gso.partial_offset(full) is None
        at = 26 if pkt[9] == 17 else 36
        assert int.from_bytes(full[at:at + 2], "big") == scapy_l4_checksum(pkt)


def test_bad_input_is_rejected_with_malformed():
    for bad in (b"", b"\x45" * 30, tcp_ip(b"x")[:30], udp_ip(b"x")):
        with pytest.raises(Malformed):
            gso.segment(b"", bad, 100)
    with pytest.raises(ValueError):
        gso.segment(b"", tcp_ip(b"x"), 0)
    with pytest.raises(Malformed):
        gso.complete_checksum(bytes(20))


# ---------------------------------------------------------------- the pipeline with super-frames
def _super_frame(data: bytes, flags: int = TCP_ACK, seq: int = 1) -> bytes:
    """A VM's TSO super-frame: Ethernet + IPv4 + TCP with a partial checksum."""
    frame = bytearray(tcp_frame(VM1, VM2, 40000, 80, flags, payload=data, seq=seq, ack=1))
    frame[50:52] = gso.pseudo_sum(0xC0A8010B, 0xC0A8010C, 6, len(frame) - 34).to_bytes(2, "big")
    return bytes(frame)


@pytest.mark.parametrize("encap", ["mplsoudp", "mplsogre", "vxlan"])
@pytest.mark.parametrize("established", [True, False])
def test_super_frame_crosses_two_vrouters_as_one_packet_each_way(encap, established):
    """VM super-frame -> from_vif (one lookup) -> GSO -> GRO -> from_fabric (one lookup) -> the
    peer VM gets the same super-frame (TTL - 1) with NEEDS_CSUM, completing to scapy's checksum.
    Not established: the super-frame is the first packet of the flow at both vrouters (slow path)."""
    pair = Pair(encap=encap)
    if established:
        pair.send("srv1", "tr-red1", tcp_frame(VM1, VM2, 40000, 80, TCP_SYN))
    data = bytes(range(256)) * 255 + b"x" * (65535 - 40 - 255 * 256)           # IPv4 total length 65535
    frame = _super_frame(data)
    assert int.from_bytes(frame[16:18], "big") == 65535
    s1, s2 = pair.pipe["srv1"], pair.pipe["srv2"]
    hits = s1.stats()["hits"]
    out = s1.from_vif("tr-red1", frame, 1.0)
    if not established:
        assert out == []
        (request,) = s1.take_punts(1.0)
        assert request["length"] == 65535
        out = s1.install(pair.slow["srv1"].decide(request, 1.0), 1.0)
    (tun,) = out
    assert isinstance(tun, ToTunnel) and s1.stats()["hits"] == hits + 1
    buf, chunk, n = gso.split_payload(encap, tun.payload, 1448)
    assert n == 46
    gro = Gro()
    for part in gso.sends(buf, chunk):
        gro.add_batch(encap, part, chunk)
    deliveries = gro.flush()
    assert [(d[2], d[3]) for d in deliveries] == [(46, 1448)]
    head, tail, _, _, vnet = deliveries[0]
    out = s2.from_fabric("10.0.1.1", encap, head, 1.0, tail)
    if not established:
        out = pair.run("srv2", out, 1.0)
    (to_vm,) = out
    # Established: decided on the head, the data stays in the tail; a miss was held and released whole.
    assert type(to_vm) is (ToVifParts if established else ToVif) and to_vm.vif == "tr-red2"
    delivered = to_vm.frame + to_vm.tail if established else to_vm.frame
    assert delivered[:14] == ethernet.mac_to_bytes("02:00:00:00:01:0c") + VROUTER_MAC + b"\x08\x00"
    sent_ip, got_ip = IP(frame[14:]), IP(delivered[14:])
    assert got_ip.ttl == sent_ip.ttl - 1 and got_ip.len == 65535
    assert delivered[14 + 20:] == frame[14 + 20:]                     # TCP header (partial sum) and data
    assert delivered[14:22] == frame[14:22] and delivered[23] == frame[23] and delivered[26:34] == frame[26:34]
    assert ipv4.checksum(delivered[14:34]) == 0
    h = virtio.parse(vnet)
    assert (h.flags, h.gso_type, h.gso_size, h.csum_start, h.csum_offset) == (1, 1, 1448, 34, 16)
    completed = kernel_complete(delivered, vnet)
    assert int.from_bytes(completed[50:52], "big") == scapy_l4_checksum(completed[14:])


def test_single_packet_with_partial_checksum_travels_and_is_flagged():
    """NEEDS_CSUM with gso_type NONE: forwarded as it is, flagged partial at the receiver."""
    pair = Pair()
    pair.send("srv1", "tr-red1", tcp_frame(VM1, VM2, 40000, 80, TCP_SYN))
    frame = _super_frame(b"small")
    (tun,) = pair.pipe["srv1"].from_vif("tr-red1", frame, 1.0)
    assert gso.split_payload("mplsoudp", tun.payload, 1448)[2] == 1
    (d,) = Gro().batch("mplsoudp", tun.payload, 0)
    assert d[1:] == (None, 1, 0, virtio.partial(34, 16))
    (to_vm,) = pair.pipe["srv2"].from_fabric("10.0.1.1", "mplsoudp", d[0], 1.0)
    completed = kernel_complete(to_vm.frame, d[4])
    assert int.from_bytes(completed[50:52], "big") == scapy_l4_checksum(completed[14:])
