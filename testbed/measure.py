"""Measurement helpers on a running testbed: switch port counters, iperf3, ping loss."""
from __future__ import annotations

import json
import re
import subprocess
import time


def port_stats(bridge: str) -> dict[int, dict[str, int]]:
    """OpenFlow port counters of one bridge: {port: {rx_packets, tx_packets, rx_bytes, tx_bytes}}."""
    r = subprocess.run(["ovs-ofctl", "-O", "OpenFlow13", "--timeout=10", "dump-ports", bridge],
                       capture_output=True, text=True, check=True)
    out, port = {}, None
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


def iperf3(client, server, server_ip: str, seconds: float = 3, parallel: int = 1, udp: bool = False,
           bitrate: str | None = None, port: int = 5201, extra: str = "") -> dict:
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
                    "seconds": s["seconds"], "streams": parallel}
        return {"bits_per_second": end["sum_received"]["bits_per_second"],
                "sent_bits_per_second": end["sum_sent"]["bits_per_second"],
                "retransmits": end["sum_sent"].get("retransmits"), "seconds": end["sum_received"]["seconds"],
                "streams": parallel}
    finally:
        if srv.poll() is None:
            srv.terminate()
        try:
            srv.wait(5)
        except subprocess.TimeoutExpired:
            srv.kill()
            srv.wait()


def ping_loss_from_output(text: str) -> tuple[int, int]:
    m = re.search(r"(\d+) packets transmitted, (\d+) (?:packets )?received", text)
    if not m:
        raise ValueError(f"no ping summary in: {text.strip()[-200:]}")
    return int(m.group(1)), int(m.group(2))


def start_ping(host, ip: str, count: int, interval: float = 0.01):
    """Background ping in a host; collect with finish_ping()."""
    return host.popen(["ping", "-n", "-c", str(count), "-i", str(interval), "-W", "1", ip],
                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish_ping(proc) -> dict:
    out, _ = proc.communicate(timeout=120)
    sent, received = ping_loss_from_output(out)
    seqs = [int(m) for m in re.findall(r"icmp_seq=(\d+)", out)]
    return {"sent": sent, "received": received, "lost": sent - received,
            "loss_percent": 100.0 * (sent - received) / sent if sent else 0.0, "replied_seqs": seqs}
