"""The one way the testbed ends processes: SIGTERM, a grace period, SIGKILL for what remains.

Used by the supervisor (stopping one supervised program and whatever it forked) and by scoped cleanup
(every recorded process of a prefix and their descendants). Processes are named by PID *and* the
start time they were recorded with, so a PID the kernel has reused for another program is never
signalled; never by name. `terminate` takes any set of processes, so callers that find theirs
another way (e.g. every process in the testbed's network namespaces) feed it directly.
"""
from __future__ import annotations

import os
import time
from collections.abc import Iterable

import psutil

from testbed.rundir import live_process

GRACE = 2.0  # seconds between SIGTERM and SIGKILL
POLL = 0.05


def tree(proc: psutil.Process) -> list[psutil.Process]:
    """`proc` and all its descendants (found now: what they fork later is not included)."""
    try:
        return [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return [proc]


def find(pid: int, create_time: float | None) -> psutil.Process | None:
    """The process `pid` if it still runs and started at `create_time` (None: any start time)."""
    return live_process({"pid": pid, "create_time": create_time})


def _gone(proc: psutil.Process) -> bool:
    # A zombie has ended: only its parent's wait() (or init) can remove it, signals do nothing.
    try:
        return not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    except psutil.Error:
        return True


def _signal_all(procs: list[psutil.Process], kill: bool) -> None:
    for proc in procs:
        try:
            # psutil refuses to signal a PID whose start time changed: a reused PID is never hit.
            if kill:
                proc.kill()
            else:
                proc.terminate()
                # A stopped process (SIGSTOP: `testbed fault ... pause`) keeps SIGTERM pending until
                # it runs again; SIGCONT lets it act on it now instead of waiting out the grace period.
                proc.resume()
        except psutil.Error:
            pass


def _wait(procs: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Wait up to `timeout` s for `procs` to end; returns those still running."""
    deadline = time.monotonic() + timeout
    alive = [p for p in procs if not _gone(p)]
    while alive and time.monotonic() < deadline:
        time.sleep(POLL)
        alive = [p for p in alive if not _gone(p)]
    return alive


def terminate(procs: Iterable[psutil.Process], grace: float = GRACE) -> int:
    """SIGTERM every process in `procs`, wait up to `grace` s, SIGKILL those left, wait for them.

    Returns how many of the processes that were running have ended. The calling process is never
    signalled, whatever `procs` holds."""
    unique: dict[int, psutil.Process] = {}
    for proc in procs:
        if proc.pid != os.getpid() and not _gone(proc):
            unique.setdefault(proc.pid, proc)
    targets = list(unique.values())
    _signal_all(targets, kill=False)
    stubborn = _wait(targets, grace)
    if stubborn:
        _signal_all(stubborn, kill=True)
        stubborn = _wait(stubborn, grace)
    return len(targets) - len(stubborn)


def terminate_tree(pid: int, create_time: float | None, grace: float = GRACE) -> int:
    """End process `pid` (if it is still the one that started at `create_time`) and its descendants;
    returns how many ended (0 if the process is gone or the PID now belongs to another process)."""
    proc = find(pid, create_time)
    return terminate(tree(proc), grace) if proc is not None else 0
