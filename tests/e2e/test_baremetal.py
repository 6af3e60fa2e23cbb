"""Bare-metal hosts on a real testbed: bms1 runs no vrouter and joins red through a Linux VXLAN device
programmed by the VNC (testbed/baremetal.py, controllers/vnc_baremetal.py), with MPLSoUDP between
the vrouters. ICMP, TCP and UDP both ways between the host and VMs on two servers; the ARP the host
floods over VXLAN answered by the VM's vrouter (vrouter/core/fabric_arp.py); a VM added at run time
reachable from the host; blue (same subnet) never reached."""
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from overlay_helpers import needs_root
from testbed import overlay
from testbed.runner import Testbed
from testbed.topology import load
from vrouter.io import introspect

pytestmark = [pytest.mark.e2e, needs_root]

TOPOLOGY = Path(__file__).parent / "topologies" / "baremetal.yaml"
BMS, RED1, RED2, RED3 = "192.168.1.50", "192.168.1.11", "192.168.1.12", "192.168.1.13"
# One-shot TCP and UDP echo servers and clients (python sockets: nothing to install in the namespaces).
TCP_SERVER = ("import socket\ns=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n"
              "s.bind(('0.0.0.0',5001));s.listen(4)\nwhile True:\n c,_=s.accept();got=b''\n"
              " while True:\n  d=c.recv(65536)\n  if not d: break\n  got+=d\n c.sendall(got[::-1]);c.close()\n")
UDP_SERVER = ("import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);s.bind(('0.0.0.0',5002))\n"
              "while True:\n d,a=s.recvfrom(65536);s.sendto(d[::-1],a)\n")
CLIENT = ("import socket,sys\nip,kind,n=sys.argv[1],sys.argv[2],int(sys.argv[3]);msg=b'x'*n+b'!'\n"
          "if kind=='tcp':\n c=socket.create_connection((ip,5001),timeout=5);c.sendall(msg);c.shutdown(1)\n"
          " got=b''\n while True:\n  d=c.recv(65536)\n  if not d: break\n  got+=d\n"
          "else:\n c=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);c.settimeout(2);got=b''\n"
          " for _ in range(3):\n  c.sendto(msg,(ip,5002))\n  try:\n   got=c.recv(65536);break\n"
          "  except socket.timeout: pass\n"
          "print('ok' if got==msg[::-1] else 'bad %d' % len(got))\n")


@pytest.fixture(scope="module")
def tb(run_root):
    prefix = "bm" + uuid.uuid4().hex[:4]        # this module's prefix: bm + 4 random hex digits
    bed = Testbed(load(TOPOLOGY), prefix=prefix, run_root=str(run_root)).start()
    servers = [bed.host(h).popen([sys.executable, "-c", code]) for h in ("bms1", "red1", "red2")
               for code in (TCP_SERVER, UDP_SERVER)]
    time.sleep(0.5)
    yield bed
    for p in servers:
        p.kill()
        p.wait()
    bed.stop()


def ping(tb, host, ip, count=3):
    return tb.host(host).cmd(f"ping -c {count} -i 0.2 -W 2 {ip}")


def client(tb, host, ip, kind, size):
    proc = tb.host(host).popen([sys.executable, "-c", CLIENT, ip, kind, str(size)], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    return proc.communicate(timeout=30)[0].strip()


def test_icmp_both_ways(tb):
    for vm, ip in (("red1", RED1), ("red2", RED2)):
        assert " 0% packet loss" in ping(tb, "bms1", ip), ip
        assert " 0% packet loss" in ping(tb, vm, BMS), vm


@pytest.mark.parametrize("kind", ["tcp", "udp"])
def test_tcp_and_udp_both_ways(tb, kind):
    size = 200_000 if kind == "tcp" else 1200        # TCP: many segments, both directions' MSS
    for vm, ip in (("red1", RED1), ("red2", RED2)):
        assert client(tb, "bms1", ip, kind, size) == "ok", (kind, ip)
        assert client(tb, vm, BMS, kind, size) == "ok", (kind, vm)


def test_the_vrouter_routes_the_host_over_vxlan_without_probing_it(tb):
    nh = [n for n in introspect.query(tb.path, "srv1", "nexthops") if n.get("peer") == "10.0.2.9"]
    assert nh and all(n["encap"] == "vxlan" and n["label"] == 100 and n.get("probe") is False for n in nh), nh
    paths = introspect.query(tb.path, "srv1", "paths")
    assert "10.0.2.9" not in str(paths)


def test_the_hosts_flooded_arp_is_answered_by_the_vms_vrouter(tb):
    host = tb.host("bms1")
    before = {s: introspect.query(tb.path, s, "stats")["pipeline"]["fabric_arp_replies"] for s in ("srv1", "srv2")}
    host.cmd(f"ip neigh del {RED1} dev vxlan100")
    assert RED1 not in host.cmd("ip neigh show dev vxlan100")
    assert " 0% packet loss" in ping(tb, "bms1", RED1, count=2)
    entry = host.cmd(f"ip neigh show {RED1} dev vxlan100")
    assert "REACHABLE" in entry and entry.split()[2] in tb.host("red1").cmd("cat /sys/class/net/*/address"), entry
    after = {s: introspect.query(tb.path, s, "stats")["pipeline"]["fabric_arp_replies"] for s in ("srv1", "srv2")}
    assert after["srv1"] > before["srv1"] and after["srv2"] == before["srv2"], (before, after)


def test_a_vm_added_at_run_time_is_reachable_from_the_host_and_blue_is_not(tb):
    overlay.add_vm(tb, "red3", "red", "srv3", RED3)
    fdb = tb.host("bms1").cmd("bridge fdb show dev vxlan100")
    assert "dst 10.0.1.2" in fdb, fdb
    assert " 0% packet loss" in ping(tb, "bms1", RED3)
    assert " 0% packet loss" in ping(tb, "red3", BMS)
    # blue1 has the host's overlay address in another network: red's host is not blue's.
    assert "100% packet loss" in ping(tb, "blue1", RED1, count=2)
    overlay.remove_vm(tb, "red3")
    assert "dst 10.0.1.2" not in tb.host("bms1").cmd("bridge fdb show dev vxlan100")
