"""The bulk TCP path through core and shell on one core: ``python -m vrouter.tools.bench_bulk [--quick] [--json]``.

What `bench_gro` times in the core alone, here with the shell's copies and system calls, per
super-frame and as CPU seconds per GB of TCP data (the figure `testbed bench throughput` gives for a
whole vrouter, without the kernel's TAP and fabric work):

- receive: one UDP_GRO read of 40 x 1400 B MPLSoUDP segments through ``Datapath.from_reads`` (GRO
  merge, one ``from_fabric``, the TAP write); the TAP is /dev/null (the write costs its system call,
  the kernel copies nothing) or a unix datagram socket that this process reads back (the kernel copies
  the frame, as a TAP does, and the read back is timed too);
- send: a 64 KB TSO super-frame (MSS 1448: 46 segments) through ``Datapath.from_tap`` (``from_vif``,
  the GSO cut, two UDP_SEGMENT sends) to a UDP socket on loopback (127.0.0.2) that drops what it
  receives (a tiny receive buffer).

No root: loopback only, no namespaces. CPU time (user + system of this process) is the best of
several runs; the loopback's receive work runs in the sender's system call and is part of it.
"""
import collections
import os
import socket
import sys
import time

from vrouter.core.codec import l4, virtio
from vrouter.core.config import VrouterConfig
from vrouter.core.offload import Offloads
from vrouter.core.slowpath import SlowPath
from vrouter.io.tunnel import SOL_UDP, UDP_GRO, UDP_PORTS, EntropySender
from vrouter.processes.datapath import AgentLink, Datapath, VifPort
from vrouter.tools.bench_gro import BATCH, MSS, SEGMENT, gro_read, vm_frame
from vrouter.tools.benchlib import JSON_HELP, bench_cli, overlay

UNDERLAY, PEER = "127.0.0.1", "127.0.0.2"   # loopback: the sends never leave this machine
VIF = "tap0"


class _LoopbackSender(EntropySender):
    """The shell's tunnel sender (entropy-port sockets, UDP GSO) bound on loopback; no raw sockets,
    so every packet leaves from a pooled UDP socket, as a flow with super-frames does."""

    def __init__(self) -> None:
        super().__init__(UNDERLAY, 64)
        self._fb = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._fb.bind((UNDERLAY, 0))

    def _fallback(self, encap: str) -> socket.socket:
        return self._fb

    def close(self) -> None:
        for s in [self._fb, *self._pool.values()]:
            s.close()


def _datapath() -> Datapath:
    """A datapath with the VM's flow to REMOTE established both ways (the reverse entry proactive)."""
    cfg = overlay("mplsoudp")
    cfg["underlay_ip"] = UNDERLAY
    cfg["routes"][0]["nexthop"]["peer"] = PEER
    config = VrouterConfig.from_dict(cfg)
    dp = Datapath(AgentLink(collections.Counter(), lambda _sock, _exc: None), Offloads(), clock=lambda: 1.0)
    dp.configure(config)
    pipe = dp.pipeline
    assert pipe.from_vif(VIF, vm_frame(b"", l4.TCP_SYN), 0.0) == []
    (request,) = pipe.take_punts(0.0)
    pipe.install(SlowPath(config).decide(request, 0.0), 0.0)
    return dp


def _cpu_best(fn, rounds: int, repeats: int) -> tuple[float, float]:
    """(CPU seconds, wall seconds) per call of ``fn``: the run with the least CPU of ``repeats``."""
    best = (float("inf"), float("inf"))
    for _ in range(repeats):
        c, w = time.process_time(), time.perf_counter()
        for _ in range(rounds):
            fn()
        best = min(best, ((time.process_time() - c) / rounds, (time.perf_counter() - w) / rounds))
    return best


def _row(name: str, fn, data_bytes: int, rounds: int, repeats: int) -> dict:
    cpu, wall = _cpu_best(fn, rounds, repeats)
    return {"name": name, "us_per_super_frame": round(cpu * 1e6, 2), "wall_us_per_super_frame": round(wall * 1e6, 2),
            "cpu_s_per_gb": round(cpu / data_bytes * 1e9, 3), "data_bytes": data_bytes}


def receive_rows(rounds: int, repeats: int) -> list[dict]:
    dp = _datapath()
    buf, chunk = gro_read()
    reads = [(PEER, "mplsoudp", buf, chunk)]
    port = dp.vifs[VIF] = VifPort(None, [os.open(os.devnull, os.O_WRONLY)], None)
    from_reads = dp.from_reads
    rows = []
    try:
        from_reads(reads)
        if port.counters["tx_packets"] != 1 or dp.offloads.hist[BATCH] != 1:
            raise RuntimeError("benchmark read did not merge into one super-packet written to the VM")

        def to_devnull():
            from_reads(reads)
        rows.append(_row("receive: GRO read -> from_fabric -> writev /dev/null", to_devnull, BATCH * SEGMENT,
                         rounds, repeats))
        vm, tap_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        tap_end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        rbuf = bytearray(1 << 17)
        port.fd = tap_end.fileno()
        recv_into = vm.recv_into

        def to_socket():
            from_reads(reads)
            recv_into(rbuf)
        got = (from_reads(reads), recv_into(rbuf))[1]
        if got != 10 + 14 + 40 + BATCH * SEGMENT:
            raise RuntimeError(f"the VM's socket read {got} bytes, not one super-packet")
        rows.append(_row("receive: ... -> writev unix socket + read back", to_socket, BATCH * SEGMENT,
                         rounds, repeats))
        vm.close()
        tap_end.close()
    finally:
        os.close(port.queues[0])
    return rows


def send_rows(rounds: int, repeats: int) -> list[dict]:
    dp = _datapath()
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sink.setsockopt(SOL_UDP, UDP_GRO, 1)            # loopback keeps the GSO packet whole for it
        sink.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
        sink.bind((PEER, UDP_PORTS["mplsoudp"]))
    except OSError:
        sink.close()
        sink = None         # port taken: the kernel answers port unreachable instead, same for both sides
    dp.sender = sender = _LoopbackSender()
    frame = vm_frame(b"\xcd" * (65535 - 40))
    raw = virtio.tcpv4_gso(14, 20, 20, MSS) + frame
    frames = [raw]
    from_tap = dp.from_tap
    try:
        from_tap(VIF, frames)
        segs = sender.counters["tx_mplsoudp"]
        if segs != 46 or sender.counters["tx_gso_sends"] != 2:
            raise RuntimeError(f"benchmark super-frame went out as {segs} segments, "
                               f"{sender.counters['tx_gso_sends']} GSO sends, not 46 in 2")

        def send():
            from_tap(VIF, frames)
        row = _row("send: TAP super-frame -> from_vif -> GSO sendmsg loopback", send, 65535 - 40, rounds, repeats)
        row["sink_bound"] = sink is not None
        return [row]
    finally:
        sender.close()
        if sink is not None:
            sink.close()


def run(quick: bool) -> dict:
    rounds, repeats = (300, 3) if quick else (3000, 5)
    rows = receive_rows(rounds, repeats) + send_rows(rounds, repeats)
    return {"rows": rows, "segments_per_read": BATCH, "segment_bytes": SEGMENT, "send_mss": MSS}


def report(res: dict, out=print) -> None:
    out(f"{'bulk path through the shell, one super-frame (MPLSoUDP)':<62}{'CPU us':>9}{'wall us':>9}{'CPU s/GB':>10}")
    for r in res["rows"]:
        out(f"  {r['name']:<60}{r['us_per_super_frame']:>9.2f}{r['wall_us_per_super_frame']:>9.2f}"
            f"{r['cpu_s_per_gb']:>10.3f}")
        if r.get("sink_bound") is False:
            out(f"    ({PEER}:{UDP_PORTS['mplsoudp']} was taken: the kernel answered port unreachable instead)")


def main(argv=None) -> int:
    return bench_cli("python -m vrouter.tools.bench_bulk", __doc__, run, report, argv,
                     quick_help="fewer rounds, a few seconds", json_help=JSON_HELP)


if __name__ == "__main__":
    sys.exit(main())
