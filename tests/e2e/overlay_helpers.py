"""Shared pieces of the overlay end-to-end tests (real Mininet + OVS + vrouters, root)."""
import hashlib
import os
import random
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import scapy.contrib.mpls  # noqa: F401  (registers UDP 6635 and GRE 0x8847 -> MPLS)
import scapy.layers.inet  # noqa: F401
import scapy.layers.l2  # noqa: F401  (registers Ethernet as link type 1)
import scapy.layers.vxlan  # noqa: F401
import yaml
from scapy.utils import rdpcap

from testbed.runner import Testbed
from testbed.topology import from_dict
from vrouter.io import introspect
from vrouter.io.control import AdminClient

TOPOLOGY = Path(__file__).parent / "topologies" / "overlay.yaml"

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root, Open vSwitch and Mininet")


def bring_up(run_root, encapsulation="mplsoudp") -> Testbed:
    doc = yaml.safe_load(TOPOLOGY.read_text())
    doc["encapsulation"] = encapsulation
    topo = from_dict(doc, source=str(TOPOLOGY), default_name="overlay")
    prefix = "o" + uuid.uuid4().hex[:5]  # unique per module: parallel runs never share names
    return Testbed(topo, prefix=prefix, run_root=str(run_root)).start()


def ping(tb, src_vm, dst_ip, count=3):
    out = tb.host(src_vm).cmd(f"ping -c {count} -i 0.2 -W 2 {dst_ip}")
    m = re.search(r"(\d+) received", out)
    return int(m.group(1)) if m else 0


def wait_ping(tb, src_vm, dst_ip, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ping(tb, src_vm, dst_ip, count=1):
            return True
    return False


TCP_SERVER = ("import socket,sys;s=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1);"
              "s.bind(('0.0.0.0',int(sys.argv[1])));s.listen(16);s.settimeout(15)\n"
              "for _ in range(int(sys.argv[2])):\n"
              " c,_=s.accept();n=0\n"
              " while True:\n"
              "  d=c.recv(65536)\n"
              "  if not d: break\n"
              "  n+=len(d)\n"
              " c.sendall(b'%d'%n);c.close()\n")
TCP_CLIENT = ("import socket,sys;c=socket.create_connection((sys.argv[1],int(sys.argv[2])),timeout=5);"
              "c.sendall(b'x'*int(sys.argv[3]));c.shutdown(socket.SHUT_WR);print(c.recv(100).decode())")


def tcp_transfers(tb, client_vm, server_vm, server_ip, port, nbytes=100000, connections=1):
    """Run `connections` TCP transfers; returns the byte counts the server acknowledged ('' = failed)."""
    server = tb.host(server_vm).popen([sys.executable, "-c", TCP_SERVER, str(port), str(connections)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.3)
        results = []
        for _ in range(connections):
            out = tb.host(client_vm).cmd(f"{sys.executable} -c \"{TCP_CLIENT}\" {server_ip} {port} {nbytes} 2>&1")
            results.append(out.strip().splitlines()[-1] if out.strip() else "")
        return results
    finally:
        server.kill()
        server.wait()


def vif_counters(tb, server):
    return {v["name"]: v for v in introspect.query(tb.path, server, "vifs")}


def vm_tap(tb, vm):
    with AdminClient(str(tb.rundir.vnc_socket)) as vnc:
        return next(v["tap"] for v in vnc.dump()["vms"] if v["name"] == vm)


def decode(pcap):
    return list(rdpcap(str(pcap)))


def is_path_message(p) -> bool:
    """Path repair's probes and answers (vrouter/core/paths.py): MPLS label 13 (GAL) or VXLAN VNI 0."""
    if p.haslayer(scapy.contrib.mpls.MPLS):
        return p[scapy.contrib.mpls.MPLS].label == 13
    return p.haslayer(scapy.layers.vxlan.VXLAN) and p[scapy.layers.vxlan.VXLAN].vni == 0


UDP_SERVER = ("import socket,sys;s=socket.socket(2,2);s.bind(('0.0.0.0',int(sys.argv[1])));s.settimeout(15)\n"
              "for _ in range(int(sys.argv[2])):\n"
              " d,a=s.recvfrom(2048);s.sendto(d,a)\n")
UDP_CLIENT = ("import socket,sys\n"
              "ok=0\n"
              "for i in range(int(sys.argv[3])):\n"
              " c=socket.socket(2,2);c.settimeout(3);c.sendto(b'q%d'%i,(sys.argv[1],int(sys.argv[2])))\n"
              " ok+=c.recv(100)==b'q%d'%i;c.close()\n"
              "print(ok)\n")


def udp_exchanges(tb, client_vm, server_vm, server_ip, port, count):
    """`count` request/response exchanges, each from a new source port (a new flow); returns replies seen."""
    server = tb.host(server_vm).popen([sys.executable, "-c", UDP_SERVER, str(port), str(count)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.3)
        out = tb.host(client_vm).popen([sys.executable, "-c", UDP_CLIENT, server_ip, str(port), str(count)],
                                       stdout=subprocess.PIPE, text=True).communicate(timeout=60)[0]
        return int(out.strip() or 0)
    finally:
        server.kill()
        server.wait()


# Sends N bytes of a fixed pseudo-random pattern; the receiver prints the byte count and SHA-256.
SINK = ("import socket,sys,hashlib;s=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1);"
        "s.bind(('0.0.0.0',int(sys.argv[1])));s.listen(1);s.settimeout(30);c,_=s.accept();h=hashlib.sha256();n=0\n"
        "while True:\n"
        " d=c.recv(1<<20)\n"
        " if not d: break\n"
        " h.update(d);n+=len(d)\n"
        "print(n,h.hexdigest(),flush=True)\n")
SOURCE = ("import socket,sys,random;r=random.Random(7);data=r.randbytes(int(sys.argv[3]));"
          "c=socket.create_connection((sys.argv[1],int(sys.argv[2])),timeout=30);c.sendall(data);c.close()")


def expected_digest(n):
    """SHA-256 of the n bytes SOURCE sends."""
    return hashlib.sha256(random.Random(7).randbytes(n)).hexdigest()


def transfer(tb, src_vm, dst_vm, dst_ip, port, nbytes=8_000_000):
    """Bulk TCP src_vm -> dst_vm; returns (bytes received, sha256) as the receiving VM saw them."""
    sink = tb.host(dst_vm).popen([sys.executable, "-c", SINK, str(port)], stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(0.3)
        tb.host(src_vm).cmd(f"{sys.executable} -c \"{SOURCE}\" {dst_ip} {port} {nbytes}")
        out = sink.communicate(timeout=60)[0].split()
        return int(out[0]), out[1]
    finally:
        if sink.poll() is None:
            sink.kill()
            sink.wait()
