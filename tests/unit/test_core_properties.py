"""Property tests (hypothesis): key symmetry, and that no input bytes can make the pipeline raise."""
from hypothesis import given, settings
from hypothesis import strategies as st

from core_helpers import VM1, VM3, server, tcp_frame, udp_frame
from vrouter.core.actions import Drop, ToTunnel, ToVif
from vrouter.core.codec import mpls, vxlan
from vrouter.core.codec.l4 import TCP_SYN
from vrouter.core.flowkey import entropy_port, extract, reverse, symmetric_hash
from vrouter.core.pipeline import Pipeline
from vrouter.core.slowpath import SlowPath

keys = st.tuples(st.integers(1, 1 << 24), st.integers(0, 255), st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1),
                 st.integers(0, 65535), st.integers(0, 65535))


@given(keys)
def test_reverse_is_an_involution(k):
    assert reverse(reverse(k)) == k


@given(keys)
def test_symmetric_hash_is_symmetric_and_entropy_port_in_range(k):
    assert symmetric_hash(k) == symmetric_hash(reverse(k))
    assert 49152 <= entropy_port(k) <= 65535


@given(st.integers(0, 65535), st.integers(0, 65535), st.binary(max_size=40))
def test_extracted_reverse_key_matches_the_reply(sport, dport, data):
    fwd = extract(udp_frame(VM1, VM3, sport, dport, payload=data), 14)
    rep = extract(udp_frame(VM3, VM1, dport, sport, payload=data), 14)
    assert reverse((1, *fwd[:5])) == (1, *rep[:5])


def _pipe():
    cfg = server("srv1")
    pipe, slow = Pipeline(cfg), SlowPath(cfg)
    # Established flows so that mutations of their packets go through the hit path as well.
    for frame in (tcp_frame(VM1, VM3, 1000, 80, TCP_SYN), udp_frame(VM1, VM3, 1000, 53)):
        pipe.from_vif("tr-red1", frame, 0.0)
        (request,) = pipe.take_punts(0.0)
        pipe.install(slow.decide(request), 0.0)
    return pipe


PIPE = _pipe()
SEEDS = [tcp_frame(VM1, VM3, 1000, 80, TCP_SYN), udp_frame(VM1, VM3, 1000, 53)]


def _ok(actions, before, after):
    assert isinstance(actions, list)
    for a in actions:
        assert isinstance(a, (Drop, ToTunnel, ToVif))
    drops = sum(1 for a in actions if isinstance(a, Drop))
    assert after - before == drops


def _mutate(seed, cut, flips):
    buf = bytearray(seed[:cut])
    for pos, val in flips:
        if buf:
            buf[pos % len(buf)] = val
    return bytes(buf)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(SEEDS), st.integers(0, 80),
       st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), max_size=4))
def test_mutated_vm_frames_never_raise_and_every_drop_is_counted(seed, cut, flips):
    before = sum(PIPE.drop_stats().values())
    out = PIPE.from_vif("tr-red1", _mutate(seed, cut, flips), 1.0)
    _ok(out, before, sum(PIPE.drop_stats().values()))


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["mplsoudp", "mplsogre", "vxlan"]), st.sampled_from(SEEDS), st.integers(0, 90),
       st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), max_size=4))
def test_mutated_tunnel_payloads_never_raise_and_every_drop_is_counted(encap, seed, cut, flips):
    inner = seed[14:]
    head = {"mplsoudp": mpls.build_stack([100]), "mplsogre": b"\x00\x00\x88\x47" + mpls.build_stack([100]),
            "vxlan": vxlan.build(100) + seed[:14]}[encap]
    before = sum(PIPE.drop_stats().values())
    out = PIPE.from_fabric("10.0.2.1", encap, _mutate(head + inner, cut, flips), 1.0)
    _ok(out, before, sum(PIPE.drop_stats().values()))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=120), st.sampled_from(["vif", "mplsoudp", "mplsogre", "vxlan", "frame"]))
def test_random_bytes_never_raise(data, where):
    before = sum(PIPE.drop_stats().values())
    if where == "vif":
        out = PIPE.from_vif("tr-red1", data, 2.0)
    elif where == "frame":
        out = PIPE.from_fabric_frame(data, 2.0)
    else:
        out = PIPE.from_fabric("10.0.2.1", where, data, 2.0)
    _ok(out, before, sum(PIPE.drop_stats().values()))


def test_every_truncation_of_a_packet_is_a_malformed_drop():
    full = udp_frame(VM1, VM3, 1000, 53, payload=b"abcdefgh")
    for cut in range(14, len(full)):
        before = PIPE.drop_stats()["malformed"]
        assert PIPE.from_vif("tr-red1", full[:cut], 3.0) == [Drop("malformed")]
        assert PIPE.drop_stats()["malformed"] == before + 1
