"""Mirroring on a real testbed (vrouter/core/mirror.py): a VM mirrored to a pcap in the run directory
holds, byte for byte, the frames a tcpdump in the VM's namespace saw it send and receive, while the
originals arrive intact; a VM mirrored to an analyzer VM on another server reaches it as VXLAN-in-UDP
whose inner frames are the mirrored ones; removing a session stops its copies. The sessions are
added and removed with `testbed net mirror` (through the VNC) and read with `testbed vr SRV mirror`."""
import subprocess
import sys
import time
import uuid

import pytest
import yaml
from scapy.layers.inet import ICMP, IP, UDP
from scapy.layers.l2 import Ether
from scapy.layers.vxlan import VXLAN
from scapy.utils import rdpcap

from overlay_helpers import TOPOLOGY, expected_digest, needs_root, ping, transfer, vm_tap, wait_ping
from testbed.runner import Testbed
from testbed.topology import from_dict
from vrouter.io import introspect
from vrouter.io.mirror_pcap import pcap_path

pytestmark = [pytest.mark.e2e, needs_root]

RED1, RED2, RED3 = "192.168.1.11", "192.168.1.12", "192.168.1.13"
PATTERN = "6d6972726f72"        # "mirror": the pings' payload pattern


@pytest.fixture(scope="module")
def tb(run_root):
    doc = yaml.safe_load(TOPOLOGY.read_text())
    bed = Testbed(from_dict(doc, source=str(TOPOLOGY)), prefix="mr" + uuid.uuid4().hex[:4],
                  run_root=str(run_root)).start()
    assert wait_ping(bed, "red1", RED2) and wait_ping(bed, "red3", RED2)
    yield bed
    bed.stop()


def cli(tb, *argv):
    """`testbed ...` as a user runs it; returns its output, fails the test on a non-zero exit."""
    r = subprocess.run([sys.executable, "-m", "testbed.cli", *argv, "--prefix", tb.prefix,
                        "--run-root", str(tb.rundir.root)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout


def sessions(tb, server):
    return {s["name"]: s for s in introspect.query(tb.path, server, "mirror")["sessions"]}


def wait_session(tb, server, name, present=True, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (name in sessions(tb, server)) == present:
            return
        time.sleep(0.1)
    raise AssertionError(f"{server}: session {name} still {'absent' if present else 'present'}")


class Tcpdump:
    """tcpdump on a VM's interface inside its namespace, started before the traffic."""

    def __init__(self, tb, vm, path, bpf):
        self.path = path
        self.proc = tb.host(vm).popen(["tcpdump", "-i", vm_tap(tb, vm), "-n", "-U", "--immediate-mode",
                                       "-s", "262144", "-w", str(path), *bpf.split()],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        while "listening on" not in (line := self.proc.stderr.readline()):
            assert line or self.proc.poll() is None, "tcpdump did not start"

    def frames(self):
        time.sleep(0.3)
        self.proc.terminate()
        self.proc.wait()
        return [bytes(p) for p in rdpcap(str(self.path))]


def between(frames, a, b):
    """The IPv4 frames between addresses a and b (either way)."""
    out = []
    for f in frames:
        ip = Ether(f).getlayer(IP)
        if ip is not None and {ip.src, ip.dst} == {a, b}:
            out.append(f)
    return out


def test_a_vm_mirrored_to_pcap_holds_exactly_what_it_sent_and_received(tb, tmp_path):
    out = cli(tb, "net", "mirror", "add", "m1", "--vm", "red1", "--pcap")
    assert "mirror session m1 added" in out and "srv1" in out
    wait_session(tb, "srv1", "m1")
    dump = Tcpdump(tb, "red1", tmp_path / "red1.pcap", f"host {RED2}")
    assert ping(tb, "red1", RED2, count=4) == 4
    tb.host("red1").cmd(f"ping -c 2 -i 0.2 -p {PATTERN} {RED2}")
    n, digest = transfer(tb, "red1", "red2", RED2, 5201, nbytes=200_000)
    seen = dump.frames()
    assert (n, digest) == (200_000, expected_digest(200_000))      # the originals arrive unchanged
    time.sleep(0.3)
    copied = between([bytes(p) for p in rdpcap(pcap_path(str(tb.path), "m1", "srv1"))], RED1, RED2)
    assert len(copied) >= 12 and sorted(copied) == sorted(seen)    # byte for byte, both directions
    icmp = [Ether(f) for f in copied if Ether(f).haslayer(ICMP)]
    assert sum(bytes(p[ICMP].payload).find(bytes.fromhex(PATTERN)) >= 0 for p in icmp) == 4   # 2 req + 2 rep
    view = sessions(tb, "srv1")["m1"]
    assert view["copies"] >= len(copied) and view["drops"] == 0
    table = cli(tb, "vr", "srv1", "mirror")
    assert "m1" in table and "vif " in table and "pcap" in table


def test_a_vm_mirrored_to_an_analyzer_reaches_it_as_vxlan(tb, tmp_path):
    cli(tb, "net", "mirror", "add", "m2", "--vm", "red2", "--analyzer", "red3")
    wait_session(tb, "srv3", "m2")
    vni = sessions(tb, "srv3")["m2"]["id"]
    at_red2 = Tcpdump(tb, "red2", tmp_path / "red2.pcap", f"host {RED1}")
    at_red3 = Tcpdump(tb, "red3", tmp_path / "red3.pcap", "udp port 4789")
    tb.host("red1").cmd(f"ping -c 3 -i 0.2 -p {PATTERN} {RED2}")
    seen, got = at_red2.frames(), at_red3.frames()
    copies = [Ether(f) for f in got]
    assert copies and all(p[IP].src == "192.168.1.1" and p[IP].dst == RED3 and p[UDP].dport == 4789
                          and p[VXLAN].vni == vni for p in copies)
    inner = between([bytes(p[VXLAN].payload) for p in copies], RED1, RED2)
    assert len(inner) == 6 and sorted(inner) == sorted(between(seen, RED1, RED2))
    cli(tb, "net", "mirror", "rm", "m2")
    wait_session(tb, "srv3", "m2", present=False)


def test_removing_a_session_stops_its_copies(tb):
    cli(tb, "net", "mirror", "add", "m3", "--network", "red", "--pcap", "--direction", "ingress")
    wait_session(tb, "srv1", "m3")
    path = pcap_path(str(tb.path), "m3", "srv1")
    assert ping(tb, "red3", RED2, count=2) == 2
    time.sleep(0.3)
    before = len(rdpcap(path))
    assert before >= 2
    listed = cli(tb, "net", "mirror", "list")
    assert "m3 (VNI" in listed and "network red, ingress, to pcap" in listed
    cli(tb, "net", "mirror", "rm", "m3")
    wait_session(tb, "srv1", "m3", present=False)
    assert ping(tb, "red3", RED2, count=3) == 3
    time.sleep(0.3)
    assert len(rdpcap(path)) == before
