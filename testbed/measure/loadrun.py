"""The harness side of the load generators (testbed/measure/load.py): starting them in the testbed's
hosts and reading their JSON lines, an established iperf3 stream with per-interval throughput and its
stalls, and a topology with a `flow:` section to bring a testbed up with. The flow experiments
(experiments/flow_pressure.py, capacity.py) and `testbed bench flowsetup` share it.

Parsing and the stall arithmetic are pure (tests/unit/test_load.py); the rest runs processes.
"""
from __future__ import annotations

import copy
import json
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from testbed import REPO
from testbed.measure.runners import IPERF3_PORT, Host
from testbed.topology import Topology, from_dict

LOAD = [sys.executable, "-m", "testbed.measure.load"]
SERVE_PORT = 8000
STALL_FRACTION = 0.05   # an interval carrying less than this share of the unflooded median is a stall


class LoadError(RuntimeError):
    """A generator did not start or did not finish; one line (its stderr's last line)."""


# --- the generators --------------------------------------------------------------------------------
class LoadProcess:
    """One `python -m testbed.measure.load COMMAND` in a host; a thread reads its JSON lines, so a
    long run never blocks on a full pipe."""

    def __init__(self, host: Host, command: str, options: dict[str, Any], nice: int = 0) -> None:
        self.command = command
        # nice > 0: the generator yields the CPU to the vrouter (a VM's cores are not the vrouter's).
        argv = [*(["nice", "-n", str(nice)] if nice else []), *LOAD, command]
        for key, value in options.items():
            if value is True:
                argv.append(f"--{key.replace('_', '-')}")
            elif value is not None and value is not False:
                argv += [f"--{key.replace('_', '-')}", str(value)]
        self.argv = argv
        self.proc = host.popen(argv, cwd=str(REPO), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.records: list[dict] = []
        self.first = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                self.records.append(json.loads(line))
            except ValueError:
                continue
            self.first.set()
        self.first.set()

    def _failure(self) -> LoadError:
        err = (self.proc.stderr.read() if self.proc.stderr else "").strip().splitlines()
        why = err[-1] if err else f"exited with {self.proc.returncode}"
        return LoadError(f"load {self.command}: {why}")

    def wait_started(self, timeout: float = 10.0) -> dict:
        """The first record (serve: {"ready": port}); LoadError if the process ended without one."""
        if not self.first.wait(timeout) or not self.records:
            self.proc.poll()
            if self.proc.returncode is None:
                self.kill()
                raise LoadError(f"load {self.command}: no output within {timeout:.0f} s")
            raise self._failure()
        return self.records[0]

    def wait(self, timeout: float) -> dict:
        """Wait for the end; the final record (with "done")."""
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise LoadError(f"load {self.command}: still running after {timeout:.0f} s") from None
        self._reader.join(5)
        final = self.final()
        if final is None:
            raise self._failure()
        return final

    def stop(self, timeout: float = 10.0) -> dict:
        """SIGTERM (the generator prints its totals), then `wait`."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()

    def final(self) -> dict | None:
        return next((r for r in reversed(self.records) if r.get("done")), None)


def serve(host: Host, port: int = SERVE_PORT, **options: Any) -> LoadProcess:
    """The accept server and UDP sink, listening when this returns."""
    p = LoadProcess(host, "serve", {"port": port, **options})
    p.wait_started()
    return p


def flood(host: Host, dst: str, rate: float, seconds: float, nice: int = 0, **options: Any) -> LoadProcess:
    return LoadProcess(host, "flood", {"dst": dst, "rate": rate, "seconds": seconds, **options}, nice=nice)


def connect(host: Host, dst: str, rate: float, seconds: float, port: int = SERVE_PORT, timeout: float = 1.0,
            **options: Any) -> LoadProcess:
    return LoadProcess(host, "connect", {"dst": dst, "port": port, "rate": rate, "seconds": seconds,
                                         "timeout": timeout, **options})


@dataclass(frozen=True)
class Connection:
    """One connection of a `connect` run: its start (time.monotonic()), outcome, connect latency."""

    seq: int
    t: float
    outcome: str
    latency_us: int | None

    @property
    def ok(self) -> bool:
        return self.outcome == "ok"


def connections(records: Iterable[dict]) -> list[Connection]:
    return [Connection(*r["c"]) for r in records if "c" in r]


def success(conns: Sequence[Connection]) -> float | None:
    """The share of connections that connected within the timeout (None: there were none)."""
    return sum(c.ok for c in conns) / len(conns) if conns else None


def latencies(conns: Iterable[Connection]) -> list[int]:
    return [c.latency_us for c in conns if c.ok and c.latency_us is not None]


def between(conns: Iterable[Connection], t0: float, t1: float) -> list[Connection]:
    """The connections started in [t0, t1)."""
    return [c for c in conns if t0 <= c.t < t1]


# --- the established stream ------------------------------------------------------------------------
@dataclass(frozen=True)
class Interval:
    """One iperf3 interval on the harness's time line (time.monotonic()): [start, end), bytes."""

    start: float
    end: float
    bytes: int


def intervals_of(report: dict, t0: float) -> tuple[list[Interval], str]:
    """The report's intervals shifted to start at `t0`: the receiver's (the server output that
    --get-server-output brings) when present, else the sender's; and which side they are."""
    server = report.get("server_output_json") or {}
    if server.get("intervals"):
        side, raw = "receiver", server["intervals"]
    else:
        side, raw = "sender", report.get("intervals", [])
    out = [Interval(t0 + i["sum"]["start"], t0 + i["sum"]["end"], int(i["sum"]["bytes"])) for i in raw]
    return out, side


def window_bps(intervals: Sequence[Interval], t0: float, t1: float) -> float | None:
    """Throughput (bits/s) of the intervals that lie inside [t0, t1]."""
    inside = [i for i in intervals if i.start >= t0 - 1e-6 and i.end <= t1 + 1e-6]
    seconds = sum(i.end - i.start for i in inside)
    return 8 * sum(i.bytes for i in inside) / seconds if seconds > 0 else None


def stall_threshold(baseline: Sequence[Interval], fraction: float = STALL_FRACTION) -> float:
    """Bytes below which an interval is a stall: `fraction` of the median unflooded interval
    (at least one byte: an empty interval always is a stall)."""
    if not baseline:
        return 1.0
    per_second = statistics.median(i.bytes / (i.end - i.start) for i in baseline if i.end > i.start)
    return max(1.0, fraction * per_second * statistics.median(i.end - i.start for i in baseline))


def stalls(intervals: Sequence[Interval], threshold: float) -> list[tuple[float, float]]:
    """(start, seconds) of every run of consecutive intervals carrying fewer than `threshold` bytes."""
    out: list[tuple[float, float]] = []
    run: list[Interval] = []
    for i in [*intervals, None]:
        if i is not None and i.bytes < threshold and (not run or abs(i.start - run[-1].end) < 1e-3):
            run.append(i)
            continue
        if run:
            out.append((run[0].start, run[-1].end - run[0].start))
        run = [i] if i is not None and i.bytes < threshold else []
    return out


def longest_stall(intervals: Sequence[Interval], threshold: float) -> float:
    return max((s for _t, s in stalls(intervals, threshold)), default=0.0)


class Stream:
    """An established iperf3 TCP stream client -> server with intervals of `interval` s, started
    now: `result()` gives its intervals on the harness's time line (the client's start, within the
    few ms a process start takes)."""

    def __init__(self, client: Host, server: Host, server_ip: str, seconds: float, interval: float = 0.1,
                 port: int = IPERF3_PORT, bitrate: str | None = None) -> None:
        # -J: --get-server-output then brings the receiver's intervals as JSON
        self.srv = server.popen(["iperf3", "-s", "-1", "-J", "-i", str(interval), "-p", str(port)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._wait_listening(server, port)
        argv = ["iperf3", "-c", server_ip, "-p", str(port), "-J", "-t", str(seconds), "-i", str(interval),
                "--get-server-output"]
        if bitrate:
            argv += ["-b", bitrate]
        self.t0 = time.monotonic()
        self.cli = client.popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.seconds = seconds

    def _wait_listening(self, server: Host, port: int, timeout: float = 10.0) -> None:
        """Until the server's namespace has a socket listening on `port` (a JSON-mode server says
        nothing before it ends)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out, _ = server.popen(["ss", "-Hltn", f"sport = :{port}"], stdout=subprocess.PIPE,
                                  stderr=subprocess.DEVNULL, text=True).communicate(timeout=10)
            if out.strip():
                return
            if self.srv.poll() is not None:
                break
            time.sleep(0.05)
        self.close()
        raise LoadError(f"iperf3 server did not listen on port {port} within {timeout:.0f} s")

    def result(self) -> tuple[list[Interval], dict]:
        """(intervals, {"side", "bits_per_second", "retransmits"}); LoadError without a report."""
        try:
            out, _ = self.cli.communicate(timeout=self.seconds + 30)
        except subprocess.TimeoutExpired:
            self.cli.kill()
            self.cli.wait()
            raise LoadError("iperf3 client did not finish") from None
        finally:
            self.close()
        try:
            report = json.loads(out[out.index("{"):])
        except ValueError:
            raise LoadError(f"iperf3 gave no JSON report: {out.strip()[:200]}") from None
        if "error" in report and not report.get("intervals"):
            raise LoadError(f"iperf3: {report['error']}")
        intervals, side = intervals_of(report, self.t0)
        end = report.get("end", {})
        return intervals, {"side": side, "error": report.get("error"),
                           "bits_per_second": end.get("sum_received", {}).get("bits_per_second"),
                           "retransmits": end.get("sum_sent", {}).get("retransmits")}

    def close(self) -> None:
        if self.srv.poll() is None:
            self.srv.terminate()
        try:
            self.srv.wait(5)
        except subprocess.TimeoutExpired:
            self.srv.kill()
            self.srv.wait()


# --- flow settings through the topology -----------------------------------------------------------
def with_flow(topology: Topology, flow: dict[str, Any]) -> Topology:
    """The topology with `flow` merged into its `flow:` section (testbed.topology.TopologyError if
    the section refuses a key or a value)."""
    doc = copy.deepcopy(topology.raw)
    doc["flow"] = {**(doc.get("flow") or {}), **flow}
    return from_dict(doc, source=f"{topology.source} + flow {flow}", default_name=topology.name)
