"""New-flow generator for `testbed bench flowsetup`: one UDP datagram per new flow, paced, run inside
a VM's network namespace (`python -m testbed.flowgen --dst IP --rate R --seconds S`).

Why a program of its own: the bench must offer new flows faster than any shell tool would, and know
exactly how many it offered. A tight `sendto` loop on one UDP socket with a changing destination port
makes every datagram a new 5-tuple; after the last port the next socket (a new source port) takes
over, so a run never repeats a flow. Pacing is by chunks: the clock is read every `chunk` datagrams
and the loop sleeps until the schedule (start + sent / rate) catches up; a sender that falls behind
by more than MAX_LAG moves its schedule instead of bursting to catch up. `--rate 0` sends as fast as
it can (the bench measures one generator's ceiling that way). Standard library only: it runs in the
VM with the testbed's interpreter. Prints one JSON line: sent, errors, elapsed, rate, flows, sockets.
"""
from __future__ import annotations

import argparse
import json
import socket
import sys
import time

PORT_LO, PORT_HI = 1024, 65535   # destination ports of the flows; the source port changes after the last
MAX_LAG = 0.05                    # seconds behind the schedule that a paced sender may catch up in a burst
PAYLOAD = b"vnet-flowsetup.."     # 16 bytes


def chunk_for(rate: float) -> int:
    """Datagrams between two looks at the clock: about one per millisecond of schedule, 1..64."""
    return 64 if rate <= 0 else max(1, min(64, int(rate / 1000)))


def run(dst: str, rate: float, seconds: float, start_at: float | None = None, chunk: int | None = None,
        clock=time.time, sleep=time.sleep) -> dict:
    """Send one datagram per new flow to `dst` at `rate` per second (0: unpaced) for `seconds`."""
    chunk = chunk or chunk_for(rate)
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM)]
    sendto = socks[0].sendto
    port, attempts, errors = PORT_LO, 0, 0
    if start_at is not None and start_at > clock():
        sleep(start_at - clock())
    t0 = clock()
    schedule, end = t0, t0 + seconds
    try:
        while True:
            for _ in range(chunk):
                try:
                    sendto(PAYLOAD, (dst, port))
                except OSError:
                    errors += 1
                port += 1
                if port > PORT_HI:
                    socks.append(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
                    sendto, port = socks[-1].sendto, PORT_LO
            attempts += chunk
            t = clock()
            if t >= end:
                break
            if rate > 0:
                due = schedule + attempts / rate
                if due > t:
                    sleep(min(due, end) - t)
                elif t - due > MAX_LAG:
                    schedule += t - due - MAX_LAG
    finally:
        for s in socks:
            s.close()
    elapsed = max(clock() - t0, 1e-9)
    sent = attempts - errors
    return {"sent": sent, "errors": errors, "elapsed": round(elapsed, 4), "rate": round(sent / elapsed, 1),
            "flows": attempts, "sockets": len(socks)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m testbed.flowgen", description=__doc__.splitlines()[0])
    p.add_argument("--dst", required=True, help="IPv4 address the datagrams go to")
    p.add_argument("--rate", type=float, default=0.0, help="new flows per second (0: as fast as possible)")
    p.add_argument("--seconds", type=float, default=1.0)
    p.add_argument("--start-at", type=float, default=None, help="wall-clock time (time.time()) to start at")
    args = p.parse_args(argv)
    try:
        result = run(args.dst, args.rate, args.seconds, args.start_at)
    except OSError as exc:
        print(json.dumps({"error": str(exc)}))
        return 1
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
