"""What a lab's check.py builds on: the real vrouter core wired as the shells wire it, packet
builders, hypothesis settings for property checks, the handle of a running lab testbed, and the
one way to apply a script of testbed commands (a solution's) to it.

Code labs plug the student's function into the real core (a SlowPath whose decide is the
student's, a Gro with the student's merge rule, a BucketTable with the student's apportionment), so
a check reports what the vrouter would do with the student's code, not what a copy of it would.
A check that grades a running testbed gets its handle as ``ctx.testbed`` (testbed/lab.py ``Testbed``);
``listening``, ``reach`` and ``entries_of`` try connections with known keys in its VMs and find the
flow entries they left.
"""
from __future__ import annotations

import copy
import json
import shlex
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, settings

from testbed.cli import load_command_modules
from testbed.commands import COMMANDS
from testbed.lab import Wrong
from vrouter.core.actions import Drop, ToTunnel, ToVif
from vrouter.core.codec import ethernet, ipv4, l4
from vrouter.core.codec.ipv4 import int_to_ip, ip_to_int
from vrouter.core.config import VROUTER_MAC, VrouterConfig
from vrouter.core.pipeline import Pipeline
from vrouter.core.slowpath import SlowPath

__all__ = ["PROPERTY", "Drop", "Pair", "SRV1", "SRV2", "ToTunnel", "ToVif", "VM1", "VM1_MAC", "VM2",
           "VM2_MAC", "Wrong", "apply_script", "entries_of", "fabric", "fault_state", "flow_text", "icmp_frame",
           "listening", "ofctl", "reach", "script_commands", "server_config", "tcp_frame", "udp_frame"]

# Deterministic (a check gives the same verdict twice), no example database left in the student's
# folder, no deadline (a laptop VM is slow), few enough examples for a check in about a second, and
# one failure at a time (the smallest; the student fixes it and checks again).
PROPERTY = settings(max_examples=150, deadline=None, database=None, derandomize=True,
                    suppress_health_check=list(HealthCheck), print_blob=False, report_multiple_bugs=False)

SRV1, SRV2 = "10.0.1.1", "10.0.2.1"
VM1, VM2 = "192.168.1.11", "192.168.1.12"
VM1_MAC, VM2_MAC = "02:00:00:00:01:0b", "02:00:00:00:01:0c"
VIFS = {"srv1": ("tr-red1", VM1, VM1_MAC), "srv2": ("tr-red2", VM2, VM2_MAC)}
PROTO_NAMES = {1: "icmp", 6: "tcp", 17: "udp"}


def server_config(name: str, mode: str = "proactive", encap: str = "mplsoudp",
                  policies: list[dict[str, Any]] | None = None) -> VrouterConfig:
    """srv1 hosts red1 (VM1), srv2 hosts red2 (VM2): network red (id 100), 192.168.1.0/24."""
    me, other = (SRV1, SRV2) if name == "srv1" else (SRV2, SRV1)
    vif, ip, mac = VIFS[name]
    remote = VM2 if name == "srv1" else VM1
    return VrouterConfig.from_dict({
        "server": name, "underlay_ip": me, "encapsulation": encap,
        "networks": [{"name": "red", "id": 100, "subnets": ["192.168.1.0/24"], "gateway": "192.168.1.1"}],
        "vifs": [{"name": vif, "network": "red", "mac": mac, "ip": ip}],
        "routes": [{"network": "red", "prefix": remote + "/32",
                    "nexthop": {"type": "tunnel", "peer": other, "label": 100, "encap": encap}}],
        "peers": [other], "policies": copy.deepcopy(policies or []), "flow": {"mode": mode},
    })


class Pair:
    """Two vrouters back to back (srv1 with red1, srv2 with red2), each with its agent's slow path,
    wired as the shells wire them: a tunnel action crosses the fabric at once, the punts queued
    meanwhile go to the agent, its decision is installed. ``slowpath`` builds each agent's SlowPath
    from its config (the default: the real one), so a check can give it the student's decide."""

    def __init__(self, mode: str = "proactive", encap: str = "mplsoudp",
                 policies: list[dict[str, Any]] | None = None, slowpath: Any = SlowPath):
        self.cfg = {n: server_config(n, mode, encap, policies) for n in ("srv1", "srv2")}
        self.pipe = {n: Pipeline(c) for n, c in self.cfg.items()}
        self.slow = {n: slowpath(c) for n, c in self.cfg.items()}
        self.punts = {"srv1": 0, "srv2": 0}
        self._server = {SRV1: "srv1", SRV2: "srv2"}
        self._address = {"srv1": SRV1, "srv2": SRV2}

    def run(self, srv: str, actions: list[Any], now: float) -> list[Any]:
        """The terminal actions (ToVif / Drop) the given ones lead to, in order."""
        out: list[Any] = []
        for a in actions:
            if isinstance(a, ToTunnel):
                dst = self._server[a.peer]
                out += self.run(dst, self.pipe[dst].from_fabric(self._address[srv], a.encap, a.payload, now), now)
            else:
                out.append(a)
        for request in self.pipe[srv].take_punts(now):
            self.punts[srv] += 1
            decision = self.slow[srv].decide(request, now)
            out += self.run(srv, self.pipe[srv].install(decision, now), now)
        return out

    def send(self, srv: str, frame: bytes, now: float = 0.0) -> list[Any]:
        """A frame sent by the VM of ``srv``; the terminal actions it leads to."""
        return self.run(srv, self.pipe[srv].from_vif(VIFS[srv][0], frame, now), now)

    def flows(self, srv: str) -> list[dict[str, Any]]:
        return self.pipe[srv].flows()


def _eth(src_mac: str) -> bytes:
    return ethernet.build(VROUTER_MAC, ethernet.mac_to_bytes(src_mac), ethernet.ETH_P_IP)


def tcp_frame(src: str, dst: str, sport: int, dport: int, flags: int, src_mac: str = VM1_MAC,
              payload: bytes = b"", seq: int = 0, ack: int = 0) -> bytes:
    seg = l4.build_tcp(ip_to_int(src), ip_to_int(dst), sport, dport, payload, seq=seq, ack=ack, flags=flags)
    return _eth(src_mac) + ipv4.build(ip_to_int(src), ip_to_int(dst), ipv4.IPPROTO_TCP, seg)


def udp_frame(src: str, dst: str, sport: int, dport: int, src_mac: str = VM1_MAC, payload: bytes = b"x") -> bytes:
    seg = l4.build_udp(ip_to_int(src), ip_to_int(dst), sport, dport, payload)
    return _eth(src_mac) + ipv4.build(ip_to_int(src), ip_to_int(dst), ipv4.IPPROTO_UDP, seg)


def icmp_frame(src: str, dst: str, ident: int = 7, type_: int = 8, src_mac: str = VM1_MAC) -> bytes:
    msg = l4.build_icmp(type_, 0, ident, 1, b"ping")
    return _eth(src_mac) + ipv4.build(ip_to_int(src), ip_to_int(dst), ipv4.IPPROTO_ICMP, msg)


def flow_text(key: list[int] | tuple[int, ...]) -> str:
    """[6, src, dst, sport, dport] as 'tcp 192.168.1.11:40000 -> 192.168.1.12:80'."""
    proto, src, dst, sport, dport = key
    return f"{PROTO_NAMES.get(proto, proto)} {int_to_ip(src)}:{sport} -> {int_to_ip(dst)}:{dport}"


def script_commands(path: Path) -> list[tuple[str, list[str]]]:
    """The `testbed ...` lines of a lab's shell script (e.g. a solution's repair.sh), each as (the
    command's name, its arguments): `sudo` and `testbed` dropped, other lines and comments skipped.
    The name is the longest run of leading words that names a command (`fault link`, `capture`), so
    the lab testbed's --prefix can go right after it (``Testbed.testbed``)."""
    load_command_modules()
    out = []
    for line in path.read_text().splitlines():
        words = shlex.split(line, comments=True)
        if words[:1] == ["sudo"]:
            words = words[1:]
        if words[:1] != ["testbed"] or len(words) < 2:
            continue
        n = 2 if " ".join(words[1:3]) in COMMANDS else 1
        out.append((" ".join(words[1:1 + n]), words[1 + n:]))
    return out


def apply_script(tb: Any, path: Path) -> None:
    """Runs the `testbed ...` lines of ``path`` on the lab's testbed in order (what `lab solve` does
    with a solution's script); the first that fails raises Wrong with its error line."""
    for name, args in script_commands(path):
        done = tb.testbed(name, *args)
        print(f"  testbed {name} {shlex.join(args)}: " + (done.stdout.strip().splitlines() or ["ok"])[-1])
        if done.returncode:
            raise Wrong(f"'testbed {name} {shlex.join(args)}' failed (exit {done.returncode}): "
                        f"{(done.stderr.strip().splitlines() or ['no message'])[-1]}", str(path))


# --------------------------------------------------------------------------- a running testbed's state

def fault_state(tb: Any) -> dict[str, Any]:
    """What `testbed fault list --json` shows on the lab's testbed: links, impairments, paused."""
    done = tb.testbed("fault list", "--json")
    if done.returncode:
        raise Wrong(f"'testbed fault list' failed: {done.stderr.strip()}", "sudo testbed status")
    return dict(json.loads(done.stdout))


def fabric(tb: Any) -> dict[str, Any]:
    """The testbed's fabric.json: its switches (bridges, ports), servers (addresses, leaves), links."""
    return dict(json.loads((Path(tb.rundir) / "fabric.json").read_text()))


def ofctl(*argv: str) -> str:
    """`ovs-ofctl -O OpenFlow13 ARGV`'s output (dump-flows, dump-groups, dump-ports of a bridge)."""
    return subprocess.run(["ovs-ofctl", "-O", "OpenFlow13", *argv], capture_output=True, text=True,
                          timeout=20).stdout


# --------------------------------------------------------------------------- a running lab testbed

REACH = (sys.executable, "-m", "testbed.measure.reach")


@contextmanager
def listening(tb: Any, ports: dict[str, tuple[list[int], list[int]]]) -> Iterator[None]:
    """Listeners for the ``with`` block: {VM: ([TCP ports], [UDP ports])} (testbed/measure/reach.py:
    TCP accepted and closed, UDP echoed); each is ready before the block runs and stopped by its PID
    after it."""
    procs = []
    try:
        for host, (tcp, udp) in ports.items():
            procs.append(tb.start(host, *REACH, "listen", "--tcp", ",".join(map(str, sorted(set(tcp)))),
                                  "--udp", ",".join(map(str, sorted(set(udp))))))
        for (host, _), proc in zip(ports.items(), procs, strict=True):
            if proc.stdout is None or proc.stdout.readline().strip() != "ready":
                raise Wrong(f"could not start a listener in {host} (is a port of {ports[host]} taken?)",
                            f"'sudo testbed exec {host} ss -ltnup'")
        yield
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=10)


def reach(tb: Any, host: str, proto: str, dst: str, port: int, sport: int, timeout: float = 1.5) -> bool:
    """Whether a TCP connection / UDP answer / ping from ``host`` to ``dst``:``port`` with source port
    (ICMP: identifier) ``sport`` gets through, so its flow entries are the key (proto, host's address,
    dst, sport, port or sport) in `flow -l`."""
    argv = (*REACH, "try", proto, dst, "--port", str(port), "--sport", str(sport), "--timeout", str(timeout))
    return tb.exec(host, *argv, timeout=timeout + 20).returncode == 0


def entries_of(flows: list[dict[str, Any]], proto: str, src: str, dst: str, sport: int,
               dport: int) -> list[dict[str, Any]]:
    """The entries of `flows` (introspection `flows`) of one flow, either direction."""
    keys = {(proto, src, dst, sport, dport), (proto, dst, src, dport, sport)}
    return [f for f in flows if (f["proto"], f["src"], f["dst"], f["sport"], f["dport"]) in keys]
