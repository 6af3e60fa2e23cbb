"""One connection attempt with a 5-tuple chosen in advance, and the listeners that answer it (run
inside a VM).

A lab that grades which connections a policy lets through (labs/04-policies) must find the flow
entries each attempt left in the vrouters, to say which vrouter dropped it and why; so the attempt
picks its own source port (TCP, UDP) or ICMP identifier instead of the kernel's. Standard library
only (and ping), like load.py, so a VM needs nothing but the checkout.

    listen [--tcp 22,8080] [--udp 53]        accept and close every TCP connection, echo every UDP
                                             datagram; prints "ready" once every socket is bound,
                                             runs until SIGTERM
    try tcp|udp|icmp DST [--port N] --sport N [--timeout S]
                                             exit 0: connected (tcp), answered (udp, icmp); 1: not.
                                             One JSON line: {"ok": bool, "error": str|null}
"""
from __future__ import annotations

import argparse
import json
import selectors
import signal
import socket
import subprocess
import sys
import time

PROTOS = ("tcp", "udp", "icmp")
RESEND = 0.5             # s between the datagrams of a UDP attempt


def ports(text: str) -> list[int]:
    """'22,8080' -> [22, 8080]; '' -> []."""
    return [int(p) for p in text.split(",") if p.strip()]


def attempt(proto: str, dst: str, port: int, sport: int, timeout: float) -> str | None:
    """None if the destination answered, else why not (one line)."""
    if proto == "icmp":
        # -w: echo requests once a second until one is answered or the deadline passes
        r = subprocess.run(["ping", "-n", "-q", "-c1", f"-w{max(1, round(timeout))}", "-e", str(sport), dst],
                           capture_output=True, text=True)
        return None if r.returncode == 0 else "no echo reply"
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, kind) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.settimeout(timeout)
        s.bind(("", sport))
        try:
            if proto == "tcp":
                s.connect((dst, port))
            else:
                return _ask(s, dst, port, timeout)
        except TimeoutError:
            return "timed out"
        except OSError as exc:
            return exc.strerror or str(exc)
    return None


def _ask(s: socket.socket, dst: str, port: int, timeout: float) -> str | None:
    """A datagram every RESEND s until one is answered (the first can wait behind the slow path)."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        s.sendto(b"reach", (dst, port))
        s.settimeout(min(RESEND, left))
        try:
            s.recvfrom(64)
            return None
        except TimeoutError:
            continue
    return "no answer"


def listen(tcp: list[int], udp: list[int]) -> None:
    sel = selectors.DefaultSelector()
    for port in tcp:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)   # a student's listener may hold it too
        s.bind(("", port))
        s.listen(64)
        sel.register(s, selectors.EVENT_READ, "tcp")
    for port in udp:
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        u.bind(("", port))
        sel.register(u, selectors.EVENT_READ, "udp")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print("ready", flush=True)
    while True:
        for key, _ in sel.select():
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            if key.data == "tcp":
                sock.accept()[0].close()
            else:
                data, peer = sock.recvfrom(2048)
                sock.sendto(data, peer)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m testbed.measure.reach", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    ls = sub.add_parser("listen")
    ls.add_argument("--tcp", type=ports, default=[])
    ls.add_argument("--udp", type=ports, default=[])
    t = sub.add_parser("try")
    t.add_argument("proto", choices=PROTOS)
    t.add_argument("dst")
    t.add_argument("--port", type=int, default=0)
    t.add_argument("--sport", type=int, required=True, help="source port (ICMP: the echo identifier)")
    t.add_argument("--timeout", type=float, default=1.5)
    args = p.parse_args(argv)
    if args.command == "listen":
        listen(args.tcp, args.udp)
        return 0
    error = attempt(args.proto, args.dst, args.port, args.sport, args.timeout)
    print(json.dumps({"ok": error is None, "error": error}))
    return 0 if error is None else 1


if __name__ == "__main__":
    sys.exit(main())
