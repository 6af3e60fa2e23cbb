"""`testbed up/status/cli/exec/controller/down/clean` as a user runs them, and scoped cleanup:
after `down`, and after SIGKILL + `clean`, nothing of the testbed remains while an unrelated
OVS bridge and process survive."""
import json
import os
import signal
import subprocess
import sys
import time
import uuid

import psutil
import pytest

from testbed import REPO, cleanup
from testbed.rundir import RunDir, live_process

pytestmark = pytest.mark.e2e


def run_cli(*args, input=None, timeout=180):
    return subprocess.run([sys.executable, "-m", "testbed.cli", *args], capture_output=True, text=True,
                          input=input, timeout=timeout, cwd=REPO)


@pytest.fixture
def bystanders():
    """An OVS bridge and a process that are not the testbed's: cleanup must leave them alone."""
    name = "zz" + uuid.uuid4().hex[:6]
    subprocess.run(["ovs-vsctl", "add-br", name, "--", "set", "bridge", name, "datapath_type=netdev"], check=True)
    proc = subprocess.Popen(["sleep", "600"])
    yield name, proc
    proc.kill()
    proc.wait()
    subprocess.run(["ovs-vsctl", "--if-exists", "del-br", name])


def assert_bystanders_alive(bystanders):
    name, proc = bystanders
    assert name in subprocess.run(["ovs-vsctl", "list-br"], capture_output=True, text=True).stdout.split()
    assert proc.poll() is None


def recorded(rundir):
    return [r for r in rundir.pid_records()]


def assert_nothing_left(prefix, records):
    assert cleanup.bridges(prefix) == []
    assert cleanup.links(prefix) == []
    assert cleanup.netns(prefix) == []
    alive = [r for r in records if live_process(r) is not None]
    assert alive == [], alive


def test_up_status_exec_cli_restart_down(run_root, new_prefix, bystanders):
    prefix = new_prefix("l")
    opts = ["--prefix", prefix, "--run-root", str(run_root)]
    r = run_cli("up", *opts)
    assert r.returncode == 0, r.stderr
    assert f"testbed '{prefix}' up" in r.stdout and str(run_root / prefix) in r.stdout
    rundir = RunDir(run_root, prefix)
    try:
        again = run_cli("up", *opts)
        assert again.returncode == 1 and "already running" in again.stderr

        st = run_cli("status", "--json", *opts)
        assert st.returncode == 0
        (entry,) = json.loads(st.stdout)
        assert entry["running"] and entry["state"] == "up" and len(entry["bridges"]) == 4

        r = run_cli("exec", *opts, "srv1", "ping", "-n", "-c1", "-W2", "10.0.2.2")
        assert r.returncode == 0 and " 0% packet loss" in r.stdout

        # Not pingall: with an overlay in the topology, VM hosts join it and it takes minutes.
        r = run_cli("cli", *opts, input="srv1 ping -n -c1 -W2 10.0.2.1\nsrv3 ip -br addr\nexit\n")
        assert r.returncode == 0 and " 0% packet loss" in r.stdout, r.stdout + r.stderr
        assert "10.0.2.1/16" in r.stdout

        # Controller dies: the daemon's supervisor starts it again; the fabric keeps forwarding.
        ctl = next(x for x in rundir.pid_records() if x["name"] == "controller")
        os.kill(ctl["pid"], signal.SIGKILL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            now = next((x for x in rundir.pid_records() if x["name"] == "controller"), None)
            if now and now["pid"] != ctl["pid"] and live_process(now):
                break
            time.sleep(0.1)
        else:
            pytest.fail("controller was not restarted by the supervisor")
        r = run_cli("controller", "restart", *opts)
        assert r.returncode == 0 and "controller restarted" in r.stdout
        r = run_cli("exec", *opts, "srv4", "ping", "-n", "-c1", "-W2", "10.0.1.1")
        assert " 0% packet loss" in r.stdout
        records = recorded(rundir) + [rundir.read_state()["owner"]]
    finally:
        down = run_cli("down", *opts)
    assert down.returncode == 0, down.stderr
    assert_nothing_left(prefix, records)
    assert_bystanders_alive(bystanders)
    assert run_cli("status", *opts).returncode == 3
    assert run_cli("down", *opts).returncode == 1


def test_sigkill_then_clean_removes_everything(run_root, new_prefix, bystanders):
    prefix = new_prefix("k")
    opts = ["--prefix", prefix, "--run-root", str(run_root)]
    r = run_cli("up", *opts)
    assert r.returncode == 0, r.stderr
    rundir = RunDir(run_root, prefix)
    records = recorded(rundir)
    daemon = rundir.read_state()["owner"]
    assert {x["role"] for x in records} >= {"daemon", "process", "node"}
    os.kill(daemon["pid"], signal.SIGKILL)
    try:
        psutil.Process(daemon["pid"]).wait(10)
    except psutil.NoSuchProcess:
        pass
    # Killed without teardown: switches, links and processes are all still there.
    assert len(cleanup.bridges(prefix)) == 4 and cleanup.links(prefix)
    st = run_cli("status", *opts)
    assert st.returncode == 3 and "(dead)" in st.stdout

    r = run_cli("clean", "--prefix", prefix, "--run-root", str(run_root))
    assert r.returncode == 0, r.stderr
    assert "deleted 4 OVS bridges" in r.stdout
    assert_nothing_left(prefix, records + [daemon])
    assert not rundir.exists()
    assert_bystanders_alive(bystanders)
    r = run_cli("clean", "--prefix", prefix, "--run-root", str(run_root))
    assert r.returncode == 0 and "nothing to clean" in r.stdout


def test_invalid_topology_is_refused_before_anything_starts(run_root, new_prefix, tmp_path):
    prefix = new_prefix("v")
    bad = tmp_path / "bad.yaml"
    bad.write_text("underlay: 10.0.0.0/16\nswitches: [{name: leaf1, role: leaf}]\n"
                   "servers: [{name: srv1, address: 10.0.1.300}]\nlinks: [[srv1, leaf1]]\n")
    r = run_cli("up", str(bad), "--prefix", prefix, "--run-root", str(run_root))
    assert r.returncode == 2
    assert f"{bad}: servers[0].address: '10.0.1.300' is not an IPv4 address" in r.stderr
    assert "Traceback" not in r.stderr
    assert cleanup.bridges(prefix) == [] and not RunDir(run_root, prefix).exists()
