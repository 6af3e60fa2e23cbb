"""The default network and a gateway end to end (topologies/gateway.yaml): an "internet" host inet1
behind the gateway on leaf2 reaches red1 through its floating IP (ping, TCP), blue's VMs reach inet1
through source NAT (inet1 sees their server's SNAT address), and `flow -l` shows both translations;
a UDP exchange through source NAT, `vr SRV nat` counting its port while the pair lives and after it
ages out, and `net floating-ip add|rm` / `net snat NET on|off` changing reachability at run time."""
import json
import re
import subprocess
import sys
import time

import pytest

from overlay_helpers import needs_root
from testbed import REPO
from testbed.runner import Testbed
from testbed.topology import load

pytestmark = [pytest.mark.e2e, needs_root]

FIP, INET = "198.51.100.11", "203.0.113.10"
SNAT_SRV1, SNAT_SRV2, SNAT_SRV3 = "198.51.100.254", "198.51.100.253", "198.51.100.252"
FIP_RED3 = "198.51.100.13"
SERVER = "import http.server, sys; http.server.HTTPServer(('0.0.0.0', int(sys.argv[1])), " \
         "http.server.SimpleHTTPRequestHandler).serve_forever()"
CLIENT = "import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=10).status)"
# UDP: the server answers every datagram but "silent" with what it got and who sent it (address:port as
# it saw them); the client prints the answer, or nothing after its timeout.
UDP_SERVER = "import socket, sys; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); " \
             "s.bind(('0.0.0.0', int(sys.argv[1])))\n" \
             "while True:\n d, a = s.recvfrom(2048)\n" \
             " if d != b'silent': s.sendto(d + b' from %s:%d' % (a[0].encode(), a[1]), a)\n"
UDP_CLIENT = "import socket, sys; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(3)\n" \
             "s.sendto(sys.argv[3].encode(), (sys.argv[1], int(sys.argv[2])))\n" \
             "try: print(s.recvfrom(2048)[0].decode())\nexcept OSError: pass\n"
UDP_PORT = 7007


@pytest.fixture(scope="module")
def tb(run_root, new_prefix):
    bed = Testbed(load(REPO / "topologies" / "gateway.yaml"), prefix=new_prefix("g"), run_root=str(run_root)).start()
    yield bed
    bed.stop()


def ping(tb, host, dst, count=3):
    out = tb.host(host).cmd(f"ping -c {count} -i 0.3 -W 2 {dst}")
    m = re.search(r"(\d+) received", out)
    return int(m.group(1)) if m else 0


def serve(tb, host, port, log):
    """An HTTP server in ``host`` logging its clients to ``log``, up before this returns."""
    tb.host(host).cmd(f"{sys.executable} -c \"{SERVER}\" {port} >{log} 2>&1 &")
    deadline = time.monotonic() + 15
    while f":{port}" not in tb.host(host).cmd("ss -ltn"):
        assert time.monotonic() < deadline, f"no server on {host}:{port}"
        time.sleep(0.2)


def get(tb, host, url):
    return tb.host(host).cmd(f"{sys.executable} -c \"{CLIENT}\" {url}").strip()


def cli(tb, *argv):
    """A testbed command on this testbed; its output (it must succeed)."""
    r = subprocess.run([sys.executable, "-m", "testbed.cli", *argv, "--prefix", tb.prefix, "--run-root",
                        str(tb.rundir.root)], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout


def vr(tb, server, *argv):
    return cli(tb, "vr", server, *argv)


def nat_state(tb, server):
    return json.loads(vr(tb, server, "nat", "--json"))


def eventually(check, what, timeout=40.0):
    """Poll ``check`` until it is true (run-time changes reach the vrouters and the gateway in a while)."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def udp_serve(tb, host, tmp_path):
    """The UDP server in ``host`` (once: later calls find it listening)."""
    if f":{UDP_PORT}" in tb.host(host).cmd("ss -lun"):
        return
    script = tmp_path / "udp_server.py"
    script.write_text(UDP_SERVER)
    tb.host(host).cmd(f"{sys.executable} {script} {UDP_PORT} >{tmp_path / 'udp.log'} 2>&1 &")
    eventually(lambda: f":{UDP_PORT}" in tb.host(host).cmd("ss -lun"), f"a UDP server on {host}")


def udp(tb, host, dst, payload, tmp_path):
    """One datagram from ``host`` to the UDP server at ``dst``; the answer ("" if none)."""
    script = tmp_path / "udp_client.py"
    script.write_text(UDP_CLIENT)
    return tb.host(host).cmd(f"{sys.executable} {script} {dst} {UDP_PORT} {payload}").strip()


def test_inet_host_pings_and_connects_to_a_floating_ip(tb, tmp_path):
    assert ping(tb, "inet1", FIP) == 3
    serve(tb, "red1", 8080, tmp_path / "red1.log")
    assert get(tb, "inet1", f"http://{FIP}:8080/") == "200"
    assert f"{INET} - -" in (tmp_path / "red1.log").read_text()      # red1 sees the real client
    assert ping(tb, "red1", INET) == 3                                 # and reaches out itself


def test_vms_without_floating_ip_reach_outside_through_source_nat(tb, tmp_path):
    log = tmp_path / "inet1.log"
    serve(tb, "inet1", 9090, log)
    assert get(tb, "blue1", f"http://{INET}:9090/") == "200"
    assert get(tb, "blue2", f"http://{INET}:9090/") == "200"
    seen = log.read_text()
    assert f"{SNAT_SRV1} - -" in seen and f"{SNAT_SRV2} - -" in seen
    assert ping(tb, "blue1", INET) == 3
    assert ping(tb, "red3", INET) == 0          # red without a floating IP and without source NAT


def test_flow_list_shows_both_translations(tb):
    ping(tb, "inet1", FIP, count=1)
    ping(tb, "blue1", INET, count=1)
    out = vr(tb, "srv1", "flow", "-l")
    assert f"(NAT floating: {INET}:" in out and "out external" in out
    assert f"(NAT floating: {FIP}:" in out
    assert f"(NAT snat: {SNAT_SRV1}:" in out and "-> 192.168.1.11:" in out
    assert "Action:N, Role:R" in out and "Action:N, Role:F" in out


def test_udp_through_source_nat_both_ways_and_vr_nat_counts_its_port_until_the_pair_goes(tb, tmp_path):
    udp_serve(tb, "inet1", tmp_path)
    vr(tb, "srv1", "reset")                     # earlier tests' flows and ports gone
    assert nat_state(tb, "srv1")["ports_in_use"]["udp"] == 0
    answer = udp(tb, "blue1", INET, "hello", tmp_path)
    m = re.fullmatch(rf"hello from {re.escape(SNAT_SRV1)}:(\d+)", answer)
    assert m, answer                            # inet1 saw the SNAT address; its answer came back to blue1
    state = nat_state(tb, "srv1")
    first, last = state["snat_ports"]
    assert first <= int(m.group(1)) <= last
    assert state["ports_in_use"]["udp"] == 1 and state["ports_free"]["udp"] == last - first
    assert (state["snat_address"], state["snat_networks"]) == (SNAT_SRV1, ["blue"])
    assert state["floating_ips"][0]["address"] == FIP
    text = vr(tb, "srv1", "nat")
    assert f"Source NAT: networks blue -> {SNAT_SRV1}" in text and f"Floating IPs: {FIP} (vif " in text
    assert re.search(rf"^  udp +1 +{last - first}$", text, re.M), text
    # a datagram never answered: its pair is unreplied and ages out (flow.unreplied_timeout), its port back
    assert udp(tb, "blue1", INET, "silent", tmp_path) == ""
    assert nat_state(tb, "srv1")["ports_in_use"]["udp"] == 2
    eventually(lambda: nat_state(tb, "srv1")["ports_in_use"]["udp"] == 1, "the unreplied pair to age out",
               timeout=60.0)
    vr(tb, "srv1", "reset")
    assert nat_state(tb, "srv1")["ports_in_use"] == {"tcp": 0, "udp": 0, "icmp": 0}


def test_floating_ip_added_and_removed_at_run_time(tb, tmp_path):
    udp_serve(tb, "inet1", tmp_path)
    assert ping(tb, "inet1", FIP_RED3, count=1) == 0
    assert FIP_RED3 not in vr(tb, "srv3", "nat")
    out = cli(tb, "net", "floating-ip", "add", "red3", FIP_RED3)
    assert f"red3: floating IP {FIP_RED3}" in out
    eventually(lambda: ping(tb, "inet1", FIP_RED3, count=1) == 1, "inet1 to reach red3's new floating IP")
    assert udp(tb, "red3", INET, "hi", tmp_path).startswith(f"hi from {FIP_RED3}:")    # out through it too
    assert f"Floating IPs: {FIP_RED3} (vif " in vr(tb, "srv3", "nat")
    assert "red3: no floating IP" in cli(tb, "net", "floating-ip", "rm", "red3")
    eventually(lambda: ping(tb, "inet1", FIP_RED3, count=1) == 0, "red3's floating IP to go")
    assert "Floating IPs: none on this server" in vr(tb, "srv3", "nat")
    assert udp(tb, "red3", INET, "hi", tmp_path) == ""          # red has no source NAT: no way out


def test_source_nat_switched_on_and_off_at_run_time(tb, tmp_path):
    udp_serve(tb, "inet1", tmp_path)
    assert ping(tb, "red3", INET, count=1) == 0
    assert "source NAT of red on" in cli(tb, "net", "snat", "red", "on")
    eventually(lambda: ping(tb, "red3", INET, count=1) == 1, "red3 to reach inet1 through source NAT")
    assert udp(tb, "red3", INET, "hi", tmp_path).startswith(f"hi from {SNAT_SRV3}:")
    assert nat_state(tb, "srv3")["snat_networks"] == ["red"]
    assert "source NAT of red off" in cli(tb, "net", "snat", "red", "off")
    eventually(lambda: ping(tb, "red3", INET, count=1) == 0, "red3's way out to close")
    assert "Source NAT: off" in vr(tb, "srv3", "nat")
    assert ping(tb, "red1", INET, count=1) == 1                 # red1's floating IP is not source NAT
