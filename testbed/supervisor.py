"""Process supervision for a testbed run: start, log, restart with back-off, stop.

`Supervisor(rundir).start(name, argv, node=host)` runs argv inside a Mininet host's namespaces
(node=None: in the root namespace, e.g. the controller), logs to `<rundir>/logs/<name>.log` and
records the PID in `<rundir>/pids/<name>.json` so `testbed clean` can find it after a crash.
A process that exits on its own is restarted after 0.05, 0.1, 0.2 ... 10 s; the back-off resets once
it has run for 30 s. The first restart is all but immediate because a crashed forwarder is an
outage for every VM of its server (issue 12: with 0.5 s and a 0.2 s poll, a killed forwarder cost
1.0 s of ping, against the 1 s target); a program that keeps crashing is still slowed to one start
per 10 s within seven restarts.
`netns_pid=PID` runs argv in the network namespace of that process (a server's), nothing else of it.
A vrouter process (`python -m` one of testbed.forkserver.PRELOAD) is forked by the testbed's fork
server instead of started afresh: 256 of them on 2 cores would otherwise spend most of a large
testbed's bring-up importing the same modules (testbed/forkserver.py).
"""
from __future__ import annotations

import os
import subprocess
import threading
import time
from dataclasses import dataclass, field

from testbed import proctree
from testbed.forkserver import Forked, ForkServer, ForkServerError, eligible
from testbed.rundir import RunDir

BACKOFF_START = 0.05
BACKOFF_MAX = 10.0
STABLE_AFTER = 30.0
POLL = 0.05  # how soon an exit is seen
STOP_GRACE = 5.0  # a stopped program's seconds between SIGTERM and SIGKILL


@dataclass
class Child:
    name: str
    argv: list
    node: object
    env: dict | None
    restart: bool
    cwd: str | None
    netns_pid: int | None = None
    popen: subprocess.Popen | Forked | None = None
    started: float = 0.0
    create_time: float | None = None  # with the PID, what identifies the process
    restarts: int = 0
    backoff: float = BACKOFF_START
    next_start: float | None = None
    stopping: bool = False
    log_fh: object = field(default=None, repr=False)


class Supervisor:
    def __init__(self, rundir: RunDir):
        self.rundir = rundir
        self.children: dict[str, Child] = {}
        self.forkserver: ForkServer | None = None
        self._forkserver_log = None
        self.lock = threading.RLock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="supervisor", daemon=True)
        self._thread.start()

    def _event(self, msg: str) -> None:
        with open(self.rundir.log("supervisor"), "a") as f:
            f.write(f"{time.strftime('%H:%M:%S')} {msg}\n")

    def start(self, name: str, argv: list, node=None, env: dict | None = None, restart: bool = True,
              cwd: str | None = None, netns_pid: int | None = None) -> subprocess.Popen | Forked:
        """Run argv (in Mininet host `node`, in the network namespace of `netns_pid`, or in the root
        namespace if neither) under supervision."""
        with self.lock:
            if name in self.children and not self.children[name].stopping:
                raise ValueError(f"a process named {name!r} is already supervised")
            child = Child(name, [str(a) for a in argv], node, env, restart, cwd, netns_pid)
            self.children[name] = child
            self._spawn(child)
            return child.popen

    def _forked(self, child: Child) -> Forked | None:
        """`child` started by the fork server, or None if it is not a vrouter process or the fork
        server cannot be had (then it starts as any other program)."""
        module = eligible(child.argv) if child.node is None else None
        if module is None:
            return None
        try:
            if self.forkserver is None or not self.forkserver.alive():
                if self._forkserver_log is None:
                    self._forkserver_log = open(self.rundir.log("forkserver"), "ab", buffering=0)
                self.forkserver = ForkServer(self._forkserver_log, cwd=child.cwd)
                self.rundir.record_pid("forkserver", self.forkserver.proc.pid)
                self._event(f"started the fork server pid {self.forkserver.proc.pid}")
            return self.forkserver.start(child.name, module, child.argv[3:], child.log_fh, child.netns_pid,
                                         child.cwd, child.env)
        except (ForkServerError, OSError) as exc:
            self._event(f"{child.name}: {exc}; starting it without the fork server")
            return None

    def _spawn(self, child: Child) -> None:
        if child.log_fh is None:
            child.log_fh = open(self.rundir.log(child.name), "ab", buffering=0)
        forked = self._forked(child)
        if forked is not None:
            self._started(child, forked)
            return
        full_env = None
        if child.env is not None:
            full_env = dict(os.environ)
            full_env.update({k: str(v) for k, v in child.env.items()})
        # Own session: a Ctrl-C in `testbed cli` or a signal to the daemon's group must not reach it.
        kw = dict(stdin=subprocess.DEVNULL, stdout=child.log_fh, stderr=subprocess.STDOUT,
                  env=full_env, cwd=child.cwd, start_new_session=True)
        argv = child.argv
        if child.node is not None:
            # `mnexec -a PID` enters the host's namespaces and execs, keeping the PID we watch.
            # (Mininet's node.popen adds -d, which forks when the child already leads a session.)
            argv = ["mnexec", "-a", str(child.node.pid)] + argv
        elif child.netns_pid is not None:
            # `nsenter --net` enters only that network namespace and execs (same PID). Not the
            # host's mount namespace: named namespaces of VMs added at run time (/run/netns/...)
            # are only visible in the root mount namespace.
            argv = ["nsenter", f"--net=/proc/{child.netns_pid}/ns/net", "--"] + argv
        self._started(child, subprocess.Popen(argv, **kw))

    def _started(self, child: Child, proc: subprocess.Popen | Forked) -> None:
        child.popen = proc
        child.started = time.monotonic()
        child.next_start = None
        child.create_time = self.rundir.record_pid(child.name, child.popen.pid)["create_time"]
        self._event(f"started {child.name} pid {child.popen.pid}: {' '.join(child.argv)}")

    def _watch(self) -> None:
        while not self._stop.wait(POLL):
            with self.lock:
                now = time.monotonic()
                for child in list(self.children.values()):
                    if child.stopping or child.popen is None:
                        continue
                    if child.next_start is not None:
                        if now >= child.next_start:
                            child.restarts += 1
                            self._spawn(child)
                        continue
                    rc = child.popen.poll()
                    if rc is None:
                        if now - child.started > STABLE_AFTER:
                            child.backoff = BACKOFF_START
                        continue
                    if not child.restart:
                        self._event(f"{child.name} pid {child.popen.pid} exited with {rc} (not restarted)")
                        self.rundir.forget_pid(child.name)
                        child.stopping = True
                        continue
                    self._event(f"{child.name} pid {child.popen.pid} exited with {rc}: "
                                f"restarting in {child.backoff:.1f} s")
                    child.next_start = now + child.backoff
                    child.backoff = min(child.backoff * 2, BACKOFF_MAX)

    def _terminate(self, children: list[Child]) -> None:
        """End the children and everything they forked (testbed/proctree.py) in one round of
        signals, then reap them: a testbed of 128 servers stopped its 256 vrouter processes one at a
        time in over a minute."""
        live, procs = [], []
        for child in children:
            p = child.popen
            proc = proctree.find(p.pid, child.create_time) if p is not None and p.poll() is None else None
            if proc is not None:
                live.append(child)
                procs += proctree.tree(proc)
        ended = proctree.terminate(procs, grace=STOP_GRACE)
        for child in live:
            assert child.popen is not None
            try:
                child.popen.wait(STOP_GRACE)
            except subprocess.TimeoutExpired:
                self._event(f"{child.name} pid {child.popen.pid} still running after SIGKILL")
                continue
            self._event(f"{child.name} pid {child.popen.pid} ended")
        if live:
            self._event(f"{ended} process{'es' * (ended != 1)} ended")

    def _halt(self, names: list[str]) -> list[Child]:
        """Mark `names` as stopping (so the watcher leaves them alone) and terminate their processes."""
        with self.lock:
            children = [self.children[name] for name in names]
            for child in children:
                child.stopping = True
        self._terminate(children)
        return children

    def stop(self, name: str) -> None:
        self.stop_many([name])

    def stop_many(self, names: list[str]) -> None:
        """Stop these programs together (unknown names: KeyError, before anything is stopped)."""
        for child in self._halt(list(names)):
            with self.lock:
                if child.log_fh is not None:
                    child.log_fh.close()
                    child.log_fh = None
                self.children.pop(child.name, None)
                self.rundir.forget_pid(child.name)
                self._event(f"stopped {child.name}")

    def restart(self, name: str) -> subprocess.Popen:
        """Stop and start again now (no back-off): e.g. `testbed controller restart`."""
        (child,) = self._halt([name])
        with self.lock:
            child.stopping = False
            child.restarts += 1
            self._spawn(child)
            self._event(f"restarted {name} on request")
            return child.popen

    def pid(self, name: str) -> int | None:
        child = self.children.get(name)
        return child.popen.pid if child and child.popen else None

    def status(self) -> dict:
        with self.lock:
            return {c.name: {"pid": c.popen.pid if c.popen else None,
                             "running": bool(c.popen and c.popen.poll() is None),
                             "restarts": c.restarts, "argv": c.argv}
                    for c in self.children.values()}

    def stop_all(self) -> None:
        with self.lock:
            names = list(self.children)[::-1]
        self.stop_many(names)
        self._stop.set()
        if self.forkserver is not None:
            self.forkserver.close()
            self.forkserver = None
            self.rundir.forget_pid("forkserver")
        if self._forkserver_log is not None:
            self._forkserver_log.close()
            self._forkserver_log = None
