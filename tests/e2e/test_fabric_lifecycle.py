"""`testbed up/status/cli/exec/controller/down/clean` as a user runs them, and scoped cleanup:
after `down`, and after SIGKILL + `clean`, nothing of the testbed remains (daemons started inside a
VM or a server included: iperf3 -D, a double-forked setsid process) while an unrelated OVS bridge
and the same daemons started in the root namespace survive."""
import json
import os
import shlex
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


# Double fork + setsid, as daemons do: the survivor is no descendant of anything the testbed
# recorded. It writes its PID where argv[1] says, then waits.
DAEMONIZE = ("import os, sys, time; os.fork() and os._exit(0); os.setsid(); os.fork() and os._exit(0); "
             "open(sys.argv[1], 'w').write(str(os.getpid())); time.sleep(600)")


IPERF_PORT = 5399 + os.getpid() % 500  # the root-namespace twin must find its port free


def daemon_commands(pidfile_dir, tag: str) -> dict:
    """Shell commands starting an iperf3 daemon and a double-forked Python daemon; {kind: (cmd, pidfile)}."""
    iperf_pid, py_pid = pidfile_dir / f"iperf3-{tag}.pid", pidfile_dir / f"daemon-{tag}.pid"
    return {"iperf3": (f"iperf3 -s -D -p {IPERF_PORT} -I {iperf_pid}", iperf_pid),
            "daemon": (f"{sys.executable} -c {shlex.quote(DAEMONIZE)} {py_pid}", py_pid)}


def read_pid(pidfile, timeout=10.0) -> psutil.Process:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            return psutil.Process(int(pidfile.read_text().strip()))
        except (OSError, ValueError):
            time.sleep(0.05)
    raise AssertionError(f"{pidfile} was not written")


def start_daemons_in(opts, pidfile_dir, host: str) -> list[psutil.Process]:
    """Start both daemons in testbed host `host` with `testbed exec`; returns them, running."""
    procs = []
    for cmd, pidfile in daemon_commands(pidfile_dir, host).values():
        # One shell command line, as users type it. Its output goes nowhere: `testbed exec` hands
        # the command our stdout, and a daemon that keeps it would hold run_cli until it exits.
        r = run_cli("exec", *opts, host, f"{cmd} </dev/null >/dev/null 2>&1")
        assert r.returncode == 0, r.stdout + r.stderr
        procs.append(read_pid(pidfile))
    own = os.stat("/proc/self/ns/net").st_ino
    for p in procs:
        assert p.is_running() and os.stat(f"/proc/{p.pid}/ns/net").st_ino != own, p
    return procs


def assert_ended(procs):
    for p in procs:
        assert not p.is_running() or p.status() == psutil.STATUS_ZOMBIE, f"{p} survived the testbed"


@pytest.fixture
def bystanders(tmp_path):
    """An OVS bridge and processes that are not the testbed's (a plain child, and the very daemons
    the tests start in VMs and servers, started in the root namespace): cleanup leaves them alone."""
    name = "zz" + uuid.uuid4().hex[:6]
    subprocess.run(["ovs-vsctl", "add-br", name, "--", "set", "bridge", name, "datapath_type=netdev"], check=True)
    proc = subprocess.Popen(["sleep", "600"])
    twins = []
    try:
        for cmd, pidfile in daemon_commands(tmp_path, "root").values():
            subprocess.run(["sh", "-c", cmd], check=True)
            twins.append(read_pid(pidfile))
        yield name, proc, twins
    finally:
        proc.kill()
        proc.wait()
        for twin in twins:
            try:
                twin.kill()
            except psutil.Error:
                pass
        subprocess.run(["ovs-vsctl", "--if-exists", "del-br", name])


def assert_bystanders_alive(bystanders):
    name, proc, twins = bystanders
    assert name in subprocess.run(["ovs-vsctl", "list-br"], capture_output=True, text=True).stdout.split()
    assert proc.poll() is None
    assert all(t.is_running() for t in twins), twins


def assert_no_namespace_held(run_root):
    mounts = open("/proc/self/mountinfo").read()
    assert str(run_root) not in mounts, [m for m in mounts.splitlines() if str(run_root) in m]


def recorded(rundir):
    return [r for r in rundir.pid_records()]


def assert_nothing_left(prefix, records):
    assert cleanup.bridges(prefix) == []
    assert cleanup.links(prefix) == []
    assert cleanup.netns(prefix) == []
    alive = [r for r in records if live_process(r) is not None]
    assert alive == [], alive


def vrouter_of(opts, server):
    """{process name: pid} of a server's running vrouter, from `testbed status --json`."""
    (entry,) = json.loads(run_cli("status", "--json", *opts).stdout)
    return {p["name"]: p["pid"] for p in entry["processes"] if p["name"].startswith(f"vr-{server}-") and p["alive"]}


def assert_server_restart(opts):
    """`testbed server restart`: the server's neighbour table flushed, its vrouter restarted; it is
    reachable again."""
    r = run_cli("server", "restart", *opts, "srv4")
    assert r.returncode == 0 and r.stdout == "server srv4 restarted\n", r.stdout + r.stderr
    assert "10.0.1.1" not in run_cli("exec", *opts, "srv4", "ip", "neigh", "show").stdout
    vrouter = vrouter_of(opts, "srv4")
    r = run_cli("exec", *opts, "srv1", "ping", "-n", "-c1", "-W2", "10.0.2.2")
    assert " 0% packet loss" in r.stdout
    r = run_cli("exec", *opts, "red1", "ping", "-n", "-c2", "-W2", "192.168.1.14")  # through srv4's vrouter
    assert " 0% packet loss" in r.stdout
    assert vrouter_of(opts, "srv4") == vrouter  # the same processes: they outlived the daemon's request
    r = run_cli("server", "restart", *opts, "nosuch")
    assert r.returncode == 2 and r.stderr == "error: unknown server 'nosuch' (known: srv1, srv2, srv3, srv4)\n"


def test_up_status_exec_cli_restart_down(run_root, new_prefix, bystanders, tmp_path):
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
        assert_server_restart(opts)
        records = recorded(rundir) + [rundir.read_state()["owner"]]
        daemons = start_daemons_in(opts, tmp_path, "red3") + start_daemons_in(opts, tmp_path, "srv1")
    finally:
        down = run_cli("down", *opts)
    assert down.returncode == 0, down.stderr
    assert "ended 4 processes left in its network namespaces" in down.stdout, down.stdout
    assert_ended(daemons)
    assert_nothing_left(prefix, records)
    assert_no_namespace_held(run_root)
    assert_bystanders_alive(bystanders)
    assert run_cli("status", *opts).returncode == 3
    assert run_cli("down", *opts).returncode == 1


def test_sigkill_then_clean_removes_everything(run_root, new_prefix, bystanders, tmp_path):
    prefix = new_prefix("k")
    opts = ["--prefix", prefix, "--run-root", str(run_root)]
    r = run_cli("up", *opts)
    assert r.returncode == 0, r.stderr
    rundir = RunDir(run_root, prefix)
    daemons = start_daemons_in(opts, tmp_path, "blue2") + start_daemons_in(opts, tmp_path, "srv4")
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
    # The node shells are recorded; what runs in the namespaces beyond them is found by identity.
    assert "processes left in the testbed's network namespaces" in r.stdout, r.stdout
    assert_ended(daemons)
    assert_nothing_left(prefix, records + [daemon])
    assert_no_namespace_held(run_root)
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
