"""`testbed capture`: tcpdump on fabric links, writing pcap files that Wireshark opens.

    testbed capture --server srv1 -c 100 -o /tmp/cap       srv1's access link (its leaf port)
    testbed capture --link leaf1-spine2 --seconds 5 -o DIR   one end of a leaf-spine link
    testbed capture -o DIR                                   every server access link

Fabric ports are veths in the root namespace (OVS userspace bridges own the switch side), so we
capture there, on the switch end of the link: the outer (underlay) headers are what is on the wire.
Wireshark decodes MPLSoUDP if told (Decode As... UDP port 6635 -> MPLS); VXLAN and GRE it decodes
by itself.
"""
from __future__ import annotations

import subprocess
import time
from pathlib import Path

from testbed import fabric
from testbed.commands import CommandError, command, run_arguments
from testbed.vr import rundir_path

SNAPLEN = 256  # outer + inner headers; payload bytes are not needed to see labels and ports


def fabric_interfaces(desc: dict, link: str | None = None, server: str | None = None) -> dict[str, str]:
    """{label: root-namespace interface} for a link 'A-B', a server's access link, or all access links."""
    switches = {sw["name"]: sw for sw in desc["switches"]}
    servers = {s["name"]: s for s in desc["servers"]}
    if link:
        ends = link.split("-")
        if len(ends) != 2:
            raise CommandError(f"--link {link!r}: expected NODE-NODE, e.g. leaf1-spine1", code=2)
        a, b = ends
        for x, y in ((a, b), (b, a)):
            sw = switches.get(x)
            if sw is None:
                continue
            for port in sw["ports"].values():
                if port["peer"] == y:
                    return {f"{x}-{y}": port["intf"]}
        links = [f"{edge['a']}-{edge['b']}" for edge in desc["links"]]
        raise CommandError(f"no link {link!r} (links: {', '.join(links)})", code=2)
    chosen = [server] if server else list(servers)
    if server and server not in servers:
        raise CommandError(f"unknown server {server!r} (known: {', '.join(servers)})", code=2)
    out = {}
    for name in chosen:
        srv = servers[name]
        out[f"{name}-{srv['leaf']}"] = switches[srv["leaf"]]["ports"][str(srv["leaf_port"])]["intf"]
    return out


class Capture:
    """Running tcpdumps, one per interface; `stop()` returns the pcap paths."""

    def __init__(self, interfaces: dict[str, str], outdir: str | Path, count: int | None = None,
                 bpf: str | None = None, ready_timeout: float = 5.0):
        self.outdir = Path(outdir)
        self.outdir.mkdir(parents=True, exist_ok=True)
        self.files: dict[str, Path] = {}
        self.procs: list[subprocess.Popen] = []
        try:
            for label, intf in interfaces.items():
                path = self.outdir / f"{label}.pcap"
                # immediate mode: without it libpcap holds packets in a block that SIGTERM discards
                argv = ["tcpdump", "-i", intf, "-n", "-U", "--immediate-mode", "-s", str(SNAPLEN), "-w", str(path)]
                if count:
                    argv += ["-c", str(count)]
                if bpf:
                    argv += bpf.split()
                p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                self.procs.append(p)
                self.files[label] = path
                self._wait_listening(p, intf, ready_timeout)
        except BaseException:
            self.stop()
            raise

    @staticmethod
    def _wait_listening(p: subprocess.Popen, intf: str, timeout: float) -> None:
        # tcpdump says "listening on ..." once the packet socket is bound: only then is nothing missed
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = p.stderr.readline()
            if "listening on" in line:
                return
            if not line and p.poll() is not None:
                raise CommandError(f"tcpdump on {intf} failed (exit {p.returncode})")
        raise CommandError(f"tcpdump on {intf} did not start within {timeout:.0f} s")

    def wait(self, seconds: float | None) -> None:
        deadline = None if seconds is None else time.monotonic() + seconds
        while any(p.poll() is None for p in self.procs):
            if deadline is not None and time.monotonic() >= deadline:
                return
            time.sleep(0.1)

    def stop(self) -> dict[str, Path]:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            if p.stderr:
                p.stderr.close()
        self.procs = []
        return self.files


def _arguments(p):
    where = p.add_mutually_exclusive_group()
    where.add_argument("--link", help="fabric link NODE-NODE, e.g. leaf1-spine1 (captured at the first switch)")
    where.add_argument("--server", help="a server's access link")
    p.add_argument("-c", "--count", type=int, help="stop after N packets per interface")
    p.add_argument("--seconds", type=float, help="stop after this many seconds (default: -c, or Ctrl-C)")
    p.add_argument("-o", "--output", required=True, help="directory for the pcap files")
    p.add_argument("--filter", help="tcpdump filter, e.g. 'udp port 6635'")
    run_arguments(p)


@command("capture", help="tcpdump fabric links into pcap files (Wireshark)", root=True, arguments=_arguments)
def capture_command(args) -> int:
    desc = fabric.read(rundir_path(args.prefix, args.run_root) / "fabric.json")
    interfaces = fabric_interfaces(desc, args.link, args.server)
    cap = Capture(interfaces, args.output, count=args.count, bpf=args.filter)
    print(f"capturing on {', '.join(f'{k} ({v})' for k, v in interfaces.items())}; Ctrl-C to stop", flush=True)
    try:
        cap.wait(args.seconds)  # None: until -c packets were seen on every link, or Ctrl-C
    except KeyboardInterrupt:
        pass
    for label, path in cap.stop().items():
        print(f"{label}: {path}")
    return 0
