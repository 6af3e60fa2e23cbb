"""Lab 5, solved: the GRO merge rule (see the starter's docstring for merge, seg and the verdicts).

The same rules as the inline condition of vrouter/core/gro.py's Gro._add, in the order its
flush reasons are given (Gro._why).
"""
from vrouter.core.codec.l4 import TCP_CWR, TCP_FIN, TCP_PSH, TCP_RST, TCP_SYN, TCP_URG


def _same_headers(merge, seg):
    return (seg.dlen <= merge.mss and seg.flags & ~(TCP_PSH | TCP_FIN) == merge.flags & ~TCP_CWR
            and seg.ack == merge.ack and seg.win == merge.win and seg.thl == merge.thl and seg.opts == merge.opts
            and seg.tos == merge.tos and seg.ttl == merge.ttl and seg.df == merge.df
            and (seg.ident == (merge.last_id + 1) & 0xFFFF or (seg.df and seg.ident == merge.last_id)))


def verdict(merge, seg):
    if seg.dlen <= 0 or seg.flags & (TCP_SYN | TCP_RST | TCP_URG):
        return False, "other_packet"
    if seg.seq != merge.next_seq:
        return False, "not_contiguous"
    if seg.dlen <= merge.mss and merge.size + seg.dlen > merge.limit:
        return False, "size"
    if not _same_headers(merge, seg):
        return False, "headers"
    if seg.flags & TCP_PSH:
        return True, "psh"
    if seg.flags & TCP_FIN:
        return True, "fin"
    if seg.dlen < merge.mss:
        return True, "short"
    return True, None
