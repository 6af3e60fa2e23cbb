"""Where one overlay round trip spends its time: the pure half of the latency breakdown (issue 13).

A stamping vrouter (vrouter/processes/datapath.py, `stamp on`) records, for every ICMP echo packet it
carries, a `Stamp`: where it came in (the VM's TAP or the fabric), the echo's id, sequence number and
type, and five CLOCK_REALTIME times in ns: `t_in` (when the packet was ready for the vrouter: the
kernel's receive timestamp of the tunnel datagram, SO_TIMESTAMPNS; for a request from the VM, the
send time iputils ping writes into its echo data; 0 when neither is known), `t_woke` (the vrouter's
epoll wait returned), `t_read` (its read returned and the packet reached the datapath), `t_pipe` (the
pipeline decided) and `t_sent` (the send or TAP write returned).

`breakdown` joins the stamps of both vrouters of one ping by (id, seq) into the 12 legs of its
critical path, source VM -> source vrouter -> fabric -> destination vrouter -> VM and back:

    out:   wake (VM sent -> epoll returns), read, pipeline, send + fabric (decided -> kernel rx at the
           far end), wake (kernel rx -> epoll returns), read, pipeline, TAP write
    turn:  the VM's answer (request written -> epoll returns with the reply), read
    back:  pipeline, send + fabric, wake, read, pipeline, TAP write (ping's socket gets the reply in it)

A send's own system call is not on the path: the far side often has the packet before the sender's
call returns (on 2 cores the sender is descheduled for OVS and the receiver), so send + fabric runs
from the decision to the far kernel's receive time; the send calls are reported beside it. Every
clock is the same machine's realtime clock, so legs across processes subtract directly.
"""
from __future__ import annotations

import statistics
import struct
from typing import Any, NamedTuple

from .codec.buffer import Buffer
from .codec.l4 import ICMP_ECHO_REPLY
from .codec.l4 import ICMP_ECHO_REQUEST as ICMP_ECHO

_ECHO = struct.Struct("!BBHHH")
_TIMEVAL = struct.Struct("<qq")        # iputils ping: struct timeval at the start of the echo data (x86-64)
PLAUSIBLE_NS = 10 * 10**9             # a VM send time further than this from the read is not a timestamp

# Each leg: (name, (stamp, time) it ends at, (stamp, time) it starts at). The stamps of one echo are
# a: the request read from the source VM, b: the request from the fabric at the destination,
# c: the reply read from the destination VM, d: the reply from the fabric back at the source.
_SPANS = (
    ("wake_vm_to_src", ("a", "t_woke"), ("a", "t_in")), ("src_read", ("a", "t_read"), ("a", "t_woke")),
    ("src_pipeline", ("a", "t_pipe"), ("a", "t_read")), ("src_send_call", ("a", "t_sent"), ("a", "t_pipe")),
    ("send_fabric_out", ("b", "t_in"), ("a", "t_pipe")), ("wake_fabric_to_dst", ("b", "t_woke"), ("b", "t_in")),
    ("dst_read", ("b", "t_read"), ("b", "t_woke")), ("dst_pipeline", ("b", "t_pipe"), ("b", "t_read")),
    ("dst_tap_write", ("b", "t_sent"), ("b", "t_pipe")), ("vm_turnaround", ("c", "t_woke"), ("b", "t_sent")),
    ("dst_read_reply", ("c", "t_read"), ("c", "t_woke")), ("dst_pipeline_reply", ("c", "t_pipe"), ("c", "t_read")),
    ("dst_send_call", ("c", "t_sent"), ("c", "t_pipe")), ("send_fabric_back", ("d", "t_in"), ("c", "t_pipe")),
    ("wake_fabric_to_src", ("d", "t_woke"), ("d", "t_in")), ("src_read_reply", ("d", "t_read"), ("d", "t_woke")),
    ("src_pipeline_reply", ("d", "t_pipe"), ("d", "t_read")), ("src_tap_write", ("d", "t_sent"), ("d", "t_pipe")),
)

SEND_CALLS = ("src_send_call", "dst_send_call")     # beside the path, see the module docstring
LEGS = tuple(name for name, _, _ in _SPANS if name not in SEND_CALLS)     # the critical path, in order
# The legs spent in the vrouters and VMs (the rest is the UDP send, OVS and the far kernel's receive).
VROUTER_LEGS = tuple(leg for leg in LEGS if not leg.startswith("send_fabric"))


class Stamp(NamedTuple):
    server: str
    ingress: str        # "vif" | "fabric"
    icmp_type: int
    ident: int
    seq: int
    t_in: int
    t_woke: int
    t_read: int
    t_pipe: int
    t_sent: int


def echo(buf: Buffer, ip_off: int) -> tuple[int, int, int, int] | None:
    """(type, id, seq, start of the echo data) of an unfragmented ICMP echo / echo reply in IPv4 at
    ``ip_off``, or None for anything else."""
    if len(buf) < ip_off + 28 or buf[ip_off] >> 4 != 4 or buf[ip_off + 9] != 1:
        return None
    if (buf[ip_off + 6] & 0x3F) or buf[ip_off + 7]:
        return None
    l4 = ip_off + (buf[ip_off] & 15) * 4
    if len(buf) < l4 + 8:
        return None
    t, _code, _sum, ident, seq = _ECHO.unpack_from(buf, l4)
    if t not in (ICMP_ECHO, ICMP_ECHO_REPLY):
        return None
    return t, ident, seq, l4 + 8


def ping_sent_ns(buf: Buffer, data_off: int, near_ns: int) -> int:
    """The send time iputils ping put in its echo data (ns), or 0 if there is none near ``near_ns``."""
    if len(buf) < data_off + 16:
        return 0
    sec, usec = _TIMEVAL.unpack_from(buf, data_off)
    if not 0 <= usec < 1_000_000:
        return 0
    t = sec * 10**9 + usec * 1000
    return t if abs(near_ns - t) < PLAUSIBLE_NS else 0


def legs_of(src: str, dst: str, stamps: list[Stamp]) -> dict[tuple[int, int], dict[str, float]]:
    """Per echo (id, seq) from a VM behind `src` to one behind `dst`: every leg in us (a leg whose
    stamps are missing is left out)."""
    by: dict[tuple[str, str, int, int, int], Stamp] = {}
    for s in stamps:
        by[(s.server, s.ingress, s.icmp_type, s.ident, s.seq)] = s
    out: dict[tuple[int, int], dict[str, float]] = {}
    for (server, ingress, t, ident, seq), a in by.items():
        if server != src or ingress != "vif" or t != ICMP_ECHO:
            continue
        echo_stamps = {"a": a, "b": by.get((dst, "fabric", ICMP_ECHO, ident, seq)),
                       "c": by.get((dst, "vif", ICMP_ECHO_REPLY, ident, seq)),
                       "d": by.get((src, "fabric", ICMP_ECHO_REPLY, ident, seq))}
        legs: dict[str, float] = {}
        for name, (s1, f1), (s0, f0) in _SPANS:
            x, y = echo_stamps[s1], echo_stamps[s0]
            t1, t0 = (getattr(x, f1), getattr(y, f0)) if x and y else (0, 0)
            if t1 and t0:
                legs[name] = (t1 - t0) / 1000
        out[(ident, seq)] = legs
    return out


def breakdown(src: str, dst: str, stamps: list[Stamp]) -> dict[str, Any]:
    """Median of every leg over the complete round trips (all legs known), the median of their sum
    (the round trip as the vrouters saw it), and of the vrouters' and VMs' share (every leg but the
    two send + fabric crossings)."""
    every = LEGS + SEND_CALLS
    trips = [legs for legs in legs_of(src, dst, stamps).values() if len(legs) == len(every)]
    if not trips:
        return {"round_trips": 0, "legs_us": {}, "sum_us": None, "vrouter_us": None}
    med = {leg: statistics.median(t[leg] for t in trips) for leg in every}
    return {"round_trips": len(trips), "legs_us": med,
            "sum_us": statistics.median(sum(t[leg] for leg in LEGS) for t in trips),
            "vrouter_us": statistics.median(sum(t[leg] for leg in VROUTER_LEGS) for t in trips)}
