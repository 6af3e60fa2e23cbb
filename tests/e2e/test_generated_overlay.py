"""A generated overlay as a researcher gets it: `testbed gen ... --networks 2 --vms-per-server 2`,
`testbed up`, then a VM on srv1 reaches the VMs of its network on the last server (and on its own
server) and none of the other network's, and `testbed down` (a mid-size shape: 8 servers, 32 VMs,
16 vrouter processes; the machine is shared)."""
import subprocess
import sys

import pytest

from testbed import REPO

pytestmark = pytest.mark.e2e

SHAPE = ["--spines", "2", "--leaves", "4", "--servers-per-leaf", "2", "--networks", "2", "--vms-per-server", "2"]
LAST = "srv8"


def run_cli(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "testbed.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


def ping(opts, vm, address):
    r = run_cli("exec", *opts, vm, f"ping -n -c2 -W2 {address}", timeout=60)
    return r.returncode == 0 and " 0% packet loss" in r.stdout


@pytest.fixture(scope="module")
def opts(tmp_path_factory, new_prefix):
    tmp = tmp_path_factory.mktemp("gen")
    topo = tmp / "generated.yaml"
    r = run_cli("gen", *SHAPE, "-o", str(topo))
    assert r.returncode == 0 and "8 servers, 2 virtual networks, 32 VMs" in r.stderr, r.stderr
    opts = ["--prefix", new_prefix("g"), "--run-root", str(tmp / "runs")]
    r = run_cli("up", str(topo), *opts)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "overlay: 32 VMs on 8 vrouters" in r.stderr and "up in" in r.stdout
    try:
        yield opts
    finally:
        r = run_cli("down", *opts)
        assert r.returncode == 0, r.stdout + r.stderr


def test_a_vm_reaches_its_network_on_the_last_server_and_its_own(opts):
    assert ping(opts, "net1-srv1-1", "10.1.8.2")     # net1-srv8-2, under another leaf
    assert ping(opts, "net1-srv1-1", "10.1.1.2")     # net1-srv1-2, the same server
    assert ping(opts, "net2-srv8-1", "10.2.1.1")     # and the other network within itself


def test_no_vm_reaches_the_other_network(opts):
    assert not ping(opts, "net1-srv1-1", "10.2.8.1")  # net2-srv8-1
    assert not ping(opts, "net1-srv1-1", "10.2.1.1")  # net2-srv1-1, on the same server
    assert not ping(opts, "net2-srv1-2", "10.1.8.1")  # net1-srv8-1


def test_the_generated_vms_are_where_their_names_say(opts):
    r = run_cli("exec", *opts, f"net2-{LAST}-2", "ip -br -4 addr show")
    assert r.returncode == 0 and "10.2.8.2/16" in r.stdout, r.stdout + r.stderr
