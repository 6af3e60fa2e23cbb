"""Lab 5's check: the real Gro (vrouter/core/gro.py) with the student's verdict() as its merge rule.

Each scenario feeds one stream of MPLSoUDP tunnel payloads to two Gro objects, the student's and
the core's own (Linux's rules, inline), and compares what they deliver: segments per delivery, the
bytes, the virtio header and the flush reasons. The property check does the same on random
streams of two interleaved flows.
"""
from hypothesis import given
from hypothesis import strategies as st

from testbed.labkit import PROPERTY, Wrong
from vrouter.core.codec import ipv4, l4, mpls
from vrouter.core.codec.ipv4 import ip_to_int
from vrouter.core.codec.l4 import TCP_ACK, TCP_CWR, TCP_FIN, TCP_PSH, TCP_RST, TCP_URG
from vrouter.core.gro import Gro

SRC, DST = ip_to_int("192.168.1.13"), ip_to_int("192.168.1.11")
LABEL = mpls.build_stack([100])
MSS = 1400
TS = b"\x01\x01\x08\x0a\x00\x00\x00\x01\x00\x00\x00\x02"   # NOP NOP timestamps
WHERE = {1: "rule.py, verdict() (TODO 1: other_packet)", 2: "rule.py, verdict() (TODO 2: not_contiguous)",
         3: "rule.py, verdict() (TODO 3: size)", 4: "rule.py, verdict() (TODO 4: headers)",
         5: "rule.py, verdict() (TODO 5: psh, fin, short)"}


def segment(seq, dlen=MSS, flags=TCP_ACK, ack=1, win=1000, ident=0, ttl=64, tos=0, df=True, opts=b"", sport=5201):
    """One tunnel payload: MPLS label + IPv4 + TCP with ``dlen`` data bytes (a pattern of seq)."""
    data = bytes((seq + i) & 0xFF for i in range(dlen))
    tcp = l4.build_tcp(SRC, DST, sport, 40000, data, seq=seq, ack=ack, flags=flags, window=win, options=opts)
    return LABEL + ipv4.build(SRC, DST, ipv4.IPPROTO_TCP, tcp, ttl=ttl, ident=ident, tos=tos,
                              flags=ipv4.FLAG_DF if df else 0)


def stream(n, dlen=MSS, start=1000, changes=None):
    """n contiguous segments; ``changes`` maps an index to the keyword arguments it differs in."""
    out, seq = [], start
    for i in range(n):
        kw = {"dlen": dlen, "ident": i, **(changes or {}).get(i, {})}
        out.append(segment(seq, **kw))
        seq += kw["dlen"]
    return out


def run(gro, payloads):
    for p in payloads:
        gro.add("mplsoudp", p)
    out = gro.flush()
    flushes = {k: v for k, v in gro.stats()["flush"].items() if v}
    return out, flushes


def _describe(deliveries, flushes):
    # a delivery is (head, tail, segments, gso_size, vnet_hdr): vrouter/core/gro.py
    return f"{[d[2] for d in deliveries]} segments per delivery, flushes {flushes}"


def compare(student, what, payloads, todo):
    """The student's Gro against the core's on one stream; Wrong with both outcomes if they differ."""
    want = run(Gro(), payloads)
    try:
        got = run(Gro(rule=student.verdict), payloads)
    except OverflowError:
        raise Wrong(f"{what}: your rule let a merge grow beyond 65,535 bytes of IPv4 packet (the total length "
                    "field overflowed while the super-packet was written)", WHERE[3]) from None
    if got != want:
        same_shape = [d[2] for d in got[0]] == [d[2] for d in want[0]] and got[1] == want[1]
        detail = " (the same shape, other bytes)" if same_shape else ""
        raise Wrong(f"{what}: your rule gives {_describe(*got)}; Linux GRO gives {_describe(*want)}{detail}",
                    WHERE[todo])


def check_contiguous_stream(ctx):
    """10 full segments of one flow become one super-packet of 10"""
    compare(ctx.student(), "10 contiguous segments of 1400 bytes", stream(10), 2)


def check_end_of_merge(ctx):
    """PSH, FIN and a short segment join and end the merge (TODO 5)"""
    s = ctx.student()
    compare(s, "8 segments, PSH on the 5th", stream(8, changes={4: {"flags": TCP_ACK | TCP_PSH}}), 5)
    compare(s, "6 segments, FIN on the last", stream(6, changes={5: {"flags": TCP_ACK | TCP_FIN}}), 5)
    compare(s, "6 segments, the 4th of 600 bytes", stream(6, changes={3: {"dlen": 600}}), 5)


def check_gaps(ctx):
    """a gap or a repeated segment starts a new merge (TODO 2)"""
    s = ctx.student()
    segs = stream(8)
    compare(s, "8 segments with the 4th missing", segs[:3] + segs[4:], 2)
    compare(s, "8 segments with the 3rd sent twice", segs[:3] + segs[2:], 2)


def check_other_packets(ctx):
    """a pure ACK, a RST or an URG segment delivers the merge and passes alone (TODO 1)"""
    s = ctx.student()
    segs = stream(4)
    after = 1000 + 4 * MSS
    for name, extra in (("a pure ACK (no data)", segment(after, dlen=0, ident=4)),
                        ("a RST", segment(after, dlen=0, flags=TCP_RST | TCP_ACK, ident=4)),
                        ("an URG segment with data", segment(after, flags=TCP_URG | TCP_ACK, ident=4))):
        compare(s, f"4 segments then {name}", segs + [extra] + stream(2, start=after), 1)


HEADER_CHANGES = (("another ACK number", {"ack": 2}), ("another window", {"win": 2000}), ("another TTL", {"ttl": 63}),
                  ("another TOS", {"tos": 0x10}), ("TCP options the others lack", {"opts": TS}),
                  ("an IP id that jumps (no DF)", {"ident": 40, "df": False}),
                  ("CWR set", {"flags": TCP_ACK | TCP_CWR}), ("48 bytes more data than the first", {"dlen": MSS + 48}))


def check_headers(ctx):
    """a segment whose headers differ from the first's delivers the merge (TODO 4)"""
    s = ctx.student()
    for name, change in HEADER_CHANGES:
        base = {i: {"df": False} for i in range(6)} if "df" in change else {}
        base[3] = {**base.get(3, {}), **change}
        compare(s, f"6 segments, the 4th with {name}", stream(6, changes=base), 4)


def check_size(ctx):
    """a merge stops at 64 KB of IPv4 packet (TODO 3)"""
    compare(ctx.student(), "50 contiguous segments of 1448 bytes (72,400 bytes of data)", stream(50, dlen=1448), 3)


steps = st.lists(st.tuples(st.sampled_from([5201, 5202]),
                           st.sampled_from(["ok"] * 6 + ["gap", "psh", "fin", "short", "ack", "win", "ttl",
                                                         "ident", "cwr", "urg", "pure_ack", "rst", "longer"])),
                 min_size=1, max_size=40)
TODO_OF = {"gap": 2, "psh": 5, "fin": 5, "short": 5, "ack": 4, "win": 4, "ttl": 4, "ident": 4, "cwr": 4,
           "longer": 4, "urg": 1, "pure_ack": 1, "rst": 1}


def _random_stream(plan):
    state = {p: [1000 * p % 7919, 0] for p in (5201, 5202)}       # next seq, next ident per flow
    out = []
    for sport, kind in plan:
        seq, ident = state[sport]
        dlen = {"short": 300, "longer": MSS + 100, "pure_ack": 0, "rst": 0}.get(kind, MSS)
        if kind == "gap":
            seq += MSS
        kw = {"flags": {"psh": TCP_ACK | TCP_PSH, "fin": TCP_ACK | TCP_FIN, "cwr": TCP_ACK | TCP_CWR,
                        "urg": TCP_ACK | TCP_URG, "rst": TCP_ACK | TCP_RST}.get(kind, TCP_ACK),
              "ack": 2 if kind == "ack" else 1, "win": 999 if kind == "win" else 1000,
              "ttl": 60 if kind == "ttl" else 64, "ident": ident + 7 if kind == "ident" else ident}
        out.append(segment(seq, dlen=dlen, sport=sport, df=kind != "ident", **kw))
        state[sport] = [seq + dlen, kw["ident"] + 1]
    return out


def check_random_streams(ctx):
    """random streams of two interleaved flows merge as Linux GRO merges them"""
    s = ctx.student()

    @PROPERTY
    @given(steps)
    def same_as_linux(plan):
        kinds = sorted({k for _, k in plan if k != "ok"})
        todo = min((TODO_OF[k] for k in kinds), default=2)
        compare(s, f"the stream {' '.join(f'{k}@{p}' for p, k in plan)} (segment kind@flow)", _random_stream(plan),
                todo)
    same_as_linux()
