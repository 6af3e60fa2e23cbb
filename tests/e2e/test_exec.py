"""`testbed exec` as a user runs it, on a testbed brought up by `testbed up`: the command runs in the
host's network namespace as a child of `testbed exec` (no daemon round trip, so no timeout), its
output streams, SIGINT (sent to it, or Ctrl-C on a terminal) ends it and nothing of it is left in
the host, its exit status is returned, servers and VMs (also one added at run time) are hosts, and
misuse is a one-line error. Topology: tests/e2e/topologies/overlay.yaml."""
import fcntl
import os
import select
import signal
import subprocess
import sys
import termios
import time
import uuid
from pathlib import Path

import psutil
import pytest

from testbed import REPO, namespaces
from testbed.rundir import RunDir

pytestmark = pytest.mark.e2e

TOPOLOGY = Path(__file__).parent / "topologies" / "overlay.yaml"
SLEEPER = "echo started; sleep 600; echo not reached"


def run_cli(*args, timeout=60):
    return subprocess.run([sys.executable, "-m", "testbed.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, stdin=subprocess.DEVNULL)


def cli_argv(*args):
    return [sys.executable, "-m", "testbed.cli", *args]


def one_line_error(r, code, text):
    assert r.returncode == code, r.stdout + r.stderr
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("error: ") and text in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


class Bed:
    def __init__(self, run_root, prefix):
        self.prefix, self.run_root = prefix, run_root
        self.opts = ["--prefix", prefix, "--run-root", str(run_root)]
        self.rundir = RunDir(run_root, prefix)

    def exec(self, host, *cmd, **kw):
        return run_cli("exec", *self.opts, host, *cmd, **kw)

    def in_namespace(self, host) -> set[int]:
        """PIDs of the processes in `host`'s network namespace now."""
        ident = namespaces.identity(namespaces.by_host(self.rundir)[host])
        return {p.pid for p in namespaces.processes_in({ident})}


def bring_up(run_root, prefix, topology=TOPOLOGY) -> Bed:
    bed = Bed(run_root, prefix)
    r = run_cli("up", str(topology), *bed.opts, timeout=180)
    assert r.returncode == 0, r.stderr
    return bed


@pytest.fixture(scope="module")
def bed(run_root):
    b = bring_up(run_root, "hx" + uuid.uuid4().hex[:4])
    yield b
    r = run_cli("down", *b.opts, timeout=180)
    assert r.returncode == 0, r.stderr


def test_servers_and_vms_run_ping_ip_and_iperf3_in_their_own_namespace(bed):
    r = bed.exec("srv1", "ping", "-n", "-c1", "-W2", "10.0.2.1")
    assert r.returncode == 0 and " 0% packet loss" in r.stdout, r.stdout + r.stderr
    r = bed.exec("red1", "ip -o -4 addr show")  # the VM's view: its TAP, not the server's interface
    assert r.returncode == 0 and "192.168.1.11/24" in r.stdout and "10.0.1.1" not in r.stdout, r.stdout
    r = bed.exec("red1", "ping", "-n", "-c3", "-i0.2", "-W2", "192.168.1.12")  # red2, on srv3
    assert r.returncode == 0 and " 0% packet loss" in r.stdout, r.stdout + r.stderr
    port = str(5201 + os.getpid() % 500)
    r = bed.exec("srv3", f"iperf3 -s -1 -D -p {port}")
    assert r.returncode == 0, r.stderr
    r = bed.exec("srv1", f"iperf3 -c 10.0.2.1 -p {port} -t 1 -f m")
    assert r.returncode == 0 and "receiver" in r.stdout, r.stdout + r.stderr


def test_exit_status_is_the_commands(bed):
    assert bed.exec("srv2", "exit 3").returncode == 3
    r = bed.exec("srv2", "no-such-command-xyz", "--flag")
    assert r.returncode == 127 and "no-such-command-xyz: command not found" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_no_daemon_round_trip_so_no_timeout(bed):
    """With the daemon stopped (SIGSTOP) nothing could answer a request: exec still runs, so the
    daemon's socket timeout can never end a command."""
    daemon = psutil.Process(bed.rundir.read_state()["owner"]["pid"])
    daemon.suspend()
    try:
        r = bed.exec("srv1", "echo", "ok", timeout=30)
    finally:
        daemon.resume()
    assert r.returncode == 0 and r.stdout == "ok\n", r.stdout + r.stderr


def assert_nothing_left(bed, host, before: set[int]):
    left = bed.in_namespace(host) - before
    procs = []
    for pid in left:
        try:
            procs.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            pass
    gone, alive = psutil.wait_procs(procs, timeout=5)
    assert [p for p in alive if p.status() != psutil.STATUS_ZOMBIE] == []


def sleeping_in(bed, host, before: set[int]) -> bool:
    """Wait until the command's `sleep` runs in `host` (its shell prints "started" before forking it)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        names = []
        for pid in bed.in_namespace(host) - before:
            try:
                names.append(psutil.Process(pid).name())
            except psutil.NoSuchProcess:
                pass
        if "sleep" in names:
            return True
        time.sleep(0.05)
    return False


def test_output_streams_and_sigint_ends_the_command_in_the_host(bed):
    before = bed.in_namespace("srv2")
    p = subprocess.Popen(cli_argv("exec", *bed.opts, "srv2", SLEEPER), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, cwd=REPO, start_new_session=True)
    try:
        assert p.stdout.readline() == "started\n"  # while the command still sleeps
        assert p.poll() is None and sleeping_in(bed, "srv2", before)
        os.kill(p.pid, signal.SIGINT)
        assert p.wait(30) == 130
        assert p.stdout.read() == "" and p.stderr.read() == ""
    finally:
        p.kill()
        p.wait()
    assert_nothing_left(bed, "srv2", before)


def read_until(master: int, want: bytes) -> bytes:
    seen = b""
    while want not in seen:
        ready, _, _ = select.select([master], [], [], 30)
        if not ready:
            break
        try:
            chunk = os.read(master, 4096)
        except OSError:  # EIO: nothing has the terminal open any more
            break
        if not chunk:
            break
        seen += chunk
    return seen


def test_ctrl_c_on_a_terminal_ends_the_command_in_a_vm(bed):
    before = bed.in_namespace("blue1")
    master, slave = os.openpty()
    p = subprocess.Popen(cli_argv("exec", *bed.opts, "blue1", SLEEPER), stdin=slave, stdout=slave, stderr=slave,
                         cwd=REPO, start_new_session=True, preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0))
    os.close(slave)
    try:
        assert b"started" in read_until(master, b"started")
        assert sleeping_in(bed, "blue1", before)
        os.write(master, b"\x03")  # Ctrl-C: SIGINT to the terminal's foreground process group
        assert p.wait(30) == 130
        assert b"Traceback" not in read_until(master, b"Traceback")
    finally:
        p.kill()
        p.wait()
        os.close(master)
    assert_nothing_left(bed, "blue1", before)


def test_misuse_is_a_one_line_error(bed):
    one_line_error(bed.exec("srv9", "ls"), 2,
                   f"unknown host 'srv9' in testbed '{bed.prefix}': servers srv1 srv2 srv3; "
                   f"VMs blue1 blue2 red1 red2 red3")
    one_line_error(bed.exec("srv1"), 2, "give a command to run")
    other = ["--prefix", "hy" + uuid.uuid4().hex[:4], "--run-root", str(bed.run_root)]
    one_line_error(run_cli("exec", *other, "srv1", "ls"), 1, "is running")
    # Options after HOST are the command's: here --prefix is not ours, so the default one (not
    # running under this run root) is asked for, with a hint.
    one_line_error(run_cli("exec", "--run-root", str(bed.run_root), "srv1", "echo", "--prefix", bed.prefix), 1,
                   "options go before HOST")
    r = bed.exec("srv1", "echo", "--prefix", "x")
    assert r.returncode == 0 and r.stdout == "--prefix x\n"


def test_a_vm_added_at_run_time_is_a_host(bed):
    r = run_cli("net", "add-vm", "red9", "--network", "red", "--server", "srv2", "--address", "192.168.1.19",
                *bed.opts)
    assert r.returncode == 0, r.stderr
    try:
        r = bed.exec("red9", "ip -o -4 addr show")
        assert r.returncode == 0 and "192.168.1.19/24" in r.stdout, r.stdout + r.stderr
    finally:
        assert run_cli("net", "rm-vm", "red9", *bed.opts).returncode == 0


def test_the_testbed_going_down_mid_command_ends_it_without_a_traceback(run_root, tmp_path):
    topo = tmp_path / "tiny.yaml"
    r = run_cli("gen", "--spines", "1", "--leaves", "1", "--servers-per-leaf", "1", "-o", str(topo))
    assert r.returncode == 0, r.stderr
    bed = bring_up(run_root, "hy" + uuid.uuid4().hex[:4], topo)
    p = subprocess.Popen(cli_argv("exec", *bed.opts, "srv1", SLEEPER), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, cwd=REPO, start_new_session=True)
    try:
        assert p.stdout.readline() == "started\n"
        down = run_cli("down", *bed.opts, timeout=180)
        assert down.returncode == 0, down.stderr
        assert p.wait(30) == 128 + signal.SIGTERM  # cleanup ended what ran in the testbed's namespaces
        err = p.stderr.read()
        assert err == f"error: testbed {bed.prefix!r} went down while the command ran (its status: 143)\n", err
    finally:
        p.kill()
        p.wait()
        run_cli("clean", "--prefix", bed.prefix, "--run-root", str(run_root))
