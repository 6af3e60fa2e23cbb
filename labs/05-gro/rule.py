"""Lab 5: the GRO merge rule, the decision Linux's tcp_gro_receive makes for every segment.

A receiving vrouter merges the tunnel packets of one TCP flow into one super-packet before it
routes them (vrouter/core/gro.py, Gro). When a segment of a flow arrives while a merge of that flow
is open, verdict() decides what happens; `testbed lab check 5` runs the real Gro with your
verdict() in it.

``merge`` (the open merge) has: mss (the first segment's data length), next_seq (the sequence
number the next segment must carry), ack, win, thl (TCP header length), tos, ttl, df, last_id
(IPv4 id of the last segment that joined), opts (TCP options), flags (the first segment's TCP
flags), size (data bytes so far), limit (data bytes a super-packet may hold), n (segments so far).

``seg`` (the new segment) has: seq, dlen (data bytes), flags, ack, win, thl, tos, ttl, df, ident
(IPv4 id), opts.

Return (joins, reason):
    (True, None)              the segment joins; the merge stays open
    (True, "psh" | "fin" | "short")   the segment joins and the merge is delivered at once
    (False, "other_packet" | "not_contiguous" | "size" | "headers")
                              the open merge is delivered for that reason; the segment goes on
                              alone or starts a new merge
"""
from vrouter.core.codec.l4 import TCP_CWR, TCP_FIN, TCP_PSH, TCP_RST, TCP_SYN, TCP_URG  # noqa: F401


def verdict(merge, seg):
    # TODO 1: a segment that can never merge (no data; SYN, RST or URG set) -> "other_packet".
    # TODO 2: data that does not follow the merge's (a gap, a retransmission) -> "not_contiguous".
    # The starter does only this one:
    if seg.seq != merge.next_seq:
        return False, "not_contiguous"
    # TODO 3: the merge may not grow beyond merge.limit data bytes -> "size".
    # TODO 4: every header the super-packet keeps from its first segment must be the same in this
    # one: ack, win, thl and opts, tos, ttl, df; flags apart from PSH and FIN (CWR only on the
    # first segment); the IPv4 id one more than the last one's (or the same, with DF); and no
    # segment longer than the first (merge.mss) -> "headers".
    # TODO 5: after joining, deliver at once when the segment has PSH ("psh") or FIN ("fin"), or is
    # shorter than the first ("short").
    return True, None
