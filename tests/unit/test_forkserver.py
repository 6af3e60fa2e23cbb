"""The fork server (testbed/forkserver.py): a vrouter process forked from it behaves as `python -m`
would (argv, log, exit status, signals), the supervisor uses it and restarts what it forked, and it
ends when the testbed lets go of it (no root: root namespace processes only)."""
import os
import signal
import sys

import pytest

from process_helpers import wait_for
from testbed.forkserver import Forked, ForkServer, eligible
from testbed.rundir import RunDir, live_process
from testbed.supervisor import Supervisor

AGENT = "vrouter.processes.agent"


@pytest.fixture
def server(tmp_path):
    with open(tmp_path / "fs.log", "ab", buffering=0) as log:
        fs = ForkServer(log)
        yield fs
        fs.close()


def test_a_forked_module_runs_as_python_dash_m_would(server, tmp_path):
    with open(tmp_path / "a.log", "ab", buffering=0) as log:
        helped = server.start("a", AGENT, ["--help"], log)
        assert helped.wait(10) == 0
        refused = server.start("b", AGENT, ["--no-such-option"], log)
        assert refused.wait(10) == 2  # argparse's exit status
    text = (tmp_path / "a.log").read_text()
    assert "static vrouter config file" in text        # --help, on stdout
    assert "error: the following arguments are required: --rundir, --server" in text   # stderr
    assert "RuntimeWarning" not in text   # runpy's warning of a module run twice


def test_a_signal_ends_a_forked_child_with_its_status(server, tmp_path):
    (tmp_path / "rd").mkdir()
    with open(tmp_path / "a.log", "ab", buffering=0) as log:
        child = server.start("vr-srv1-agent", AGENT, ["--rundir", tmp_path / "rd", "--server", "srv1",
                                                      "--vnc", tmp_path / "none.sock"], log)
    assert child.poll() is None
    assert wait_for(lambda: open(f"/proc/{child.pid}/comm").read().strip() == "vr-srv1-agent")
    os.kill(child.pid, signal.SIGKILL)
    assert child.wait(10) == -signal.SIGKILL


def test_closing_ends_the_fork_server_and_its_children(tmp_path):
    (tmp_path / "rd").mkdir()
    with open(tmp_path / "fs.log", "ab", buffering=0) as log:
        fs = ForkServer(log)
        child = fs.start("x", AGENT, ["--rundir", tmp_path / "rd", "--server", "s", "--vnc", tmp_path / "n"], log)
        fs.close()
    assert fs.proc.returncode == 0
    assert child.wait(10) == -signal.SIGTERM
    assert wait_for(lambda: live_process({"pid": child.pid, "create_time": None}) is None)


def test_only_this_python_running_a_preloaded_module_is_forked():
    assert eligible([sys.executable, "-m", AGENT, "--server", "s"]) == AGENT
    assert eligible([sys.executable, "-m", "controllers.launcher"]) is None
    assert eligible(["/usr/bin/python3.9", "-m", AGENT]) is None
    assert eligible(["sleep", "1"]) is None


def test_the_supervisor_forks_vrouter_processes_and_restarts_them(tmp_path):
    rd = RunDir(tmp_path, "ut")
    rd.create()
    sup = Supervisor(rd)
    argv = [sys.executable, "-m", AGENT, "--rundir", rd.path, "--server", "s", "--vnc", tmp_path / "none.sock"]
    try:
        first = sup.start("vr-s-agent", argv)
        other = sup.start("sleeper", ["sleep", "60"])
        assert isinstance(first, Forked) and not isinstance(other, Forked)
        records = {r["name"]: r for r in rd.pid_records()}
        assert records["vr-s-agent"]["pid"] == first.pid and "forkserver" in records
        assert wait_for(lambda: "controller not reachable" in rd.log("vr-s-agent").read_text())
        os.kill(first.pid, signal.SIGKILL)
        assert wait_for(lambda: sup.pid("vr-s-agent") not in (None, first.pid))
        assert isinstance(sup.children["vr-s-agent"].popen, Forked)
        second = sup.pid("vr-s-agent")
    finally:
        sup.stop_all()
    assert rd.pid_records() == []
    assert live_process({"pid": second, "create_time": None}) is None
