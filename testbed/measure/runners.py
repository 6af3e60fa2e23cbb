"""The measuring programs, run inside the testbed's hosts: iperf3 (its JSON report parsed), ping
(loss, RTTs, reachability) and the switches' port counters. Parsing is kept apart from running so
it can be tested without a testbed.
"""
from __future__ import annotations

import json
import re
import statistics
import subprocess
import time
from typing import Any, Protocol

IPERF3_PORT = 5201


class Host(Protocol):
    """What the runners need of a Mininet host: a shell command and a background process."""

    def cmd(self, *args: Any, **kwargs: Any) -> str: ...

    def popen(self, *args: Any, **kwargs: Any) -> subprocess.Popen: ...


def port_stats(bridge: str) -> dict[int, dict[str, int]]:
    """OpenFlow port counters of one bridge: {port: {rx_packets, tx_packets, rx_bytes, tx_bytes}}."""
    r = subprocess.run(["ovs-ofctl", "-O", "OpenFlow13", "--timeout=10", "dump-ports", bridge],
                       capture_output=True, text=True, check=True)
    out: dict[int, dict[str, int]] = {}
    port = None
    for line in r.stdout.splitlines():
        m = re.match(r"\s*port\s+(\S+):\s*rx pkts=(\d+), bytes=(\d+)", line)
        if m:
            port = int(m.group(1)) if m.group(1).isdigit() else None
            if port is not None:
                out[port] = {"rx_packets": int(m.group(2)), "rx_bytes": int(m.group(3))}
            continue
        m = re.match(r"\s*tx pkts=(\d+), bytes=(\d+)", line)
        if m and port is not None:
            out[port].update(tx_packets=int(m.group(1)), tx_bytes=int(m.group(2)))
    return out


# --- iperf3 ---------------------------------------------------------------------------------------
def parse_iperf3(raw: str, udp: bool = False, streams: int = 1) -> dict[str, Any]:
    """The figures of one iperf3 `-J` report (text before the JSON, e.g. a shell's noise, is skipped).

    TCP: bits_per_second (received), sent_bits_per_second, retransmits, seconds, streams;
    UDP: bits_per_second, lost_percent, seconds, streams. Raises RuntimeError on an error report."""
    try:
        report = json.loads(raw[raw.index("{"):])
    except ValueError:
        raise RuntimeError(f"iperf3 gave no JSON report: {raw.strip()[:200]}") from None
    if "error" in report:
        raise RuntimeError(f"iperf3: {report['error']}")
    end = report["end"]
    if udp:
        s = end["sum"]
        return {"bits_per_second": s["bits_per_second"], "lost_percent": s.get("lost_percent"),
                "seconds": s["seconds"], "streams": streams}
    return {"bits_per_second": end["sum_received"]["bits_per_second"],
            "sent_bits_per_second": end["sum_sent"]["bits_per_second"],
            "retransmits": end["sum_sent"].get("retransmits"), "seconds": end["sum_received"]["seconds"],
            "streams": streams}


def iperf3(client: Host, server: Host, server_ip: str, seconds: float = 3, parallel: int = 1, udp: bool = False,
           bitrate: str | None = None, port: int = IPERF3_PORT, extra: str = "") -> dict[str, Any]:
    """Run iperf3 between two Mininet hosts; returns throughput figures from its JSON report."""
    srv = server.popen(["iperf3", "-s", "-1", "-p", str(port)], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
    try:
        cmd = f"iperf3 -c {server_ip} -p {port} -J -t {seconds} -P {parallel} {extra}"
        if udp:
            cmd += f" -u -b {bitrate or '100M'}"
        elif bitrate:
            cmd += f" -b {bitrate}"
        raw = ""
        for _attempt in range(20):  # the server needs a moment to listen
            raw = client.cmd(cmd)
            if '"error"' not in raw or "Connection refused" not in raw:
                break
            time.sleep(0.2)
        return parse_iperf3(raw, udp, parallel)
    finally:
        if srv.poll() is None:
            srv.terminate()
        try:
            srv.wait(5)
        except subprocess.TimeoutExpired:
            srv.kill()
            srv.wait()


# --- ping -----------------------------------------------------------------------------------------
def ping_loss_from_output(text: str) -> tuple[int, int]:
    """(transmitted, received) from ping's summary line."""
    m = re.search(r"(\d+) packets transmitted, (\d+) (?:packets )?received", text)
    if not m:
        raise ValueError(f"no ping summary in: {text.strip()[-200:]}")
    return int(m.group(1)), int(m.group(2))


def ping_rtts_from_output(text: str) -> list[float]:
    """Every reply's RTT in microseconds, in the order ping printed them."""
    return [float(x) * 1000 for x in re.findall(r"time=([\d.]+) ms", text)]


def start_ping(host: Host, ip: str, count: int, interval: float = 0.01, timestamps: bool = False) -> subprocess.Popen:
    """Background ping in a host; collect with finish_ping(). `timestamps`: each reply with its
    receive time (ping -D, wall clock), for finish_ping's "replies"."""
    argv = ["ping", "-n", "-c", str(count), "-i", str(interval), "-W", "1", *(["-D"] if timestamps else []), ip]
    return host.popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def ping_replies_from_output(text: str) -> list[tuple[int, float, float]]:
    """(seq, receive time as time.time(), RTT in ms) of every reply `ping -D` printed."""
    return [(int(seq), float(wall), float(rtt)) for wall, seq, rtt in
            re.findall(r"^\[(\d+\.\d+)\].*?icmp_seq=(\d+) .*?time=([\d.]+) ms", text, re.M)]


def finish_ping(proc: subprocess.Popen, timeout: float = 120) -> dict[str, Any]:
    """Wait for a start_ping() and count: sent, received, lost, loss_percent, replied_seqs, and
    replies (ping_replies_from_output: empty without `timestamps`)."""
    out, _ = proc.communicate(timeout=timeout)
    sent, received = ping_loss_from_output(out)
    seqs = [int(m) for m in re.findall(r"icmp_seq=(\d+)", out)]
    return {"sent": sent, "received": received, "lost": sent - received,
            "loss_percent": 100.0 * (sent - received) / sent if sent else 0.0, "replied_seqs": seqs,
            "replies": ping_replies_from_output(out)}


def ping_median_us(host: Host, dst: str, count: int = 50, interval: float = 0.02) -> float | None:
    """Median RTT in us of `count` pings after one unmeasured ping (which resolves ARP); None if
    none was answered."""
    out = host.cmd(f"ping -n -q -c 1 -W 1 {dst} >/dev/null; ping -n -c {count} -i {interval} -W 1 {dst}")
    rtts = ping_rtts_from_output(out)
    return statistics.median(rtts) if rtts else None


def wait_ping(host: Host, address: str, timeout: float) -> bool:
    """Ping once a second until `address` answers (True) or `timeout` s have passed (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if " 0% packet loss" in host.cmd(f"ping -c 1 -W 1 {address}"):
            return True
    return False
