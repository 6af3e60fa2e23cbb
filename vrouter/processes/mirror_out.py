"""The datapath's hook for mirroring: after each batch, the copies the core made go out.

Why a module: datapath.py is at its size limit. The core (vrouter/core/mirror.py) leaves its copies
in ``Mirror.out``; ``drain`` runs when that list is not empty (one test per batch, nothing per
packet): pcap copies go to the holder's ``PcapFiles`` (vrouter/io/mirror_pcap.py; a holder without
one, a multi-core worker, counts them as ``mirror_no_sink``), analyzer copies are ordinary overlay
packets sent like any ToTunnel or ToVif (plain, never cut: a copy is one packet).
"""
from __future__ import annotations

from vrouter.core.mirror import ClosePcap, Mirror, ToPcap


def drain(dp, mirror: Mirror) -> None:
    sink = dp.mirror_sink
    execute = dp._execute
    wrote = False
    for item in mirror.take():
        t = type(item)
        if t is ToPcap:
            if sink is None:
                dp.counters["mirror_no_sink"] += 1
            else:
                sink.write(item.session, item.frame, item.at)
                wrote = True
        elif t is ClosePcap:
            if sink is not None:
                sink.close(item.session)
        else:
            execute((item,))
    if wrote:
        sink.flush()
