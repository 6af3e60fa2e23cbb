"""TCP teardown of a flow pair: both FINs acknowledged, or a RST that RFC 5961 accepts.

Kept apart from the pipeline's hit path, which only keeps a copy of each segment's headers in its
entry (``FlowEntry.tw``: the IPv4 header and the TCP header up to the window, parsed here when a
RST needs them) and calls ``segment`` when the segment or the pair is in an unusual state (a FIN, a
RST, the other side's FIN to acknowledge, a SYN on a closed pair). Window-scale options are parsed
only on SYNs.

RST (RFC 5961 section 3, as an on-path box can check it): a RST from S closes the pair only if its
sequence number lies in the receiver R's window: from the last ACK number R sent, for R's last
advertised window (shifted by R's window scale when both SYNs carried the option, RFC 7323; never
for a SYN's own window), and at least up to S's next sequence number (the end of S's last segment:
R's ACKs may lag what S sent). A RST before R sent any ACK (no state yet, e.g. the answer to a SYN)
is accepted. An out-of-window RST is forwarded (the endpoint answers it with a challenge ACK) but
leaves the pair open, counted as ``tcp_rst_out_of_window``.

Both FINs acknowledged (sequence numbers checked) also closes the pair. Closing at the first ACK
after the second FIN is wrong for a simultaneous close: the two last ACKs cross, and the later one
would take the slow path at each vrouter. A closed pair is not removed here: it lingers
(``closed_linger``) so late ACKs and retransmissions still hit; a SYN on it starts a new connection
with the same decision.
"""
from __future__ import annotations

import struct
from typing import Final

from .codec.buffer import Buffer
from .codec.l4 import TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN
from .flowtable import (
    TCP_CLOSED,
    TCP_CLOSING,
    TCP_FIN_ACKED,
    TCP_PEER_FIN,
    WSCALE_NONE,
    WSCALE_UNKNOWN,
    FlowEntry,
)

_SEQ_MOD: Final = 0xFFFFFFFF
_HALF: Final = 0x80000000        # sequence comparisons: a - b < _HALF (mod 2**32) means a >= b
_MAX_WSCALE: Final = 14          # RFC 7323 2.3
_OPT_END, _OPT_NOP, _OPT_WSCALE = 0, 1, 3
_TCP = struct.Struct("!IIBBH").unpack_from      # seq, ack, data offset byte, flags, window (at l4 + 4)
_LEN = struct.Struct("!H").unpack_from          # IPv4 total length (at 2)


def window_scale(buf: Buffer, l4: int) -> int:
    """The window-scale shift in a SYN's options (at most 14), or WSCALE_NONE without one."""
    end = min(l4 + (buf[l4 + 12] >> 4) * 4, len(buf))
    i = l4 + 20
    while i < end:
        kind = buf[i]
        if kind == _OPT_END:
            break
        if kind == _OPT_NOP:
            i += 1
            continue
        if i + 1 >= end or buf[i + 1] < 2:
            break
        if kind == _OPT_WSCALE and buf[i + 1] == 3 and i + 2 < end:
            return min(buf[i + 2], _MAX_WSCALE)
        i += buf[i + 1]
    return WSCALE_NONE


def _fields(head: Buffer, off: int = 0) -> tuple[int, int, int, int, int]:
    """(seq, ack, flags, window, end) of the segment whose IPv4 header starts at ``off``; end is the
    sequence number after it (what its sender would send next)."""
    ihl = (head[off] & 15) * 4
    seq, ack, doff, flags, window = _TCP(head, off + ihl + 4)
    data = _LEN(head, off + 2)[0] - ihl - (doff >> 4) * 4
    return seq, ack, flags, window, (seq + data + (1 if flags & (TCP_SYN | TCP_FIN) else 0)) & _SEQ_MOD


def rst_in_window(e: FlowEntry, seq: int) -> bool:
    """May a RST with sequence number ``seq`` sent on ``e`` close the pair? (See the module doc.)"""
    r = e.reverse
    if r is None or r.tw is None:
        return True
    _, ack, rflags, window, _ = _fields(r.tw)
    if not rflags & TCP_ACK:
        return True
    if not rflags & TCP_SYN and r.wscale >= 0 and e.wscale >= 0:
        window <<= r.wscale
    span = max(window, 1)
    if e.tw is not None:
        reach = (_fields(e.tw)[4] - ack) & _SEQ_MOD
        if reach < _HALF:
            span = max(span, reach + 1)
    return (seq - ack) & _SEQ_MOD < span


def segment(e: FlowEntry, buf: Buffer, off: int, l4: int, tlen: int, counts: dict[str, int]) -> None:
    """A segment on ``e`` (IPv4 header at ``off``, TCP at ``l4``) with FIN or RST set, or after the
    other side's FIN, or on a closed pair. ``e.tw`` still holds the previous segment; ``e.tcp``
    already has this one's flags."""
    seq, ack, doff, flags, _ = _TCP(buf, l4 + 4)
    if e.tcp & TCP_CLOSED:
        if flags & TCP_SYN:
            reopen(e, flags, buf, l4)
        return
    r = e.reverse
    if flags & TCP_RST:
        if rst_in_window(e, seq):
            close(e, r, counts)
        else:
            counts["tcp_rst_out_of_window"] += 1
            e.tcp &= ~TCP_RST           # later segments take the plain hit path again
        return
    if flags & TCP_FIN:
        data = tlen - (l4 - off) - (doff >> 4) * 4
        e.fin_seq = (seq + data + 1) & _SEQ_MOD
        if r is not None:
            r.tcp |= TCP_PEER_FIN
    if r is None:
        return
    if flags & TCP_ACK and r.fin_seq >= 0 and (ack - r.fin_seq) & _SEQ_MOD < _HALF:
        r.tcp |= TCP_FIN_ACKED
    if e.tcp & TCP_FIN and r.tcp & TCP_FIN:
        e.tcp |= TCP_CLOSING
        r.tcp |= TCP_CLOSING
    if e.tcp & TCP_FIN_ACKED and r.tcp & TCP_FIN_ACKED:
        close(e, r, counts)


def close(e: FlowEntry, r: FlowEntry | None, counts: dict[str, int]) -> None:
    counts["tcp_teardowns"] += 1
    e.tcp |= TCP_CLOSED
    if r is not None:
        r.tcp |= TCP_CLOSED


def reopen(e: FlowEntry, flags: int, buf: Buffer, l4: int) -> None:
    """A SYN on a lingering closed pair: a new connection on the same 5-tuple. The decision stands
    (same key, same policy; config changes re-evaluate entries anyway): only the TCP state starts
    again, the other direction's included (no ACK of the new connection seen from it yet)."""
    e.tcp, e.fin_seq = flags, -1
    e.wscale = window_scale(buf, l4)
    r = e.reverse
    if r is not None:
        r.tcp, r.fin_seq, r.tw, r.wscale = 0, -1, None, WSCALE_UNKNOWN
