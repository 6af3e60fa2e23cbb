"""TCP RST per RFC 5961: a RST closes a pair only inside the receiver's window; teardown leaves nothing."""
from core_helpers import VM1, VM1_MAC, VM2, VM2_MAC, Pair
from vrouter.core import tcpstate
from vrouter.core.codec import ethernet, ipv4, l4
from vrouter.core.codec.ipv4 import ip_to_int
from vrouter.core.codec.l4 import TCP_ACK, TCP_RST, TCP_SYN
from vrouter.core.config import VROUTER_MAC
from vrouter.core.flowtable import WSCALE_NONE

WSCALE_7 = b"\x01\x03\x03\x07"          # NOP + window scale 7
ISN1, ISN2 = 1000, 5000


def seg(frm, flags, seq, ack=0, window=65535, options=b"", payload=b""):
    """A segment of the connection VM1:40000 <-> VM2:80, from ``frm`` (1 or 2), as its VM sends it."""
    src, dst, sport, dport, mac = (VM1, VM2, 40000, 80, VM1_MAC) if frm == 1 else (VM2, VM1, 80, 40000, VM2_MAC)
    t = l4.build_tcp(ip_to_int(src), ip_to_int(dst), sport, dport, payload, seq=seq, ack=ack, flags=flags,
                     window=window, options=options)
    return ethernet.build(VROUTER_MAC, ethernet.mac_to_bytes(mac), ethernet.ETH_P_IP) + \
        ipv4.build(ip_to_int(src), ip_to_int(dst), ipv4.IPPROTO_TCP, t)


def send(p, frm, frame):
    srv, vif = ("srv1", "tr-red1") if frm == 1 else ("srv2", "tr-red2")
    out = p.send(srv, vif, frame)
    assert [a.vif for a in out] == ["tr-red2" if frm == 1 else "tr-red1"], out    # always delivered
    return out


def handshake(p, ws1=b"", ws2=b"", win1=65535, win2=65535, isn1=ISN1, isn2=ISN2):
    send(p, 1, seg(1, TCP_SYN, isn1, options=ws1))
    send(p, 2, seg(2, TCP_SYN | TCP_ACK, isn2, isn1 + 1, options=ws2))
    send(p, 1, seg(1, TCP_ACK, isn1 + 1, isn2 + 1, window=win1))
    send(p, 2, seg(2, TCP_ACK, isn2 + 1, isn1 + 1, window=win2))


def states(p):
    return {srv: {f["tcp_state"] for f in pipe.flows()} for srv, pipe in p.pipe.items()}


def out_of_window(p):
    return [pipe.stats()["tcp_rst_out_of_window"] for pipe in p.pipe.values()]


def test_rst_in_the_receivers_window_closes_the_pair_at_both_vrouters():
    p = Pair()
    handshake(p)
    send(p, 2, seg(2, TCP_RST, ISN2 + 1))
    assert states(p) == {"srv1": {"closed"}, "srv2": {"closed"}}
    assert out_of_window(p) == [0, 0]


def test_rst_out_of_the_window_is_forwarded_but_keeps_the_pair():
    p = Pair()
    handshake(p, win1=1000)
    send(p, 2, seg(2, TCP_RST, ISN2 + 1 + 5000))                  # VM1 only takes 1000 bytes from 5001
    assert states(p) == {"srv1": {"established"}, "srv2": {"established"}}
    assert out_of_window(p) == [1, 1]
    # The connection goes on: data and ACKs still hit, and a good RST still closes it.
    hits = p.pipe["srv1"].stats()["hits"]
    send(p, 1, seg(1, TCP_ACK, ISN1 + 1, ISN2 + 1, window=1000, payload=b"hello"))
    assert p.pipe["srv1"].stats()["hits"] == hits + 1 and p.punts == {"srv1": 1, "srv2": 1}
    send(p, 2, seg(2, TCP_RST, ISN2 + 1 + 999))                  # last byte of the window
    assert states(p) == {"srv1": {"closed"}, "srv2": {"closed"}}


def test_rst_before_any_ack_from_the_receiver_is_accepted():
    p = Pair()
    send(p, 1, seg(1, TCP_SYN, ISN1))
    send(p, 2, seg(2, TCP_RST | TCP_ACK, 0, ISN1 + 1))             # closed port: RST answers the SYN
    assert states(p) == {"srv1": {"closed"}, "srv2": {"closed"}}


def test_window_scale_from_both_syns_widens_the_window():
    p = Pair()
    handshake(p, ws1=WSCALE_7, ws2=WSCALE_7, win1=1000)             # VM1's window: 1000 << 7 = 128000
    send(p, 2, seg(2, TCP_RST, ISN2 + 1 + 100_000))
    assert states(p) == {"srv1": {"closed"}, "srv2": {"closed"}}


def test_window_scale_counts_only_when_both_syns_carry_it():
    p = Pair()
    handshake(p, ws1=WSCALE_7, win1=1000)                           # the SYN-ACK has no option: no scaling
    send(p, 2, seg(2, TCP_RST, ISN2 + 1 + 100_000))
    assert states(p) == {"srv1": {"established"}, "srv2": {"established"}}
    assert out_of_window(p) == [1, 1]


def test_rst_at_the_senders_next_sequence_number_is_accepted_when_acks_lag():
    p = Pair()
    handshake(p, win1=1000)
    send(p, 2, seg(2, TCP_ACK, ISN2 + 1, ISN1 + 1, payload=b"x" * 900))
    send(p, 2, seg(2, TCP_ACK, ISN2 + 901, ISN1 + 1, payload=b"y" * 900))   # VM1 has not ACKed either
    send(p, 2, seg(2, TCP_RST, ISN2 + 1 + 3000))                    # beyond: refused
    assert out_of_window(p) == [1, 1]
    send(p, 2, seg(2, TCP_RST, ISN2 + 1801))                        # VM2's next sequence number
    assert states(p) == {"srv1": {"closed"}, "srv2": {"closed"}}


def test_sequence_numbers_wrap():
    p = Pair()
    isn2 = 0xFFFFFFFF - 100
    handshake(p, isn2=isn2, win1=1000)
    send(p, 2, seg(2, TCP_RST, (isn2 + 1 + 500) & 0xFFFFFFFF))      # past 2**32, inside the window
    assert states(p) == {"srv1": {"closed"}, "srv2": {"closed"}}
    q = Pair()
    handshake(q, isn2=isn2, win1=1000)
    send(q, 2, seg(2, TCP_RST, (isn2 + 1 - 500) & 0xFFFFFFFF))      # before the window
    assert out_of_window(q) == [1, 1]


def test_a_closed_pair_leaves_nothing_behind():
    p = Pair(flow={"closed_linger": 2.0})
    handshake(p)
    send(p, 1, seg(1, TCP_RST, ISN1 + 1))
    for pipe in p.pipe.values():
        assert pipe.expire(1.0) == 0                                # lingering for late packets
        assert pipe.expire(2.5) == 2 and pipe.flows() == []
        pr = pipe.pressure(2.5)
        assert (pr["entries"], pr["held"], pr["unreplied"]) == (0, 0, 0)
        assert all(v["entries"] == 0 and v["held"] == 0 for v in pr["vms"].values())
        assert all(v["entries"] == 0 for v in pr["networks"].values())


def test_a_syn_on_a_closed_pair_starts_again_without_the_old_acks():
    p = Pair()
    handshake(p)
    send(p, 1, seg(1, TCP_RST, ISN1 + 1))
    send(p, 1, seg(1, TCP_SYN, 90_000))                             # same 5-tuple, new connection
    assert states(p) == {"srv1": {"syn", "none"}, "srv2": {"syn", "none"}}
    # VM2 has ACKed nothing of the new connection: a RST from VM1 is accepted whatever its number
    # (against VM2's ACK of the old connection it would be far out of the window).
    send(p, 1, seg(1, TCP_RST, 90_006))
    assert states(p) == {"srv1": {"closed"}, "srv2": {"closed"}}
    assert out_of_window(p) == [0, 0]


def test_window_scale_options_are_read_safely():
    def scale(options):
        frame = seg(1, TCP_SYN, ISN1, options=options)
        return tcpstate.window_scale(frame, 34)
    assert scale(WSCALE_7) == 7
    assert scale(b"\x02\x04\x05\xb4\x01\x03\x03\x09") == 9          # MSS first, then NOP + scale
    assert scale(b"\x01\x03\x03\x1e") == 14                          # RFC 7323: at most 14
    assert scale(b"") == scale(b"\x02\x04\x05\xb4") == WSCALE_NONE
    assert scale(b"\x00\x03\x03\x07") == WSCALE_NONE                 # end of options first
    assert scale(b"\x08\x00\x03\x07") == WSCALE_NONE                 # a length below 2 stops the walk
    assert scale(b"\x08\x0c\x00\x00") == WSCALE_NONE                 # a length past the header
