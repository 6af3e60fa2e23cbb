"""GRO and GSO benchmark on one core (part of ``python -m vrouter.tools.bench``; no root, no sockets).

Receive: UDP_GRO reads of 40 x 1400 B MPLSoUDP segments (one TCP flow, as one GSO send of the peer
arrives) merged into one super-packet, alone and followed by ``Pipeline.from_fabric`` (one flow
lookup per super-packet); and with GRO switched off (every segment alone, partial checksums
flagged) followed by one ``from_fabric`` per segment. Send: a 64 KB TCP super-frame (MSS 1448)
through ``Pipeline.from_vif`` and cut into one UDP_SEGMENT buffer. The shell's copies and system
calls around these are `bench_bulk`'s. Figures are segments/s per core,
best of several runs; the brief's reference is 4.3 us per segment for GRO read -> per-segment
Python -> GSO send.
"""
from vrouter.core import gso
from vrouter.core.codec import ethernet, ipv4, l4
from vrouter.core.config import VROUTER_MAC, VrouterConfig
from vrouter.core.gro import Gro
from vrouter.core.pipeline import Pipeline, encap_prefix
from vrouter.core.slowpath import SlowPath
from vrouter.tools.benchlib import LOCAL, VM_MAC, best_seconds, overlay

SEGMENT, BATCH, MSS = 1400, 40, 1448
REFERENCE_US = 4.3
REMOTE = "10.2.0.2"


def _pipeline() -> Pipeline:
    cfg = VrouterConfig.from_dict(overlay("mplsoudp"))
    pipe, slow = Pipeline(cfg), SlowPath(cfg)
    assert pipe.from_vif("tap0", vm_frame(b"", l4.TCP_SYN), 0.0) == []
    (request,) = pipe.take_punts(0.0)
    pipe.install(slow.decide(request, 0.0), 0.0)
    return pipe


def vm_frame(data: bytes, flags: int = l4.TCP_ACK) -> bytes:
    src, dst = ipv4.ip_to_int(LOCAL), ipv4.ip_to_int(REMOTE)
    seg = bytearray(l4.build_tcp(src, dst, 40000, 5201, data, seq=1, ack=1, flags=flags))
    seg[16:18] = gso.pseudo_sum(src, dst, ipv4.IPPROTO_TCP, len(seg)).to_bytes(2, "big")   # as TSO leaves it
    return ethernet.build(VROUTER_MAC, ethernet.mac_to_bytes(VM_MAC), ethernet.ETH_P_IP) + \
        ipv4.build(src, dst, ipv4.IPPROTO_TCP, bytes(seg), flags=ipv4.FLAG_DF)


def gro_read() -> tuple[bytes, int]:
    """One UDP_GRO read as the peer's GSO send produces it: 40 segments of the reply stream (bench_bulk
    reads the same)."""
    src, dst = ipv4.ip_to_int(REMOTE), ipv4.ip_to_int(LOCAL)
    seg = bytearray(l4.build_tcp(src, dst, 5201, 40000, b"\xab" * (BATCH * SEGMENT), seq=1, ack=1))
    ip = ipv4.build(src, dst, ipv4.IPPROTO_TCP, bytes(seg), flags=ipv4.FLAG_DF)
    buf, chunk, n = gso.segment(encap_prefix("mplsoudp", 100, b""), ip, SEGMENT)
    assert n == BATCH
    return buf, chunk


def _check_setup(on: Gro, buf, chunk: int, from_fabric) -> None:
    """The bench measures what it says: one read merges into one super-packet that hits its flow."""
    if len(on.batch("mplsoudp", buf, chunk)) != 1:
        raise RuntimeError("benchmark batch did not merge into one super-packet")
    (d,) = on.batch("mplsoudp", buf, chunk)
    if from_fabric("10.0.2.1", "mplsoudp", d[0], 1.0, d[1])[0].__class__.__name__ != "ToVifParts":
        raise RuntimeError("benchmark super-packet did not hit its flow entry")


def run(quick: bool) -> dict:
    reads, repeats = (250, 3) if quick else (2500, 5)
    buf, chunk = gro_read()
    pipe = _pipeline()
    on, off = Gro(), Gro(enabled=False)
    from_fabric = pipe.from_fabric
    _check_setup(on, buf, chunk, from_fabric)

    def merge_only():
        for _ in range(reads):
            on.batch("mplsoudp", buf, chunk)

    def merge_and_route():
        for _ in range(reads):
            for head, tail, _, _, _ in on.batch("mplsoudp", buf, chunk):
                from_fabric("10.0.2.1", "mplsoudp", head, 1.0, tail)

    def off_and_route():
        for _ in range(reads):
            for head, tail, _, _, _ in off.batch("mplsoudp", buf, chunk):
                from_fabric("10.0.2.1", "mplsoudp", head, 1.0, tail)

    frame = vm_frame(b"\xcd" * (65535 - 40))
    (tun,) = pipe.from_vif("tap0", frame, 1.0)
    n_send = gso.split_payload("mplsoudp", tun.payload, MSS)[2]
    from_vif, split, sends = pipe.from_vif, gso.split_payload, gso.sends
    supers = max(1, reads * BATCH // n_send)

    def split_only():
        for _ in range(supers):
            split("mplsoudp", tun.payload, MSS)

    def route_and_split():
        for _ in range(supers):
            for a in from_vif("tap0", frame, 1.0):
                sends(*split("mplsoudp", a.payload, MSS)[:2])

    rows = []
    for name, fn, segs in (("gro merge, 40 x 1400 B per read", merge_only, reads * BATCH),
                           ("gro merge + from_fabric per super-packet", merge_and_route, reads * BATCH),
                           ("gro off + from_fabric per segment", off_and_route, reads * BATCH),
                           ("gso split, 64 KB super-frame, MSS 1448", split_only, supers * n_send),
                           ("from_vif per super-frame + gso split", route_and_split, supers * n_send)):
        rate = segs / best_seconds(fn, repeats)
        rows.append({"name": name, "segments_per_s": round(rate)})
    rate = {r["name"]: r["segments_per_s"] for r in rows}
    return {"rows": rows, "reference_us_per_segment": REFERENCE_US,
            "gro_merge_segments_per_s": rate["gro merge, 40 x 1400 B per read"],
            "gro_receive_segments_per_s": rate["gro merge + from_fabric per super-packet"],
            "gso_send_segments_per_s": rate["from_vif per super-frame + gso split"],
            "segments_per_merge": float(BATCH)}


def report(res: dict, out=print) -> None:
    out(f"{'GRO / GSO (MPLSoUDP, one TCP flow)':<58}{'segs/s':>12}{'us/seg':>9}{'Gbit/s':>10}")
    for r in res["rows"]:
        v = r["segments_per_s"]
        out(f"  {r['name']:<56}{v:>12,}{1e6 / v:>9.2f}{v * SEGMENT * 8 / 1e9:>10.1f}")
    out(f"reference (brief): GRO read -> per-segment Python -> GSO send {res['reference_us_per_segment']} us/segment")
