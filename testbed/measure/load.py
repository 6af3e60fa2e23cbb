"""Load generators for the flow-table experiments: flood, connect, serve (run inside a VM).

They run in a VM's network namespace through the testbed's Mininet host objects
(`host.popen([sys.executable, "-m", "testbed.measure.load", ...])`; testbed/measure/loadrun.py
starts them and reads what they print). Standard library only, so a VM needs nothing but the
checkout.

    flood    one UDP datagram per NEW flow at a paced rate: a raw socket writes the UDP header, so
             every datagram gets the next (source port, destination port) pair without a socket per
             port; the flows stay unreplied (nothing listens), the kind a noisy VM fills a table with.
             A paced run sends exactly rate x seconds datagrams (behind its schedule it catches up,
             BATCH at a time); --rate 0 sends as fast as it can until --seconds have passed (one
             generator's ceiling); --start-at T waits until time.monotonic() reaches T, so that
             several generators start together (`testbed bench flowsetup`)
    connect  new TCP connections at a paced rate, non-blocking connects driven by one selector (one
             process keeps thousands in flight); per connection the connect latency (SYN sent ->
             SYN-ACK seen, the flow's first reply) and the outcome: ok within --timeout (default 1 s),
             timeout, or the errno. Sockets close with SO_LINGER 0 (an RST, no TIME_WAIT), so the
             source ports of a long run do not pile up in TIME_WAIT; each connection binds its own
             source port from a range (a repeated 5-tuple would meet the previous connection's flow
             entry), or with --sports 0 the kernel picks and ip_local_port_range is widened
    serve    a TCP accept server that keeps each connection --hold s (default 1; closing at once
             could reset it before the client has seen its SYN-ACK) and then closes it with
             SO_LINGER 0, plus a UDP sink on the same port (optionally echoing); thousands of
             connections/s

Every command prints JSON lines on stdout: progress records while it runs (flood: {"t", "sent"}),
and a last record with "done": true and its totals; connect prints one {"c": [seq, t_start, outcome,
latency_us]} per connection before it. Times are time.monotonic(), one clock for every namespace
of the machine, so the harness can put the records on its own time line. SIGTERM ends a command
early with its totals printed.

The established-stream and loss probes are not here: iperf3 -J -i 0.1 and `ping -i 0.01`
(testbed/measure/runners.py, loadrun.py).
"""
from __future__ import annotations

import argparse
import ctypes
import errno
import json
import os
import resource
import selectors
import signal
import socket
import struct
import sys
import time
from collections import deque
from collections.abc import Callable

DPORT_BASE = 1024
DPORTS = 64512            # 1024..65535
SPORT_BASE = 20000
SPORTS = 40000            # 20000..59999
BATCH = 256               # most items started in one turn of a loop, so timers and reads still run
REPORT = 0.5              # s between a flood's progress records
LINGER_0 = struct.pack("ii", 1, 0)
SO_ATTACH_FILTER = 26
PORT_RANGE = "/proc/sys/net/ipv4/ip_local_port_range"   # per network namespace


# --- pacing (pure) ---------------------------------------------------------------------------------
def due(elapsed: float, rate: float, started: int, total: int) -> int:
    """How many items to start now: item i is due at i / rate seconds, `started` have been started,
    and no more than `total` ever."""
    if elapsed < 0:
        return 0
    return max(0, min(total, int(elapsed * rate) + 1) - started)


def next_due(started: int, rate: float) -> float:
    """When (seconds after the start) item number `started` is due."""
    return started / rate


def total_items(rate: float, seconds: float) -> int:
    """Items a paced run of `seconds` at `rate` per second starts."""
    return max(0, round(rate * seconds))


def flood_batch(elapsed: float, rate: float, seconds: float, started: int, total: int) -> int | None:
    """Datagrams a flood sends now, `started` sent (or failed) so far; None once the run is over.
    Paced (rate > 0): what is due, at most BATCH, until `total`; unpaced (rate 0): BATCH at a time
    until `seconds` have passed."""
    if rate <= 0:
        return BATCH if elapsed < seconds else None
    if started >= total:
        return None
    return min(BATCH, due(elapsed, rate, started, total))


def flood_ports(i: int, sport_base: int, sports: int, dport_base: int, dports: int,
                fixed_dport: int = 0) -> tuple[int, int]:
    """(source port, destination port) of datagram i: the destination port moves first, the source
    port when the destination ports are used up (with `fixed_dport` only the source port moves), so
    the first dports * sports datagrams are all new flows."""
    if fixed_dport:
        return sport_base + i % sports, fixed_dport
    return sport_base + (i // dports) % sports, dport_base + i % dports


def distinct_flows(sent: int, sports: int, dports: int, fixed_dport: int = 0) -> int:
    return min(sent, sports if fixed_dport else sports * dports)


def connect_port(i: int, sport_base: int, sports: int) -> int:
    """Connection i's source port (0: the kernel's choice)."""
    return sport_base + i % sports if sports else 0


# --- shared shell ------------------------------------------------------------------------------------
class Stop:
    """Set by SIGTERM/SIGINT: the command finishes and prints its totals."""

    def __init__(self) -> None:
        self.requested = False
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._set)

    def _set(self, *_args: object) -> None:
        self.requested = True


def emit(record: dict) -> None:
    sys.stdout.write(json.dumps(record, separators=(",", ":")) + "\n")


def raise_fd_limit() -> int:
    """As many descriptors as the hard limit allows (thousands of connections in flight)."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def iface_tx_dropped() -> int:
    """Packets this namespace's interfaces dropped on transmit (/proc/net/dev is per namespace):
    what a flood lost before the vrouter even saw it."""
    total = 0
    with open("/proc/net/dev") as f:
        for line in f.readlines()[2:]:
            name, _, fields = line.partition(":")
            if name.strip() != "lo":
                total += int(fields.split()[11])
    return total


def _drop_all_input(sock: socket.socket) -> None:
    """A raw UDP socket gets a copy of every UDP packet the namespace receives: a one-instruction
    BPF program ("return 0") throws them away in the kernel."""
    insn = ctypes.create_string_buffer(struct.pack("HBBI", 0x06, 0, 0, 0))
    prog = struct.pack("HL", 1, ctypes.addressof(insn))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, prog)


# --- flood ---------------------------------------------------------------------------------------
def flood(args: argparse.Namespace, stop: Stop) -> dict:
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP)
    _drop_all_input(sock)
    sock.setblocking(False)
    payload = b"f" * args.size
    length = 8 + len(payload)
    total = total_items(args.rate, args.seconds)
    sent = errors = 0
    dropped0 = iface_tx_dropped()
    if args.start_at is not None:
        time.sleep(max(0.0, args.start_at - time.monotonic()))
    t0 = time.monotonic()
    last_report = t0
    emit({"t": t0, "sent": 0, "started": True})
    while not stop.requested:
        now = time.monotonic()
        n = flood_batch(now - t0, args.rate, args.seconds, sent + errors, total)
        if n is None:
            break
        for _ in range(n):
            sport, dport = flood_ports(sent + errors, args.sport_base, args.sports, args.dport_base, args.dports,
                                       args.fixed_dport)
            try:
                sock.sendto(struct.pack("!HHHH", sport, dport, length, 0) + payload, (args.dst, 0))
                sent += 1
            except (BlockingIOError, OSError):
                errors += 1
        if now - last_report >= REPORT:
            emit({"t": now, "sent": sent, "errors": errors})
            sys.stdout.flush()
            last_report = now
        if n == 0:
            time.sleep(max(0.0, min(REPORT, t0 + next_due(sent + errors, args.rate) - time.monotonic())))
    t1 = time.monotonic()
    return {"done": True, "command": "flood", "dst": args.dst, "t0": t0, "t1": t1, "offered_rate": args.rate,
            "sent": sent, "errors": errors, "rate": sent / (t1 - t0) if t1 > t0 else 0.0,
            "flows": distinct_flows(sent, args.sports, args.dports, args.fixed_dport),
            "tx_dropped": iface_tx_dropped() - dropped0}


# --- connect -------------------------------------------------------------------------------------
class Connector:
    """Paced non-blocking connects and their outcomes; `run` drives them with one selector."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.sel = selectors.DefaultSelector()
        self.inflight: deque[tuple[int, socket.socket, float]] = deque()  # in start order = expiry order
        self.live: dict[int, socket.socket] = {}
        self.records: list[list] = []
        self.lag_max = 0.0

    def open(self, seq: int, scheduled: float) -> None:
        a = self.args
        self.lag_max = max(self.lag_max, time.monotonic() - scheduled)
        try:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        except OSError as exc:
            self.records.append([seq, time.monotonic(), "local:" + errno.errorcode.get(exc.errno, "?"), None])
            return
        s.setblocking(False)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_0)
        t = time.monotonic()
        try:
            sport = connect_port(seq, a.sport_base, a.sports)
            if sport:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind(("0.0.0.0", sport))
            t = time.monotonic()
            err = s.connect_ex((a.dst, a.port))
        except OSError as exc:
            err = exc.errno or errno.EIO
        if err == 0:
            self.records.append([seq, t, "ok", round((time.monotonic() - t) * 1e6)])
            s.close()
        elif err in (errno.EINPROGRESS, errno.EAGAIN):
            self.sel.register(s, selectors.EVENT_WRITE, (seq, t))
            self.inflight.append((seq, s, t))
            self.live[seq] = s
        else:
            self.records.append([seq, t, "local:" + errno.errorcode.get(err, str(err)), None])
            s.close()

    def completed(self, s: socket.socket, seq: int, t: float, now: float) -> None:
        err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        latency = now - t
        if err:
            outcome = errno.errorcode.get(err, str(err))
        else:
            outcome = "ok" if latency <= self.args.timeout else "timeout"
        self.records.append([seq, t, outcome, round(latency * 1e6) if not err else None])
        self._close(seq, s)

    def _close(self, seq: int, s: socket.socket) -> None:
        self.sel.unregister(s)
        del self.live[seq]
        s.close()

    def expire(self, now: float, everything: bool = False) -> float | None:
        """Time out the connections past their deadline (all of them with `everything`); the next
        deadline, or None."""
        while self.inflight:
            seq, s, t = self.inflight[0]
            if seq not in self.live:
                self.inflight.popleft()
                continue
            if not everything and t + self.args.timeout > now:
                return t + self.args.timeout
            self.inflight.popleft()
            self.records.append([seq, t, "timeout" if not everything else "aborted", None])
            self._close(seq, s)
        return None

    def run(self, stop: Stop) -> dict:
        a = self.args
        total = total_items(a.rate, a.seconds)
        t0 = time.monotonic()
        started = 0
        while (started < total or self.live) and not (stop.requested and started < total):
            now = time.monotonic()
            for _ in range(min(BATCH, due(now - t0, a.rate, started, total))):
                self.open(started, t0 + next_due(started, a.rate))
                started += 1
            wake = [t0 + next_due(started, a.rate)] if started < total else []
            deadline = self.expire(time.monotonic())
            if deadline is not None:
                wake.append(deadline)
            timeout = max(0.0, min(wake) - time.monotonic()) if wake else 0.05
            for key, _ev in self.sel.select(min(timeout, 0.05)):
                seq, t = key.data
                self.completed(key.fileobj, seq, t, time.monotonic())  # type: ignore[arg-type]
        self.expire(time.monotonic(), everything=True)
        t1 = time.monotonic()
        return {"done": True, "command": "connect", "dst": a.dst, "port": a.port, "t0": t0, "t1": t1,
                "offered_rate": a.rate, "seconds": a.seconds, "timeout": a.timeout, "offered": started,
                "outcomes": outcome_counts(self.records), "lag_max_ms": round(self.lag_max * 1000, 2)}


def outcome_counts(records: list[list]) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in records:
        out[r[2]] = out.get(r[2], 0) + 1
    return out


def widen_port_range() -> None:
    try:
        with open(PORT_RANGE, "w") as f:
            f.write("1024 65535\n")
    except OSError:
        pass  # not root: the kernel's range it is


def connect(args: argparse.Namespace, stop: Stop) -> dict:
    raise_fd_limit()
    if not args.sports:
        widen_port_range()
    c = Connector(args)
    result = c.run(stop)
    for r in sorted(c.records):
        emit({"c": r})
    return result


# --- serve ---------------------------------------------------------------------------------------
def serve(args: argparse.Namespace, stop: Stop) -> dict:
    raise_fd_limit()
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind((args.bind, args.port))
    lsock.listen(args.backlog)
    lsock.setblocking(False)
    usock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    usock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 21)
    usock.bind((args.bind, args.port))
    usock.setblocking(False)
    sel = selectors.DefaultSelector()
    counts = {"accepted": 0, "udp_received": 0, "udp_bytes": 0}
    held: deque[tuple[float, socket.socket]] = deque()
    sel.register(lsock, selectors.EVENT_READ, lambda: _accept_all(lsock, counts, held))
    sel.register(usock, selectors.EVENT_READ, lambda: _receive_all(usock, counts, args.echo))
    emit({"ready": args.port, "t": time.monotonic()})
    sys.stdout.flush()
    t0 = time.monotonic()
    while not stop.requested:
        for key, _ev in sel.select(0.1):
            key.data()
        now = time.monotonic()
        while held and held[0][0] + args.hold <= now:
            held.popleft()[1].close()
    return {"done": True, "command": "serve", "port": args.port, "t0": t0, "t1": time.monotonic(), **counts}


def _accept_all(lsock: socket.socket, counts: dict, held: deque) -> None:
    for _ in range(BATCH):
        try:
            conn, _peer = lsock.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError:  # e.g. the peer reset before accept, or out of descriptors for a moment
            return
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_0)
        held.append((time.monotonic(), conn))
        counts["accepted"] += 1


def _receive_all(usock: socket.socket, counts: dict, echo: bool) -> None:
    for _ in range(BATCH):
        try:
            data, peer = usock.recvfrom(2048)
        except (BlockingIOError, InterruptedError):
            return
        counts["udp_received"] += 1
        counts["udp_bytes"] += len(data)
        if echo:
            try:
                usock.sendto(data, peer)
            except OSError:
                pass


# --- command line --------------------------------------------------------------------------------
def _positive(kind: Callable[[str], float]) -> Callable[[str], float]:
    def check(text: str) -> float:
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0: {text}")
        return value
    return check


def _at_least_zero(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0: {text}")
    return value


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m testbed.measure.load", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    f = sub.add_parser("flood", help="one UDP datagram per new flow, paced (raw socket: needs root)")
    f.add_argument("--dst", required=True)
    f.add_argument("--rate", type=_at_least_zero, required=True,
                   help="new flows per second; 0 = as fast as it can for --seconds")
    f.add_argument("--seconds", type=_positive(float), required=True)
    f.add_argument("--start-at", type=float, default=None,
                   help="time.monotonic() to start at (one clock for every namespace of the machine)")
    f.add_argument("--dport-base", type=int, default=DPORT_BASE)
    f.add_argument("--dports", type=int, default=DPORTS, help=f"destination ports to cycle (default {DPORTS})")
    f.add_argument("--sport-base", type=int, default=SPORT_BASE)
    f.add_argument("--sports", type=int, default=SPORTS, help=f"source ports to cycle (default {SPORTS})")
    f.add_argument("--fixed-dport", type=int, default=0, help="keep this destination port, vary the source port")
    f.add_argument("--size", type=int, default=18, help="UDP payload bytes (default 18)")
    c = sub.add_parser("connect", help="new TCP connections, paced, each timed to its SYN-ACK")
    c.add_argument("--dst", required=True)
    c.add_argument("--port", type=int, required=True)
    c.add_argument("--rate", type=_positive(float), required=True, help="new connections per second")
    c.add_argument("--seconds", type=_positive(float), required=True)
    c.add_argument("--timeout", type=_positive(float), default=1.0, help="connected within this many s = ok (1)")
    c.add_argument("--sport-base", type=int, default=SPORT_BASE)
    c.add_argument("--sports", type=int, default=SPORTS, help="source ports to cycle; 0 = the kernel's choice")
    s = sub.add_parser("serve", help="TCP accept server (closes after --hold) and UDP sink on one port")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--bind", default="0.0.0.0")
    s.add_argument("--backlog", type=int, default=4096)
    s.add_argument("--hold", type=float, default=1.0, help="s an accepted connection stays open (default 1)")
    s.add_argument("--echo", action="store_true", help="answer every UDP datagram")
    return ap


def _check(args: argparse.Namespace) -> str | None:
    for name in ("sport_base", "dport_base", "port", "fixed_dport"):
        if not 0 <= getattr(args, name, 0) <= 65535:
            return f"--{name.replace('_', '-')} must be a port 0..65535"
    for base, count in (("sport_base", "sports"), ("dport_base", "dports")):
        if hasattr(args, count) and getattr(args, base) + getattr(args, count) - 1 > 65535:
            return f"--{base.replace('_', '-')} + --{count} passes port 65535"
    if args.command == "flood" and (args.sports < 1 or args.dports < 1):
        return "--sports and --dports must be >= 1"
    return None


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    problem = _check(args)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    stop = Stop()
    try:
        result = {"flood": flood, "connect": connect, "serve": serve}[args.command](args, stop)
    except PermissionError as exc:
        print(f"error: {args.command}: {exc} (a raw socket needs root)", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"error: {args.command}: {exc}", file=sys.stderr)
        return 1
    emit(result)
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    os._exit(code)  # thousands of sockets and a selector: let the kernel close them at once
