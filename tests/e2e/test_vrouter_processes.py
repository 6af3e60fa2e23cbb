"""Forwarder + agent processes of two vrouters in private namespaces, no Mininet and no controller.

Two "servers" (netns joined by a veth) each run `vrouter.processes.forwarder` and `vrouter.processes.agent --config`;
a VM namespace behind each. Checks ping and TCP across, the slow-path counts via introspection,
and that a restarted forwarder re-attaches to the VM's persistent TAP.
"""
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from vrouter.io import introspect, ipc
from vrouter.tools import tables

pytestmark = [pytest.mark.e2e,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root for namespaces and TAP")]

P = f"tvp{uuid.uuid4().hex[:4]}"
SERVERS = {"srv1": "10.97.0.1", "srv2": "10.97.0.2"}
VMS = {"srv1": ("vm1", f"{P}t1", "192.168.1.11", "02:00:00:00:01:11"),
       "srv2": ("vm2", f"{P}t2", "192.168.1.12", "02:00:00:00:01:12")}
ROOT = Path(__file__).resolve().parents[2]


def sh(*args, check=True):
    return subprocess.run(args, check=check, capture_output=True, text=True)


def config_for(server, mode="proactive"):
    vm, tap, ip, mac = VMS[server]
    other = next(s for s in SERVERS if s != server)
    _, _, oip, omac = VMS[other]
    return {
        "server": server, "underlay_ip": SERVERS[server], "encapsulation": "mplsoudp",
        "networks": [{"name": "red", "id": 100, "subnets": ["192.168.1.0/24"], "gateway": "192.168.1.1"}],
        "vifs": [{"name": tap, "network": "red", "mac": mac, "ip": ip}],
        "routes": [{"network": "red", "prefix": f"{oip}/32",
                    "nexthop": {"type": "tunnel", "peer": SERVERS[other], "label": 100, "encap": "mplsoudp",
                                "mac": omac}}],
        "peers": [SERVERS[other]], "policies": [],
        "flow": {"capacity": 4096, "idle_timeout": 60.0, "hold_queue": 3, "mode": mode},
    }


class Proc:
    def __init__(self, rundir, ns, module, *args):
        self.log = open(Path(rundir) / f"{ns}-{module.rsplit('.', 1)[1]}.log", "ab")
        self.p = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-m", module, *args],
                                  cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT)

    def stop(self):
        if self.p.poll() is None:
            self.p.terminate()
            try:
                self.p.wait(5)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        self.log.close()


@pytest.fixture(scope="module")
def bed():
    rundir = tempfile.mkdtemp(prefix=f"{P}-", dir="/tmp")
    namespaces = [f"{P}s1", f"{P}s2", f"{P}vm1", f"{P}vm2"]
    procs = {}
    try:
        for ns in namespaces:
            sh("ip", "netns", "add", ns)
        sh("ip", "link", "add", f"{P}e1", "netns", f"{P}s1", "type", "veth", "peer", f"{P}e2", "netns", f"{P}s2")
        for i, (server, addr) in enumerate(SERVERS.items(), 1):
            sh("ip", "-n", f"{P}s{i}", "addr", "add", f"{addr}/24", "dev", f"{P}e{i}")
            sh("ip", "-n", f"{P}s{i}", "link", "set", f"{P}e{i}", "up")
            sh("ip", "-n", f"{P}s{i}", "link", "set", "lo", "up")
            cfg = Path(rundir) / f"{server}.json"
            cfg.write_text(json.dumps(config_for(server)))
        ipc.update_vm_namespaces(rundir, {VMS[s][1]: {"vm": VMS[s][0], "netns": f"/run/netns/{P}{VMS[s][0]}"}
                                          for s in SERVERS})
        for i, server in enumerate(SERVERS, 1):
            procs[f"fwd{i}"] = Proc(rundir, f"{P}s{i}", "vrouter.processes.forwarder", "--rundir", rundir,
                                    "--server", server)
            procs[f"agent{i}"] = Proc(rundir, f"{P}s{i}", "vrouter.processes.agent", "--rundir", rundir,
                                      "--server", server, "--config", str(Path(rundir) / f"{server}.json"))
        wait_vifs_up(rundir)
        yield {"rundir": rundir, "procs": procs}
    finally:
        for proc in procs.values():
            proc.stop()
        for ns in namespaces:
            sh("ip", "netns", "del", ns, check=False)


def wait_vifs_up(rundir, timeout=15):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if all(v["state"] == "up" for s in SERVERS for v in introspect.query(rundir, s, "vifs")) and all(
                    introspect.query(rundir, s, "vifs") for s in SERVERS):
                return
        except introspect.IntrospectError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"VM interfaces not up; logs in {rundir}")


def vm(name, *cmd, check=True, timeout=20):
    return subprocess.run(["ip", "netns", "exec", f"{P}{name}", *cmd], capture_output=True, text=True,
                          check=check, timeout=timeout)


def test_ping_across_servers_and_two_slow_path_calls_per_flow(bed):
    rd = bed["rundir"]
    for s in SERVERS:
        introspect.query(rd, s, "reset")
    r = vm("vm1", "ping", "-c", "3", "-i", "0.2", "-W", "2", "192.168.1.12", check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    # proactive: the echo request is punted at each vrouter once; the reply hits installed reverse entries
    decisions = [introspect.query(rd, s, "stats")["agent"].get("decisions", 0) for s in SERVERS]
    assert decisions == [1, 1]
    flows = introspect.query(rd, "srv1", "flows")
    assert {f["role"] for f in flows} == {"forward", "reverse"}
    text = tables.format_flows(flows)
    assert "192.168.1.11" in text and "<=>" in text


def test_tcp_across_servers(bed):
    server = subprocess.Popen(
        ["ip", "netns", "exec", f"{P}vm2", sys.executable, "-c",
         "import socket;s=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1);"
         "s.bind(('0.0.0.0',5001));s.listen();c,_=s.accept();d=b''\n"
         "while len(d)<200000:\n d+=c.recv(65536)\n"
         "c.sendall(b'%d'%len(d));c.close()"], stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(0.5)
        r = vm("vm1", sys.executable, "-c",
               "import socket;c=socket.create_connection(('192.168.1.12',5001),timeout=10);"
               "c.sendall(b'x'*200000);print(c.recv(100).decode())")
        assert r.stdout.strip() == "200000"
    finally:
        server.kill()
        server.wait()


def test_forwarder_restart_reattaches_the_persistent_tap(bed):
    rd, procs = bed["rundir"], bed["procs"]
    procs["fwd1"].p.kill()
    procs["fwd1"].p.wait()
    # the VM keeps its interface and address while its forwarder is gone
    assert "192.168.1.11/24" in vm("vm1", "ip", "-br", "addr").stdout
    procs["fwd1"] = Proc(rd, f"{P}s1", "vrouter.processes.forwarder", "--rundir", rd, "--server", "srv1")
    wait_vifs_up(rd)
    r = vm("vm1", "ping", "-c", "2", "-i", "0.2", "-W", "2", "192.168.1.12", check=False)
    assert r.returncode == 0, r.stdout + r.stderr


def test_introspection_tables(bed):
    rd = bed["rundir"]
    routes = introspect.query(rd, "srv1", "routes", vrf="red")
    prefixes = {r["prefix"] for r in routes["routes"]}
    assert {"192.168.1.11/32", "192.168.1.12/32", "192.168.1.1/32"} <= prefixes
    assert "LP" in tables.format_routes(routes)
    nhs = introspect.query(rd, "srv1", "nexthops")
    assert {n["type"] for n in nhs} == {"vif", "tunnel", "receive"}
    drops = introspect.query(rd, "srv1", "dropstats")
    assert "invalid_source" in drops
    with pytest.raises(introspect.IntrospectError, match="no routing instance 'blue'"):
        introspect.query(rd, "srv1", "routes", vrf="blue")
