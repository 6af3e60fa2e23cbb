"""Fault injection on a running testbed, from any process: links down/up, link impairments
(delay, jitter, loss, rate), and the controller's or a vrouter process's pause/resume/kill/restart.

    f = Faults.open("vt")                        # the testbed of prefix vt (any process, root)
    f.link_down("leaf1-spine2"); f.link_up("spine2-leaf1")
    f.impair("srv1-leaf1", delay="10ms", jitter="2ms", loss="1%", rate="100mbit")  # both directions
    f.impair("srv1-leaf1", loss=100, sender="leaf1")     # only what leaf1 sends to srv1
    f.unimpair("srv1-leaf1")
    f.pause("controller"); f.resume("controller")
    f.kill("agent", "srv1", wait=30); f.restart("forwarder", "srv3")
    f.active(); f.clear()

Decisions (which interfaces, which tc commands, what `clear` undoes) are in testbed/fault_logic.py;
this module runs them. Every action, its undo and `clear` append one JSON line to
`<rundir>/faults.jsonl` with `wall` (time.time()) and `monotonic` (time.monotonic(), the machine's
CLOCK_MONOTONIC, comparable across processes) taken just before the action, and `elapsed`; the
active faults are kept in `<rundir>/faults.json` (with the run's start time: a file an earlier run of
the prefix left counts for nothing), both under a lock, so `list` and `clear` work from a new
process. Processes are found only through the supervisor's PID records (`<rundir>/pids/NAME.json`,
PID and start time, as `testbed status` reads them) and signalled with their descendants, never by
name. A paused process is resumed before the testbed is torn down (an on_down hook), so `testbed
down` is not slowed by what a fault left behind.
"""
from __future__ import annotations

import fcntl
import json
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil

from testbed import cleanup, daemon, fabric, namespaces, overlay, proctree, runner
from testbed.fault_logic import (
    FaultError,
    FaultInputError,
    Impairment,
    Link,
    check_process,
    directions,
    impairment,
    is_empty,
    links,
    needs_netem,
    resolve_link,
    server_names,
    summary_lines,
    tc_apply,
    tc_clear,
    undo_plan,
    with_impairment,
    with_link,
    with_paused,
)
from testbed.fault_logic import current as current_state
from testbed.rundir import RunDir, live_process, write_json
from testbed.runner import CONTROLLER, on_down

__all__ = ["Faults", "FaultError", "FaultInputError"]

LOG_FILE = "faults.jsonl"
STATE_FILE = "faults.json"
LOCK_FILE = "faults.lock"
RESTART_TIMEOUT = 30.0  # the supervisor's back-off reaches 10 s, plus the program's start
POLL = 0.05


def process_name(role: str, server: str | None) -> str:
    """The supervisor's name of (role, server) as fault_logic.check_process returns it."""
    if role == "controller":
        return CONTROLLER
    if server is None:
        raise FaultInputError(f"which server's {role}?")
    return overlay.forwarder_name(server) if role == "forwarder" else overlay.agent_name(server)


class Shell:
    """Runs `ip` / `tc` in the root namespace or in a server's, entered through the handle the
    testbed holds on it (`<rundir>/netns/<server>`, testbed/namespaces.py)."""

    def __init__(self, rundir: RunDir):
        self.rundir = rundir

    def run(self, argv: list[str], server: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
        if server is not None:
            handle = namespaces.handles_dir(self.rundir) / server
            if server not in namespaces.handles(self.rundir):
                raise FaultError(f"the network namespace of {server} is not held at {handle}: is the testbed up?")
            argv = ["nsenter", f"--net={handle}", "--", *argv]
        r = subprocess.run(argv, capture_output=True, text=True)
        if check and r.returncode != 0:
            raise FaultError(f"{' '.join(argv)}: {(r.stderr or r.stdout).strip() or f'exit {r.returncode}'}")
        return r


class Faults:
    """Faults of one running testbed. Every public method returns the log record it appended."""

    def __init__(self, rundir: RunDir, restarter: Callable[[str], int] | None = None,
                 shell: Shell | None = None):
        self.rundir = rundir
        self.restarter = restarter
        self.shell = shell or Shell(rundir)
        self._desc: dict | None = None

    # --- finding the testbed ---------------------------------------------------------------
    @classmethod
    def open(cls, prefix: str = "vt", run_root: str | None = None) -> Faults:
        """The running testbed of `prefix` (`testbed up` or in-process); FaultError if none runs."""
        try:
            fabric.check_prefix(prefix)
        except fabric.FabricError as exc:
            raise FaultInputError(str(exc)) from None
        rundir = RunDir(run_root, prefix)
        if not cleanup.is_running(rundir):
            raise FaultError(f"no testbed with prefix {prefix!r} is running (run dirs under {rundir.root}); "
                             f"start one with 'sudo testbed up'")
        return cls(rundir)

    @classmethod
    def for_testbed(cls, tb) -> Faults:
        """For the process that runs `tb` itself (experiments): restarts go straight to its
        supervisor (overlay.restart_process: call them from the main thread)."""
        def restarter(name: str) -> int:
            try:
                return overlay.restart_process(tb, name)
            except overlay.OverlayError as exc:
                raise FaultError(str(exc)) from None
        return cls(tb.rundir, restarter=restarter)

    @property
    def desc(self) -> dict:
        if self._desc is None:
            try:
                self._desc = fabric.read(self.rundir.fabric_file)
            except (OSError, ValueError) as exc:
                raise FaultError(f"no fabric description at {self.rundir.fabric_file}: {exc}") from None
        return self._desc

    @property
    def log_path(self) -> Path:
        return self.rundir.path / LOG_FILE

    @property
    def state_path(self) -> Path:
        return self.rundir.path / STATE_FILE

    def links(self) -> list[str]:
        """The testbed's link names (canonical: fault_logic.links)."""
        return list(links(self.desc))

    def servers(self) -> list[str]:
        return server_names(self.desc)

    # --- state and log ---------------------------------------------------------------------
    def _run_id(self) -> float | None:
        return self.rundir.read_state().get("started")

    @contextmanager
    def _locked(self) -> Iterator[dict]:
        """The recorded state, under an exclusive lock for the whole action."""
        with open(self.rundir.path / LOCK_FILE, "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            yield self._read_state()

    def _read_state(self) -> dict:
        try:
            raw = json.loads(self.state_path.read_text())
        except (OSError, ValueError):
            raw = None
        return current_state(raw, self._run_id())

    def _save(self, state: dict) -> None:
        write_json(self.state_path, state)

    def _log(self, action: str, target: str, t0: tuple[float, float], elapsed: float | None = None,
             **detail) -> dict:
        """Append one record: `wall` and `monotonic` are when the action began, `elapsed` how long
        it took (by default: until now)."""
        wall, mono = t0
        took = time.monotonic() - mono if elapsed is None else elapsed
        rec = {"wall": wall, "monotonic": mono, "elapsed": round(took, 6),
               "action": action, "target": target, "ok": "error" not in detail, "run": self._run_id(), **detail}
        with open(self.log_path, "a") as f:
            f.write(json.dumps(rec) + "\n")
        return rec

    @staticmethod
    def _now() -> tuple[float, float]:
        return time.time(), time.monotonic()

    def events(self) -> list[dict]:
        """Every record of the log, oldest first."""
        try:
            lines = self.log_path.read_text().splitlines()
        except OSError:
            return []
        out = []
        for line in lines:
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    # --- links ------------------------------------------------------------------------------
    def _set_link(self, link: Link, up: bool) -> None:
        for end in link.cut_ends:
            self.shell.run(["ip", "link", "set", "dev", end.intf, "up" if up else "down"])

    def link_down(self, link: str) -> dict:
        """Cut a link: its switch-side interfaces down (fault_logic's docstring says why those)."""
        lk = resolve_link(self.desc, link)
        with self._locked() as state:
            t0 = self._now()
            try:
                self._set_link(lk, up=False)
            except FaultError as exc:
                try:
                    self._set_link(lk, up=True)
                except FaultError:
                    pass
                return self._fail("link-down", lk.name, t0, exc)
            self._save(with_link(state, lk, True, t0[0]))
            return self._log("link-down", lk.name, t0, interfaces=[e.intf for e in lk.cut_ends])

    def link_up(self, link: str) -> dict:
        lk = resolve_link(self.desc, link)
        with self._locked() as state:
            t0 = self._now()
            try:
                self._set_link(lk, up=True)
            except FaultError as exc:
                return self._fail("link-up", lk.name, t0, exc)
            self._save(with_link(state, lk, False, t0[0]))
            return self._log("link-up", lk.name, t0, interfaces=[e.intf for e in lk.cut_ends])

    def link(self, link: str, state: str) -> dict:
        """link(name, "down" | "up")."""
        if state not in ("down", "up"):
            raise FaultInputError(f"link state {state!r}: 'down' or 'up'")
        return self.link_down(link) if state == "down" else self.link_up(link)

    # --- impairments ------------------------------------------------------------------------
    def _apply(self, intf: str, server: str | None, spec: Impairment) -> None:
        self.shell.run(tc_clear(intf), server, check=False)
        try:
            for argv in tc_apply(intf, spec):
                r = self.shell.run(argv, server, check=False)
                if r.returncode != 0:
                    err = (r.stderr or r.stdout).strip()
                    if "netem" in argv and "unknown" in err.lower():
                        raise FaultError("this kernel has no netem qdisc (sch_netem): delay and jitter "
                                         "are not available here; loss and rate work without it")
                    raise FaultError(f"{' '.join(argv)}: {err or f'exit {r.returncode}'}")
        except FaultError:
            self.shell.run(tc_clear(intf), server, check=False)
            raise

    def impair(self, link: str, *, delay: str | float | None = None, jitter: str | float | None = None,
               loss: str | float | None = None, rate: str | float | None = None,
               limit: str | int | None = None, sender: str | None = None) -> dict:
        """Impair a link's traffic, both directions or only what `sender` (one end) sends. Values as
        strings with units ('10ms', '1%', '100mbit') or numbers: delay and jitter in milliseconds,
        loss in percent, rate in bit/s; limit: queue length in packets. Replaces what that direction
        had. Delay and jitter need sch_netem; loss and rate do not."""
        lk = resolve_link(self.desc, link)
        spec = impairment(delay, jitter, loss, rate, limit)
        pairs = directions(lk, sender)
        with self._locked() as state:
            t0 = self._now()
            touched = []
            try:
                for src, _dst in pairs:
                    touched.append(src)
                    self._apply(src.intf, src.server, spec)
            except FaultError as exc:
                # No half-applied impairment: the directions touched are left with none (what they
                # had before went with tc_clear), those not reached keep theirs.
                for src in touched:
                    self.shell.run(tc_clear(src.intf), src.server, check=False)
                    state = with_impairment(state, lk, src.node, None, t0[0])
                self._save(state)
                return self._fail("impair", lk.name, t0, exc, netem=needs_netem(spec))
            self._save(with_impairment(state, lk, sender, spec, t0[0]))
            return self._log("impair", lk.name, t0, spec=spec.to_dict(), summary=str(spec),
                             directions=[f"{s.node}->{d.node}" for s, d in pairs],
                             interfaces=[s.intf for s, _d in pairs])

    def unimpair(self, link: str, *, sender: str | None = None) -> dict:
        """Remove the impairment of both directions (or of `sender`'s)."""
        lk = resolve_link(self.desc, link)
        pairs = directions(lk, sender)
        with self._locked() as state:
            t0 = self._now()
            for src, _dst in pairs:
                self.shell.run(tc_clear(src.intf), src.server, check=False)
            self._save(with_impairment(state, lk, sender, None, t0[0]))
            return self._log("unimpair", lk.name, t0, directions=[f"{s.node}->{d.node}" for s, d in pairs],
                             interfaces=[s.intf for s, _d in pairs])

    # --- processes ----------------------------------------------------------------------------
    def _name(self, role: str, server: str | None) -> str:
        return process_name(*check_process(self.desc, role, server))

    def _record(self, name: str) -> dict | None:
        try:
            return json.loads((self.rundir.pids / f"{name}.json").read_text())
        except (OSError, ValueError):
            return None

    def _live(self, name: str) -> psutil.Process:
        rec = self._record(name)
        proc = live_process(rec) if rec else None
        if proc is None:
            if rec:
                why = "its recorded PID has ended: the supervisor may be restarting it"
            elif name == CONTROLLER:
                why = "no PID record"
            else:
                why = "no PID record: a topology without an overlay has no vrouters"
            raise FaultError(f"{name} is not running in testbed {self.rundir.prefix!r} ({why}; "
                             f"'testbed status --prefix {self.rundir.prefix}')")
        return proc

    def pid(self, role: str, server: str | None = None) -> int | None:
        """The PID the supervisor recorded for this process, if it runs."""
        rec = self._record(self._name(role, server))
        return rec["pid"] if rec and live_process(rec) else None

    def wait_new_pid(self, name: str, old: int, timeout: float = RESTART_TIMEOUT) -> int | None:
        """The PID of `name` once the supervisor has started it again (None after `timeout` s)."""
        deadline = time.monotonic() + timeout
        while True:
            rec = self._record(name)
            if rec and rec.get("pid") != old and live_process(rec) is not None:
                return rec["pid"]
            if time.monotonic() >= deadline:
                return None
            time.sleep(POLL)

    @staticmethod
    def _signal(procs: list[psutil.Process], sig: int) -> list[dict]:
        sent = []
        for p in procs:
            try:
                created = p.create_time()  # before: a SIGKILLed process has none to read
                p.send_signal(sig)  # psutil refuses a PID whose start time changed
                sent.append({"pid": p.pid, "create_time": created})
            except psutil.Error:
                continue
        return sent

    def _resume_recorded(self, state: dict, name: str) -> list[int]:
        resumed = []
        for rec in (state["paused"].get(name) or {}).get("procs", []):
            proc = proctree.find(rec["pid"], rec.get("create_time"))
            if proc is not None and self._signal([proc], signal.SIGCONT):
                resumed.append(rec["pid"])
        return resumed

    def pause(self, role: str, server: str | None = None) -> dict:
        """SIGSTOP the process and its descendants (state T); it stays paused until resume/clear."""
        name = self._name(role, server)
        with self._locked() as state:
            proc = self._live(name)
            t0 = self._now()
            procs = self._signal(proctree.tree(proc), signal.SIGSTOP)
            self._save(with_paused(state, name, procs, t0[0]))
            return self._log("pause", name, t0, pid=proc.pid, pids=[p["pid"] for p in procs])

    def resume(self, role: str, server: str | None = None) -> dict:
        """SIGCONT what pause stopped (and the process's current tree, stopped by whoever)."""
        name = self._name(role, server)
        with self._locked() as state:
            t0 = self._now()
            resumed = self._resume_recorded(state, name)
            rec = self._record(name)
            proc = live_process(rec) if rec else None
            if proc is not None:
                resumed += [p["pid"] for p in self._signal(proctree.tree(proc), signal.SIGCONT)
                            if p["pid"] not in resumed]
            self._save(with_paused(state, name, None, t0[0]))
            return self._log("resume", name, t0, pids=resumed)

    def kill(self, role: str, server: str | None = None, wait: float = 0.0) -> dict:
        """SIGKILL the process and its descendants, as a crash; the supervisor starts it again after
        its back-off (0.05 s, doubling while it keeps dying within 30 s of a start). wait > 0: return
        once the new PID runs (new_pid None if not within `wait` s)."""
        name = self._name(role, server)
        with self._locked() as state:
            proc = self._live(name)
            t0 = self._now()
            killed = self._signal(proctree.tree(proc), signal.SIGKILL)
            self._save(with_paused(state, name, None, t0[0]))
            elapsed = time.monotonic() - t0[1]
        new = self.wait_new_pid(name, proc.pid, wait) if wait > 0 else None
        detail: dict[str, Any] = {"restarted_after": round(time.monotonic() - t0[1], 6)} if new else {}
        return self._log("kill", name, t0, elapsed=elapsed, pid=proc.pid, pids=[p["pid"] for p in killed],
                         new_pid=new, **detail)

    def restart(self, role: str, server: str | None = None, timeout: float = RESTART_TIMEOUT) -> dict:
        """A clean restart, returning once the new process is ready: through the daemon for a
        testbed of `testbed up` (the supervisor restarts it at once and waits for the controller
        to listen / the forwarder to serve its VMs); through `restarter` (Faults.for_testbed); else
        SIGTERM, and the supervisor starts it again after its back-off."""
        name = self._name(role, server)
        with self._locked() as state:
            proc = self._live(name)
            t0 = self._now()
            self._resume_recorded(state, name)  # a stopped process would not act on SIGTERM
            self._save(with_paused(state, name, None, t0[0]))
        try:
            new, via = self._restart(name, proc, timeout)
        except FaultError as exc:
            return self._fail("restart", name, t0, exc, pid=proc.pid)
        return self._log("restart", name, t0, pid=proc.pid, new_pid=new, via=via)

    def _restart(self, name: str, proc: psutil.Process, timeout: float) -> tuple[int, str]:
        if self.restarter is not None:
            return self.restarter(name), "supervisor"
        state = self.rundir.read_state()
        if state.get("mode") == "daemon" and self.rundir.control_socket.exists():
            try:
                reply = daemon.request(self.rundir, "restart", timeout=timeout + 10, name=name)
            except (OSError, ValueError) as exc:
                raise FaultError(f"the testbed's daemon did not answer: {exc}") from None
            if not reply.get("ok"):
                raise FaultError(reply.get("error", "restart failed"))
            return reply["pid"], "daemon"
        self._signal(proctree.tree(proc), signal.SIGTERM)
        self._signal(proctree.tree(proc), signal.SIGCONT)
        new = self.wait_new_pid(name, proc.pid, timeout)
        if new is None:
            raise FaultError(f"{name} not started again within {timeout:.0f} s")
        if name == CONTROLLER and state.get("ofp_port"):
            _wait_listening(int(state["ofp_port"]), time.monotonic() + timeout)
        return new, "sigterm"

    def _fail(self, action: str, target: str, t0: tuple[float, float], exc: FaultError, **detail) -> dict:
        """Log a failed action, then raise its error."""
        self._log(action, target, t0, error=str(exc), **detail)
        raise exc

    # --- everything ---------------------------------------------------------------------------
    def active(self) -> dict:
        """The active faults: {"links": {...}, "impairments": {...}, "paused": {...}} as recorded
        (fault_logic's state), paused processes that have ended meanwhile left out."""
        with self._locked() as state:
            for name, rec in list(state["paused"].items()):
                alive = [p for p in rec["procs"] if proctree.find(p["pid"], p.get("create_time"))]
                if not alive:
                    del state["paused"][name]
            return state

    def summary(self) -> list[str]:
        return summary_lines(self.active())

    def clear(self) -> dict:
        """Undo every active fault (resume processes, remove impairments, links up): one log line."""
        with self._locked() as state:
            t0 = self._now()
            undone, errors = [], []
            for step in undo_plan(state):
                try:
                    self._undo(step.kind, step.detail)
                    undone.append(f"{step.kind} {step.target}")
                except FaultError as exc:
                    errors.append(f"{step.kind} {step.target}: {exc}")
            self._save(current_state(None, self._run_id()))
            detail: dict[str, Any] = {"undone": undone}
            if errors:
                detail["error"] = "; ".join(errors)
            rec = self._log("clear", "all", t0, **detail)
        if errors:
            raise FaultError(f"clear: {'; '.join(errors)}")
        return rec

    def _undo(self, kind: str, detail: dict) -> None:
        if kind == "resume":
            for p in detail["procs"]:
                proc = proctree.find(p["pid"], p.get("create_time"))
                if proc is not None:
                    self._signal([proc], signal.SIGCONT)
        elif kind == "unimpair":
            self.shell.run(tc_clear(detail["intf"]), detail["server"], check=False)
        elif kind == "link-up":
            for _node, intf in detail["ends"]:
                self.shell.run(["ip", "link", "set", "dev", intf, "up"])

    def release_for_teardown(self) -> dict | None:
        """Resume what is paused and forget every fault (the links and qdiscs go with the testbed);
        logged as "teardown" if anything was active."""
        with self._locked() as state:
            if is_empty(state):
                return None
            t0 = self._now()
            resumed = [pid for name in list(state["paused"]) for pid in self._resume_recorded(state, name)]
            active = summary_lines(state)
            self._save(current_state(None, self._run_id()))
            return self._log("teardown", "all", t0, active=active, resumed=resumed)


def _wait_listening(port: int, deadline: float) -> None:
    while time.monotonic() < deadline:
        if runner.listening(port):
            return
        time.sleep(0.1)
    raise FaultError(f"controller not listening on 127.0.0.1:{port} after the restart")


@on_down
def _resume_before_teardown(tb) -> None:
    """Registered after overlay's hooks (this module imports overlay first), so it runs before
    them: the vrouters' shutdown talks to the controller, which must not be paused."""
    if tb.rundir.path.is_dir():
        Faults(tb.rundir).release_for_teardown()

