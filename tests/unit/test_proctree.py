"""The process-tree terminator (testbed/proctree.py) on real processes: a python child with `sleep`
children, a same-named unrelated `sleep` that must survive, a recycled identity, a child that
ignores SIGTERM."""
import subprocess
import sys
import time

import psutil
import pytest

from testbed import proctree

# A parent with two sleep children; prints their PIDs once both run.
PARENT = ("import subprocess, sys, time\n"
          "kids = [subprocess.Popen(['sleep', '600']) for _ in range(2)]\n"
          "print(' '.join(str(k.pid) for k in kids), flush=True)\n"
          "time.sleep(600)\n")
STUBBORN = ("import signal, time\n"
            "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
            "print('ready', flush=True)\n"
            "time.sleep(600)\n")


@pytest.fixture
def family():
    """(parent Popen, its sleep children's PIDs, an unrelated `sleep` Popen)."""
    bystander = subprocess.Popen(["sleep", "600"])
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True)
    kids = [int(x) for x in parent.stdout.readline().split()]
    yield parent, kids, bystander
    for p in (parent, bystander):
        p.kill()
        p.wait()
    for pid in kids:
        try:
            psutil.Process(pid).kill()
        except psutil.Error:
            pass


def gone(pid):
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_tree_ends_with_sigterm_and_leaves_a_same_named_process_alone(family):
    parent, kids, bystander = family
    create_time = psutil.Process(parent.pid).create_time()
    t0 = time.monotonic()
    assert proctree.terminate_tree(parent.pid, create_time, grace=5.0) == 3
    assert time.monotonic() - t0 < 4.0  # SIGTERM sufficed: no wait for the grace period
    assert parent.wait(5) == -15
    assert all(gone(pid) for pid in kids)
    assert bystander.poll() is None and psutil.Process(bystander.pid).name() == "sleep"


def test_a_reused_pid_is_never_signalled(family):
    parent, kids, _bystander = family
    wrong = psutil.Process(parent.pid).create_time() - 100.0  # as if recorded for an earlier process
    assert proctree.terminate_tree(parent.pid, wrong) == 0
    assert parent.poll() is None and not any(gone(pid) for pid in kids)


def test_what_ignores_sigterm_is_killed_after_the_grace_period():
    stubborn = subprocess.Popen([sys.executable, "-c", STUBBORN], stdout=subprocess.PIPE, text=True)
    try:
        assert stubborn.stdout.readline().strip() == "ready"
        t0 = time.monotonic()
        assert proctree.terminate([psutil.Process(stubborn.pid)], grace=0.5) == 1
        assert time.monotonic() - t0 >= 0.5
        assert stubborn.wait(5) == -9
    finally:
        stubborn.kill()
        stubborn.wait()


def test_a_set_of_processes_is_ended_once_each_and_never_the_caller():
    procs = [subprocess.Popen(["sleep", "600"]) for _ in range(2)]
    try:
        handles = [psutil.Process(p.pid) for p in procs]
        assert proctree.terminate(handles + handles + [psutil.Process()], grace=2.0) == 2
        assert [p.wait(5) for p in procs] == [-15, -15]
        assert proctree.terminate(handles) == 0  # already gone: nothing more to end
    finally:
        for p in procs:
            p.kill()
            p.wait()


def test_a_stopped_process_ends_by_its_sigterm_not_by_sigkill():
    # A process paused by a fault (SIGSTOP) must still stop cleanly: SIGTERM stays pending while it
    # is stopped, so without a SIGCONT it would only die by SIGKILL after the grace period.
    stopped = subprocess.Popen(["sleep", "600"])
    try:
        proc = psutil.Process(stopped.pid)
        proc.suspend()
        deadline = time.monotonic() + 5
        while proc.status() != psutil.STATUS_STOPPED and time.monotonic() < deadline:
            time.sleep(0.01)  # the signal is delivered asynchronously
        assert proc.status() == psutil.STATUS_STOPPED
        assert proctree.terminate([proc], grace=30.0) == 1
        assert stopped.wait(5) == -15
    finally:
        stopped.kill()
        stopped.wait()
