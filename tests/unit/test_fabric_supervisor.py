"""Supervisor: logs, PID records, restart after a crash, stop (root namespace processes, no root)."""
import os
import signal
import sys

from process_helpers import wait_for
from testbed.rundir import RunDir, live_process
from testbed.supervisor import Supervisor


def test_start_log_restart_and_stop(tmp_path):
    rd = RunDir(tmp_path, "ut")
    rd.create()
    sup = Supervisor(rd)
    try:
        p = sup.start("echoer", [sys.executable, "-c", "import time; print('hello', flush=True); time.sleep(60)"],
                      env={"X": 1})
        assert wait_for(lambda: "hello" in rd.log("echoer").read_text())
        rec = {r["name"]: r for r in rd.pid_records()}["echoer"]
        assert rec["pid"] == p.pid and live_process(rec) is not None
        os.kill(p.pid, signal.SIGKILL)
        assert wait_for(lambda: sup.pid("echoer") not in (None, p.pid))
        assert sup.status()["echoer"]["restarts"] == 1
        assert "restarting in" in rd.log("supervisor").read_text()
        new = sup.pid("echoer")
        assert {r["name"]: r for r in rd.pid_records()}["echoer"]["pid"] == new
    finally:
        sup.stop_all()
    assert rd.pid_records() == []
    assert live_process({"pid": new, "create_time": None}) is None  # stop_all waits for it


def test_process_without_restart_is_left_dead(tmp_path):
    rd = RunDir(tmp_path, "ut")
    rd.create()
    sup = Supervisor(rd)
    try:
        sup.start("once", [sys.executable, "-c", "raise SystemExit(3)"], restart=False)
        assert wait_for(lambda: "exited with 3 (not restarted)" in rd.log("supervisor").read_text())
        assert sup.status()["once"]["restarts"] == 0
    finally:
        sup.stop_all()


def test_restart_on_request_replaces_the_process(tmp_path):
    rd = RunDir(tmp_path, "ut")
    rd.create()
    sup = Supervisor(rd)
    try:
        first = sup.start("svc", ["sleep", "60"]).pid
        second = sup.restart("svc").pid
        assert first != second
        assert wait_for(lambda: live_process({"pid": first, "create_time": None}) is None)
    finally:
        sup.stop_all()


def test_live_process_refuses_a_recycled_pid():
    rec = {"pid": os.getpid(), "create_time": 12345.0}
    assert live_process(rec) is None


def test_a_new_run_sets_the_last_runs_records_aside(tmp_path):
    """flows/ and mirror/ of an earlier run with the prefix: kept one run as .previous, never mixed in."""
    rd = RunDir(tmp_path, "sa")
    rd.create()
    (rd.path / "flows").mkdir()
    (rd.path / "flows" / "srv1.jsonl").write_text("old\n")
    (rd.path / "flows.previous").mkdir()
    (rd.path / "flows.previous" / "srv1.jsonl").write_text("older\n")
    rd.set_aside("flows")
    rd.set_aside("mirror")          # absent: nothing to do
    assert not (rd.path / "flows").exists() and not (rd.path / "mirror.previous").exists()
    assert (rd.path / "flows.previous" / "srv1.jsonl").read_text() == "old\n"
