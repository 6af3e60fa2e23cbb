"""The default network and a gateway end to end (topologies/gateway.yaml): an "internet" host inet1
behind the gateway on leaf2 reaches red1 through its floating IP (ping, TCP), blue's VMs reach inet1
through source NAT (inet1 sees their server's SNAT address), and `flow -l` shows both translations."""
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
SNAT_SRV1, SNAT_SRV2 = "198.51.100.254", "198.51.100.253"
SERVER = "import http.server, sys; http.server.HTTPServer(('0.0.0.0', int(sys.argv[1])), " \
         "http.server.SimpleHTTPRequestHandler).serve_forever()"
CLIENT = "import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=10).status)"


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


def vr(tb, server, *argv):
    r = subprocess.run([sys.executable, "-m", "testbed.cli", "vr", "--prefix", tb.prefix, "--run-root",
                        str(tb.rundir.root), server, *argv], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout


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
