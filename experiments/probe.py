"""Traffic probe that runs inside a VM's network namespace.

`server` answers TCP connections and UDP requests; `client` performs one exchange per command read
from stdin and prints one result line, so the experiment harness can read the vrouters' counters
between exchanges without a process start per connection.

    python -m experiments.probe server --port 7000
    python -m experiments.probe client          # stdin: "tcp 192.168.1.12 7000 [SPORT]" / "udp ..." / "quit"
    stdout: "ok <tcp|udp> <sport> <first_reply_us>" or "err <tcp|udp> <reason>"
"""
import argparse
import socket
import sys
import threading
import time

REPLY = b"pong"


def _serve_tcp(port: int) -> None:
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind(("0.0.0.0", port))
    lsock.listen(512)
    while True:
        conn, _ = lsock.accept()
        with conn:
            conn.settimeout(5)
            try:
                if conn.recv(64):
                    conn.sendall(REPLY)
            except OSError:
                pass


def _serve_udp(port: int) -> None:
    usock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    usock.bind(("0.0.0.0", port))
    while True:
        data, peer = usock.recvfrom(2048)
        usock.sendto(REPLY, peer)


def serve(port: int) -> None:
    threading.Thread(target=_serve_udp, args=(port,), daemon=True).start()
    print(f"ready {port}", flush=True)
    _serve_tcp(port)


def tcp_exchange(dst: str, port: int, timeout: float, sport: int = 0) -> tuple[int, int]:
    """Returns (source port, connect time in us): the SYN-ACK is the flow's first reply."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        if sport:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("0.0.0.0", sport))
        t0 = time.perf_counter_ns()
        sock.connect((dst, port))
        t1 = time.perf_counter_ns()
        sport = sock.getsockname()[1]
        sock.sendall(b"ping")
        sock.recv(64)
        return sport, (t1 - t0) // 1000
    finally:
        sock.close()


def udp_exchange(dst: str, port: int, timeout: float, sport: int = 0) -> tuple[int, int]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(timeout)
    try:
        sock.bind(("0.0.0.0", sport))
        sport = sock.getsockname()[1]
        t0 = time.perf_counter_ns()
        sock.sendto(b"ping", (dst, port))
        sock.recvfrom(2048)
        t1 = time.perf_counter_ns()
        return sport, (t1 - t0) // 1000
    finally:
        sock.close()


def client(timeout: float) -> None:
    exchanges = {"tcp": tcp_exchange, "udp": udp_exchange}
    for line in sys.stdin:
        parts = line.split()
        if not parts or parts[0] == "quit":
            break
        proto, dst, port = parts[0], parts[1], int(parts[2])
        want = int(parts[3]) if len(parts) > 3 else 0
        try:
            sport, us = exchanges[proto](dst, port, timeout, want)
            print(f"ok {proto} {sport} {us}", flush=True)
        except (OSError, KeyError) as exc:
            print(f"err {proto} {type(exc).__name__}:{exc}".replace("\n", " "), flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m experiments.probe")
    sub = ap.add_subparsers(dest="mode", required=True)
    s = sub.add_parser("server")
    s.add_argument("--port", type=int, default=7000)
    c = sub.add_parser("client")
    c.add_argument("--timeout", type=float, default=3.0)
    args = ap.parse_args(argv)
    if args.mode == "server":
        serve(args.port)
    else:
        client(args.timeout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
