"""Flooding on a real testbed (vrouter/core/flood.py): an ARP for an address no VM has, UDP broadcasts
and a 224.x multicast from red1 reach red's members on all three servers and no blue VM; an ARP reply
to a flooded request comes back as unicast through the MAC tables; a storm from red1 is cut by the
storm limit set at run time (`testbed net flood`) while others' floods and unicast still flow.
Every VM counts what its interface receives with an AF_PACKET socket (no copy is assumed)."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from overlay_helpers import needs_root, ping, vm_tap
from testbed.runner import Testbed
from testbed.topology import from_dict
from vrouter.io import introspect

pytestmark = [pytest.mark.e2e, needs_root]

TOPOLOGY = Path(__file__).parent / "topologies" / "flood.yaml"
RED, BLUE = ("red1", "red2", "red3", "red4"), ("blue1", "blue2")
NOBODY, SECONDARY = "192.168.1.99", "192.168.1.50"     # no VM has the first; red3 answers for the second
BURST, RATE, STORM, WINDOW = 50, 100, 3000, 4.0

# Counts the frames the interface receives: ARP requests by target, ARP replies by sender, UDP by port.
SNIFF = """import json,socket,struct,sys,time
s=socket.socket(socket.AF_PACKET,socket.SOCK_RAW,socket.htons(3));s.bind((sys.argv[1],0));s.settimeout(0.1)
print('ready',flush=True);end=time.time()+float(sys.argv[2]);c={}
while time.time()<end:
 try:f,a=s.recvfrom(65535)
 except socket.timeout:continue
 if a[2]==socket.PACKET_OUTGOING:continue
 q=f[21]==1
 if f[12:14]==b'\\x08\\x06' and len(f)>=42:k=('arp:' if q else 'reply:')+socket.inet_ntoa(f[38:42] if q else f[28:32])
 elif f[12:14]==b'\\x08\\x00' and f[23]==17:h=14+(f[14]&15)*4;k='udp:%d'%struct.unpack('!H',f[h+2:h+4])[0]
 else:continue
 c[k]=c.get(k,0)+1
print(json.dumps(c),flush=True)
"""
# `arp IFACE SENDER_IP TARGET N` (raw ARP requests) or `udp IFACE DST PORT N` (a UDP socket).
SEND = """import socket,sys,time
m,ifc=sys.argv[1],sys.argv[2];n=int(sys.argv[5])
if m=='arp':
 mac=bytes.fromhex(open('/sys/class/net/%s/address'%ifc).read().strip().replace(':',''))
 r=socket.socket(socket.AF_PACKET,socket.SOCK_RAW);r.bind((ifc,0))
 a=socket.inet_aton
 f=b'\\xff'*6+mac+b'\\x08\\x06'+bytes.fromhex('0001080006040001')+mac+a(sys.argv[3])+bytes(6)+a(sys.argv[4])
 for _ in range(n):r.send(f);time.sleep(0.05)
else:
 u=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);u.setsockopt(socket.SOL_SOCKET,socket.SO_BROADCAST,1)
 u.setsockopt(socket.IPPROTO_IP,socket.IP_MULTICAST_TTL,1);sent=0
 for _ in range(n):
  try:u.sendto(b'x'*32,(sys.argv[3],int(sys.argv[4])));sent+=1
  except OSError:time.sleep(0.001)
 print(sent,flush=True)
"""


@pytest.fixture(scope="module")
def tb(run_root):
    doc = yaml.safe_load(TOPOLOGY.read_text())
    prefix = "fl" + os.urandom(2).hex()
    bed = Testbed(from_dict(doc, source=str(TOPOLOGY)), prefix=prefix, run_root=str(run_root)).start()
    bed.taps = {vm: vm_tap(bed, vm) for vm in RED + BLUE}
    yield bed
    bed.stop()


def sniffing(tb, seconds):
    """A sniffer in every VM, each ready before this returns; `collect` gives their counts."""
    procs = {vm: tb.host(vm).popen([sys.executable, "-c", SNIFF, tb.taps[vm], str(seconds)], text=True)
             for vm in RED + BLUE}
    for p in procs.values():
        assert p.stdout.readline().strip() == "ready"
    return procs


def collect(procs):
    out = {}
    for vm, p in procs.items():
        line = p.stdout.readline()
        p.wait()
        out[vm] = json.loads(line)
    return out


def send(tb, vm, mode, *args):
    p = tb.host(vm).popen([sys.executable, "-c", SEND, mode, tb.taps[vm], *map(str, args)], text=True)
    out, _ = p.communicate(timeout=60)
    assert p.returncode == 0, out
    return out


def flood_view(tb, server):
    return {n["network"]: n for n in introspect.query(tb.path, server, "flood")["networks"]}


def test_arp_broadcast_and_multicast_reach_the_members_and_no_other_network(tb):
    tb.host("red3").cmd(f"ip addr add {SECONDARY}/32 dev {tb.taps['red3']}")
    procs = sniffing(tb, 3.0)
    send(tb, "red1", "arp", "192.168.1.11", NOBODY, 3)
    send(tb, "red1", "udp", "255.255.255.255", 6001, 3)
    send(tb, "red1", "udp", "192.168.1.255", 6002, 3)
    send(tb, "red1", "udp", "224.1.2.3", 6003, 3)
    send(tb, "red1", "arp", "192.168.1.11", SECONDARY, 1)      # red3 answers: back to red1 as unicast
    seen = collect(procs)
    wanted = {f"arp:{NOBODY}": 3, "udp:6001": 3, "udp:6002": 3, "udp:6003": 3}
    for vm in ("red2", "red3", "red4"):
        assert {k: seen[vm].get(k) for k in wanted} == wanted, (vm, seen)
    for vm in BLUE:
        assert not set(seen[vm]) & {*wanted, f"arp:{SECONDARY}"}, (vm, seen)
    assert seen["red1"].get(f"reply:{SECONDARY}") == 1, seen
    assert not set(seen["red1"]) & set(wanted), seen                # no copy back to the sender
    red1, red3 = flood_view(tb, "srv1")["red"], flood_view(tb, "srv2")["red"]
    assert red1["counters"]["to_tunnels"] >= 2 * 13 and red1["counters"]["to_vms"] >= 13
    assert [e["peer"] for e in red1["endpoints"]] == ["10.0.1.2", "10.0.2.1"]
    assert red3["counters"]["unicast"] >= 1                         # the reply: srv2 had learned red1's MAC
    red1_mac = next(v["mac"] for v in introspect.query(tb.path, "srv1", "vifs") if v["name"] == tb.taps["red1"])
    assert {"mac": red1_mac, "peer": "10.0.1.1", "local": False} in [
        {k: m[k] for k in ("mac", "peer", "local")} for m in red3["macs"] if not m["local"]]
    assert flood_view(tb, "srv2")["blue"]["counters"]["from_fabric"] == 0


def test_a_storm_is_cut_by_the_limit_and_other_traffic_still_flows(tb):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])}
    done = subprocess.run([sys.executable, "-m", "testbed.cli", "net", "flood", "--rate", str(RATE), "--burst",
                           str(BURST), "--prefix", tb.prefix, "--run-root", str(tb.rundir.root)],
                          capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0 and f"{RATE} frames/s per VM, burst {BURST}" in done.stdout, done.stdout + done.stderr
    for server in ("srv1", "srv2", "srv3"):          # pushed within a second; wait for every vrouter
        for _ in range(50):
            if introspect.query(tb.path, server, "flood")["rate"] == RATE:
                break
            time.sleep(0.1)
        else:
            raise AssertionError(f"{server} never got the new storm limit")
    dropped = introspect.query(tb.path, "srv1", "dropstats")["flood_storm"]
    procs = sniffing(tb, WINDOW)
    sent = int(send(tb, "red1", "udp", "255.255.255.255", 6004, STORM).split()[-1])
    send(tb, "red2", "udp", "255.255.255.255", 6005, 5)         # another VM's bucket is its own
    assert ping(tb, "red2", "192.168.1.13", count=2) == 2        # unicast is no flood: untouched
    seen = collect(procs)
    bound = BURST + RATE * WINDOW                                # the most the bucket lets through in the window
    for vm in ("red2", "red3", "red4"):
        assert 1 <= seen[vm].get("udp:6004", 0) <= bound, (vm, sent, seen)
    for vm in ("red1", "red3", "red4"):
        assert seen[vm].get("udp:6005") == 5, (vm, seen)
    storm = introspect.query(tb.path, "srv1", "dropstats")["flood_storm"] - dropped
    assert sent >= STORM // 2 and storm >= sent - bound, (sent, storm)
    assert flood_view(tb, "srv1")["red"]["counters"]["storm_drops"] >= storm
