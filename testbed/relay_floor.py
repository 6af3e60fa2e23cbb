"""The floor of a Python overlay on this fabric: the bench's pings through a bare Python relay.

The hop floor (testbed/hop_floor.py) prices one idle Python hop on loopback; a round trip through
our overlay pays more than four of those: TAP reads and writes that run the VMs' stacks, UDP sends
through OVS, and the wake-ups of processes on a 2-vCPU VM that also runs the switch. This measures
all of it but the vrouter's own work: on the bench's two servers, a relay process per server owns
a TAP in the VM's namespace and a UDP socket on the server's underlay address, and does nothing but
move frames (one read per readiness, the answer read straight after a TAP write as our forwarder
does, no parsing, no table). The VMs ping each other over it with static neighbours, so no ARP.

    relay overhead = median RTT(VM -> VM through the relays) - median RTT(underlay)

is what no Python overlay of this shape goes below here, measured in the same run as ours. The
relays run SCHED_FIFO at the forwarders' default real-time priority, as an idle forwarder loop
does (vrouter/core/priority.py), so both sides of the comparison wake alike.
`python -m testbed.relay_floor TAP PEER_IP LOCAL_IP PORT [RT_PRIORITY]` is the relay (run in a
server's namespace; RT_PRIORITY 0: the normal scheduler).
"""
from __future__ import annotations

import os
import select
import socket
import subprocess
import sys

from testbed import REPO
from testbed.measure.runners import ping_median_us
from vrouter.core.priority import RT_PRIORITY
from vrouter.io import tap
from vrouter.processes.launch import set_scheduler

RELAY_PORT = 6699               # UDP, on the servers' underlay addresses (the vrouter's are 6635 and 4789)
RELAY_NET = "172.31.254"        # the VMs' addresses on the relay (/30), apart from the kernel VXLAN's
RELAY_MACS = ("02:52:4c:00:00:01", "02:52:4c:00:00:02")
READY = "relay ready"


def relay(tap_name: str, peer: str, local: str, port: int = RELAY_PORT, rt_priority: int = RT_PRIORITY) -> None:
    """Move frames between TAP `tap_name` (this namespace) and UDP peer:port until killed."""
    banner = READY
    if rt_priority:
        try:
            set_scheduler(rt_priority)
        except OSError as exc:
            banner = f"{READY} (normal scheduling: SCHED_FIFO refused: {exc.strerror or exc})"
    fd = tap.open_tap(tap_name)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((local, port))
    sock.setblocking(False)
    ep = select.epoll()
    ep.register(fd, select.EPOLLIN)
    ep.register(sock.fileno(), select.EPOLLIN)
    dest = (peer, port)
    print(banner, flush=True)
    while True:
        for ready, _ in ep.poll():
            if ready == fd:
                try:
                    sock.sendto(os.read(fd, 65536), dest)
                except OSError:
                    pass
                continue
            try:
                os.write(fd, sock.recv(65536))
            except OSError:
                continue
            try:    # the VM's answer is queued when the write returns (Forwarder.read_answer)
                sock.sendto(os.read(fd, 65536), dest)
            except OSError:
                pass


class RelayPair:
    """A relay on each of the pair's servers, its TAP moved into the VM's namespace (close removes
    both: the processes by PID, the TAPs by name)."""

    def __init__(self, tb, pair) -> None:
        self.tb, self.pair = tb, pair
        self.name = f"{tb.prefix}-rl"
        self.procs: list = []
        self.hosts: list = []   # where a relay TAP may be: the servers (before the move) and the VMs
        ends = ((pair.client, pair.client_vm.name, pair.server_ip, pair.client_ip),
                (pair.server, pair.server_vm.name, pair.client_ip, pair.server_ip))
        try:
            for i, (srv, vm, peer, local) in enumerate(ends):
                self._start(srv, vm, peer, local, i)
        except BaseException:
            self.close()
            raise

    def _start(self, srv: str, vm: str, peer: str, local: str, i: int) -> None:
        host, vm_host = self.tb.host(srv), self.tb.host(vm)
        proc = host.popen([sys.executable, "-m", "testbed.relay_floor", self.name, peer, local, str(RELAY_PORT)],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=str(REPO))
        self.procs.append(proc)
        self.hosts += [host, vm_host]
        line = proc.stdout.readline().strip()
        if not line.startswith(READY):
            raise OSError(f"relay on {srv} did not start: {line or proc.stdout.read()[-300:]}")
        other = 1 - i
        out = host.cmd(f"ip link set {self.name} netns {vm_host.pid} 2>&1 && echo OK").strip()
        if not out.endswith("OK"):
            raise OSError(f"moving the relay's TAP into {vm}: {out}")
        cmds = [f"ip link set {self.name} address {RELAY_MACS[i]}",
                f"ip addr add {RELAY_NET}.{i + 1}/30 dev {self.name}", f"ip link set {self.name} up",
                f"ip neigh replace {RELAY_NET}.{other + 1} lladdr {RELAY_MACS[other]} dev {self.name} nud permanent"]
        for c in cmds:
            out = vm_host.cmd(f"{c} 2>&1 && echo OK").strip()
            if not out.endswith("OK"):
                raise OSError(f"relay TAP in {vm}: {c}: {out}")

    def ping_median_us(self) -> float | None:
        """The bench's pings (50 at 20 ms) from the client VM to the server VM over the relays."""
        return ping_median_us(self.tb.host(self.pair.client_vm.name), f"{RELAY_NET}.2")

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            if proc.stdout:
                proc.stdout.close()
        self.procs = []
        for host in self.hosts:
            host.cmd(f"ip link del {self.name} 2>/dev/null")
        self.hosts = []


def measure(tb, pair) -> dict:
    """{"median": us} of the pings over the relays, or {"error": why}."""
    try:
        relays = RelayPair(tb, pair)
    except OSError as exc:
        return {"median": None, "error": str(exc)}
    try:
        median = relays.ping_median_us()
        return {"median": median} if median is not None else {"median": None, "error": "no ping answered"}
    finally:
        relays.close()


if __name__ == "__main__":
    try:
        relay(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), *map(int, sys.argv[5:6]))
    except (OSError, tap.TapError, IndexError, ValueError) as exc:
        print(f"relay: {exc}", flush=True)
        sys.exit(1)
    except KeyboardInterrupt:
        pass
