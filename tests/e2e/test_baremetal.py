"""Bare-metal hosts on a real testbed: bms1 runs no vrouter and joins red through a Linux VXLAN device
programmed by the VNC (testbed/baremetal.py, controllers/vnc_baremetal.py), with MPLSoUDP between
the vrouters. ICMP, TCP and UDP both ways between the host and VMs on two servers; the ARP the host
floods over VXLAN answered by the VM's vrouter (vrouter/core/fabric_arp.py); a VM's subnet broadcast
and 224.x multicast reach the host once, the host's broadcast reaches red's VMs on both servers, blue
none of them; a VM added at run time reachable from the host; blue (same subnet) never reached; the
host taken out and joined again (into blue, then red) with `testbed net baremetal rm | add`, its
routes and device following, as `testbed vr SRV baremetal` shows."""
import json
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from overlay_helpers import needs_root, vm_tap, wait_ping
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
    prefix = "bn" + uuid.uuid4().hex[:4]        # this module's prefix: bn + 4 random hex digits
    bed = Testbed(load(TOPOLOGY), prefix=prefix, run_root=str(run_root)).start()
    servers = [bed.host(h).popen([sys.executable, "-c", code]) for h in ("bms1", "red1", "red2")
               for code in (TCP_SERVER, UDP_SERVER)]
    time.sleep(0.5)
    yield bed
    for p in servers:
        p.kill()
        p.wait()
    bed.stop()


# Counts the UDP frames an interface receives, by destination address and port (AF_PACKET: every copy).
SNIFF = ("import json,socket,struct,sys,time\n"
         "s=socket.socket(socket.AF_PACKET,socket.SOCK_RAW,socket.htons(3));s.bind((sys.argv[1],0))\n"
         "s.settimeout(0.1);print('ready',flush=True);end=time.time()+float(sys.argv[2]);c={}\n"
         "while time.time()<end:\n"
         " try:f,a=s.recvfrom(65535)\n"
         " except socket.timeout:continue\n"
         " if a[2]==socket.PACKET_OUTGOING or f[12:14]!=b'\\x08\\x00' or f[23]!=17:continue\n"
         " h=14+(f[14]&15)*4;k='%s:%d'%(socket.inet_ntoa(f[30:34]),struct.unpack('!H',f[h+2:h+4])[0])\n"
         " c[k]=c.get(k,0)+1\n"
         "print(json.dumps(c),flush=True)\n")
# `DST PORT N [SOURCE]`: N datagrams (broadcast allowed; multicast out of SOURCE's interface).
SEND = ("import socket,sys,time\nu=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
        "u.setsockopt(socket.SOL_SOCKET,socket.SO_BROADCAST,1);u.setsockopt(socket.IPPROTO_IP,socket.IP_MULTICAST_TTL,1)\n"
        "if len(sys.argv)>4:u.setsockopt(socket.IPPROTO_IP,socket.IP_MULTICAST_IF,socket.inet_aton(sys.argv[4]))\n"
        "for _ in range(int(sys.argv[3])):u.sendto(b'x'*32,(sys.argv[1],int(sys.argv[2])));time.sleep(0.02)\n")
N = 5


def cli(tb, *argv, ok=True):
    """`testbed ...` as a user runs it: (exit code, stdout, stderr); fails the test on an unexpected exit."""
    r = subprocess.run([sys.executable, "-m", "testbed.cli", *argv, "--prefix", tb.prefix, "--run-root",
                        str(tb.rundir.root)], capture_output=True, text=True, timeout=60)
    assert (r.returncode == 0) == ok, (r.returncode, r.stdout, r.stderr)
    return r


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


def test_floods_reach_the_host_once_and_the_hosts_broadcast_reaches_reds_vms_only(tb):
    ifaces = {"bms1": "vxlan100", **{vm: vm_tap(tb, vm) for vm in ("red1", "red2", "blue1")}}
    sniffers = {n: tb.host(n).popen([sys.executable, "-c", SNIFF, i, "3"], stdout=subprocess.PIPE, text=True)
                for n, i in ifaces.items()}
    for p in sniffers.values():
        assert p.stdout.readline().strip() == "ready"
    for host, dst, port, src in (("red1", "192.168.1.255", 5003, RED1), ("red1", "224.1.1.1", 5004, RED1),
                                 ("bms1", "192.168.1.255", 5005, BMS)):
        send = tb.host(host).popen([sys.executable, "-c", SEND, dst, str(port), str(N), src], stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True)
        out = send.communicate(timeout=10)[0]
        assert send.returncode == 0, out
    got = {n: json.loads(p.communicate(timeout=10)[0]) for n, p in sniffers.items()}
    bcast, mcast, host_bcast = "192.168.1.255:5003", "224.1.1.1:5004", "192.168.1.255:5005"
    assert got["bms1"].get(bcast) == N and got["bms1"].get(mcast) == N, got       # once each: no duplicate
    assert got["red2"].get(bcast) == N and got["red2"].get(mcast) == N, got
    assert got["red1"].get(host_bcast) == N and got["red2"].get(host_bcast) == N, got
    assert not got["blue1"], got                                                   # never into another network


def test_the_vrouters_view_of_the_host(tb):
    out = cli(tb, "vr", "srv1", "baremetal").stdout
    assert "red        192.168.1.50/32    10.0.2.9             100" in out and out.splitlines()[1].endswith("yes"), out
    assert "(fabric_arp_replies): " in out, out


def test_the_host_taken_out_and_joined_again_at_run_time(tb):
    host = tb.host("bms1")
    out = cli(tb, "net", "baremetal", "rm", "bms1").stdout
    assert out.startswith("bare-metal host bms1 taken out") and "srv1, srv2" in out, out
    assert "vxlan100" not in host.cmd("ip -o link show")
    assert "no bare-metal host routed on this server" in cli(tb, "vr", "srv1", "baremetal").stdout
    assert "bms1: not joined (wired to leaf2, VTEP 10.0.2.9)" in cli(tb, "net", "baremetal", "list").stdout
    assert not wait_ping(tb, "red1", BMS, timeout=2)
    bad = cli(tb, "net", "baremetal", "add", "bms1", "--leaf", "leaf1", "--address", "10.0.2.9", "--network",
              "red", "--overlay-address", BMS, ok=False)
    assert bad.returncode == 2 and bad.stderr.strip().endswith(
        "baremetal['bms1'].leaf: bms1 is wired to leaf leaf2 in the fabric, not 'leaf1'") and \
        len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    join = ["net", "baremetal", "add", "bms1", "--leaf", "leaf2", "--address", "10.0.2.9"]
    out = cli(tb, *join, "--network", "blue", "--overlay-address", "192.168.1.60").stdout
    assert "joined blue as 192.168.1.60 (vxlan200, VNI 200)" in out, out
    assert wait_ping(tb, "bms1", "192.168.1.50")                   # blue1, from blue
    assert not wait_ping(tb, "bms1", RED1, timeout=2)              # red is not reached from blue
    cli(tb, "net", "baremetal", "rm", "bms1")
    cli(tb, *join, "--network", "red", "--overlay-address", BMS)
    assert wait_ping(tb, "bms1", RED2) and wait_ping(tb, "red1", BMS)
    assert "red        192.168.1.50/32" in cli(tb, "vr", "srv1", "baremetal").stdout
