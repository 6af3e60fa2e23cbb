"""Where a testbed's packets were lost: the drop counters of every layer they cross, snapshotted
before and after a measurement, so that a loss is attributed instead of guessed.

A packet between two VMs crosses the sender's VM interface (its queue toward the vrouter), the
vrouter (its drop reasons), the server's IP stack and UDP sockets, the fabric (OVS's ports and its
upcalls, which cost the userspace datapath's one thread its time), the other server and the other
VM's IP stack. Each has a counter of its own, and one conservation figure covers the part with none
that we can read (packets that OVS's AF_PACKET sockets drop when ovs-vswitchd falls behind happen
after the veth counted them and before OVS did anything with them): the fabric routes /32s and
floods nothing, so every packet a bridge received on a port it sent out of one, and
`fabric_lost` = sum over the bridges' ports of (rx packets - tx packets). (The servers' IP counters
cannot say it: a GSO send is one IpOutRequests and many IpInReceives. ARP requests the controller
answers are received and not sent: a few; packets in flight at a snapshot blur it by as many.)

    before = drops.snapshot(tb, hosts=["srv1", "srv3", "red5", "red3"], servers=["srv1", "srv3"])
    ...measure...
    lost = drops.delta(before, drops.snapshot(tb, ...))   # {"srv1/vrouter/flow_table_full": 12, ...}

The parsers are pure and unit-tested (tests/unit/test_drops.py); snapshot() does the reading.
"""
from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterable
from typing import Any

from vrouter.io import introspect

# /proc/net/snmp counters that count a drop (or, for the conservation figure, a packet).
SNMP_DROPS = {"Ip": ("InDiscards", "OutDiscards", "InHdrErrors", "InAddrErrors", "OutNoRoutes"),
              "Udp": ("InErrors", "RcvbufErrors", "SndbufErrors", "NoPorts"),
              "Icmp": ("InErrors",)}
SNMP_TOTALS = {"Ip": ("InReceives", "OutRequests")}
# Counters that count packets rather than losses; delta() keeps them apart from the drops.
TOTAL_KEYS = frozenset(f"ip/{k}" for k in SNMP_TOTALS["Ip"])


def parse_snmp(text: str) -> dict[str, int]:
    """/proc/net/snmp (pairs of header and value lines) -> {"udp/RcvbufErrors": n, ...}, only the
    counters of SNMP_DROPS and SNMP_TOTALS."""
    wanted = {proto: set(SNMP_DROPS.get(proto, ())) | set(SNMP_TOTALS.get(proto, ()))
              for proto in set(SNMP_DROPS) | set(SNMP_TOTALS)}
    out: dict[str, int] = {}
    lines = text.splitlines()
    for head, values in zip(lines, lines[1:], strict=False):
        hp, vp = head.split(), values.split()
        if not hp or len(hp) != len(vp) or hp[0] != vp[0] or not hp[0].endswith(":"):
            continue
        proto = hp[0][:-1]
        if proto not in wanted or any(not v.lstrip("-").isdigit() for v in vp[1:]):
            continue
        for name, value in zip(hp[1:], vp[1:], strict=True):
            if name in wanted[proto]:
                out[f"{proto.lower()}/{name}"] = int(value)
    return out


def parse_links(text: str) -> dict[str, int]:
    """`ip -s -j link` -> {"<ifname>/rx_dropped": n, "<ifname>/tx_dropped": n, ...} (errors too)."""
    try:
        links = json.loads(text)
    except ValueError:
        return {}
    out: dict[str, int] = {}
    for link in links if isinstance(links, list) else []:
        stats = link.get("stats64") or link.get("stats") or {}
        for way in ("rx", "tx"):
            for what in ("dropped", "errors"):
                value = (stats.get(way) or {}).get(what)
                if isinstance(value, int):
                    out[f"{link.get('ifname')}/{way}_{what}"] = value
    return out


def parse_ofctl_ports(text: str) -> dict[str, int]:
    """`ovs-ofctl dump-ports` -> {"<port>/rx_pkts": n, "<port>/rx_drop": n, "<port>/tx_errs": n, ...}."""
    out: dict[str, int] = {}
    port = None
    for line in text.splitlines():
        m = re.match(r"\s*port\s+(\S+?):\s*rx\b(.*)", line)
        if m:
            port, way, rest = m.group(1).strip('"'), "rx", m.group(2)
        else:
            m = re.match(r"\s*tx\b(.*)", line)
            if not m or port is None:
                continue
            way, rest = "tx", m.group(1)
        for name in ("pkts", "drop", "errs"):
            v = re.search(rf"\b{name}=(\d+)", rest)
            if v:
                out[f"{port}/{way}_{name}"] = int(v.group(1))
    return out


def parse_packet_sockets(text: str, prefix: str) -> dict[str, int]:
    """`ss -0 -a -m` -> {"<ifname>/socket_drops": n} for the packet sockets bound to interfaces whose
    names start with `prefix` (ovs-vswitchd's userspace datapath reads each port through one; what
    it drops when ovs-vswitchd falls behind is counted only there, skmem's d)."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        m = re.search(r"\s\*:(\S+)\s.*skmem:\([^)]*\bd(\d+)\)", line)
        if m and m.group(1).startswith(prefix):
            out[f"{m.group(1)}/socket_drops"] = out.get(f"{m.group(1)}/socket_drops", 0) + int(m.group(2))
    return out


def parse_pmd_stats(text: str) -> dict[str, int]:
    """`ovs-appctl dpif-netdev/pmd-stats-show` -> upcalls and failures summed over its threads."""
    out = {"upcalls": 0, "failed_upcalls": 0}
    for line in text.splitlines():
        m = re.match(r"\s*miss with (success|failed) upcall:\s*(\d+)", line)
        if m:
            out["upcalls" if m.group(1) == "success" else "failed_upcalls"] += int(m.group(2))
    return out


def flatten_dropstats(reply: dict[str, Any]) -> dict[str, int]:
    """The vrouter's introspection "dropstats" reply -> {reason: count} (non-negative ints only)."""
    drops = reply.get("drops", reply)
    return {str(k): int(v) for k, v in (drops.items() if isinstance(drops, dict) else ())
            if isinstance(v, int) and not isinstance(v, bool)}


def delta(before: dict[str, int], after: dict[str, int]) -> dict[str, Any]:
    """What grew between two snapshots: {"drops": {key: n > 0}, "fabric_lost": n, "fabric_sent": n
    (packets the bridges received), "upcalls": n, "total_dropped": n}."""
    grown = {k: after[k] - before.get(k, 0) for k in after if after[k] - before.get(k, 0) > 0}
    drops = {k: n for k, n in sorted(grown.items()) if not _counts_packets(k)}
    rx = sum(n for k, n in grown.items() if k.startswith("ovs:") and k.endswith("/rx_pkts"))
    tx = sum(n for k, n in grown.items() if k.startswith("ovs:") and k.endswith("/tx_pkts"))
    return {"drops": drops, "fabric_sent": rx, "fabric_lost": max(0, rx - tx), "upcalls": grown.get("ovs/upcalls", 0),
            "total_dropped": sum(drops.values()) + max(0, rx - tx)}


def _counts_packets(key: str) -> bool:
    """Totals, not losses: the IP totals, the bridges' packet counts, OVS's upcalls."""
    return (any(key.endswith("/" + t) for t in TOTAL_KEYS) or key.endswith("_pkts")
            or key == "ovs/upcalls")


def snapshot(tb: Any, hosts: Iterable[str], servers: Iterable[str]) -> dict[str, int]:
    """One flat reading: "server:srv1/udp/RcvbufErrors", "host:red5/dg-t5/tx_dropped",
    "vrouter:srv1/flow_table_full", "ovs:<bridge>/<port>/rx_pkts", "ovs:<ifname>/socket_drops",
    "ovs/upcalls" (upcalls are the
    one ovs-vswitchd's: every testbed on the machine). `servers` are the vrouters to ask."""
    servers = list(servers)
    out: dict[str, int] = {}
    for name in dict.fromkeys([*servers, *hosts]):
        kind = "server" if name in servers else "host"
        host = tb.host(name)
        for k, v in parse_snmp(host.cmd("cat /proc/net/snmp")).items():
            out[f"{kind}:{name}/{k}"] = v
        for k, v in parse_links(host.cmd("ip -s -j link")).items():
            out[f"{kind}:{name}/{k}"] = v
    for server in servers:
        try:
            reply = introspect.query(tb.path, server, "dropstats")
        except introspect.IntrospectError:
            continue
        for k, v in flatten_dropstats(reply).items():
            out[f"vrouter:{server}/{k}"] = v
    for bridge in _bridges(tb):
        r = subprocess.run(["ovs-ofctl", "-O", "OpenFlow13", "--timeout=10", "dump-ports", bridge],
                           capture_output=True, text=True)
        for k, v in parse_ofctl_ports(r.stdout).items():
            out[f"ovs:{bridge}/{k}"] = v
    r = subprocess.run(["ss", "-0", "-a", "-m"], capture_output=True, text=True)
    for k, v in parse_packet_sockets(r.stdout, f"{tb.prefix}-").items():
        out[f"ovs:{k}"] = v
    r = subprocess.run(["ovs-appctl", "dpif-netdev/pmd-stats-show"], capture_output=True, text=True)
    for k, v in parse_pmd_stats(r.stdout).items():
        out[f"ovs/{k}"] = v
    return out


def _bridges(tb: Any) -> list[str]:
    return [sw["bridge"] for sw in tb.desc["switches"] if sw.get("bridge")]


def summary_line(d: dict[str, Any], top: int = 6) -> str:
    """"fabric 3 lost of 2,747; vrouter:srv1/flow_table_full 12, ..." (the largest first)."""
    parts = [f"fabric {d['fabric_lost']} lost of {d['fabric_sent']:,}, {d['upcalls']:,} upcalls"]
    parts += [f"{k} {n:,}" for k, n in sorted(d["drops"].items(), key=lambda kv: -kv[1])[:top]]
    return "; ".join(parts)
