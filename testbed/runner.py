"""Bring a testbed up and down: the one code path used by the daemon, tests, benches and experiments.

    with Testbed(load("topologies/default.yaml"), prefix="vt") as tb:
        tb.host("srv1").cmd("ping -c1 10.0.2.1")

Several testbeds may run at once if their prefixes differ (each gets its own controller port,
run directory and interface/bridge names); one prefix is one testbed.
Overlay code adds steps with `@on_up` / `@on_down` (called with the Testbed) in a module listed
in PLUGINS; they run after the fabric is programmed and before it is torn down (on_down hooks in
the reverse order of their registration).
"""
from __future__ import annotations

import importlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from testbed import REPO, cleanup, fabric, namespaces, port_buffers
from testbed.network import build, wait_programmed
from testbed.rundir import RunDir, process_record
from testbed.supervisor import Supervisor
from testbed.topology import Topology
from vrouter.io.control import STATE_FILE
from vrouter.io.flowlog import FLOWS_DIR
from vrouter.io.mirror_pcap import MIRROR_DIR

# testbed.faults after testbed.overlay: its on_down hook (resume what a fault paused) must run first.
PLUGINS = ("testbed.overlay", "testbed.faults")
_HOOKS: dict[str, list] = {"up": [], "down": []}
CONTROLLER = "controller"


class TestbedError(Exception):
    pass


def on_up(fn):
    """Register fn(testbed) to run once the fabric is up and programmed."""
    if fn not in _HOOKS["up"]:
        _HOOKS["up"].append(fn)
    return fn


def on_down(fn):
    """Register fn(testbed) to run before the fabric is torn down."""
    if fn not in _HOOKS["down"]:
        _HOOKS["down"].append(fn)
    return fn


def load_plugins() -> None:
    for mod in PLUGINS:
        importlib.import_module(mod)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening(port: int) -> bool:
    """Does something accept TCP connections on 127.0.0.1:port (the controller's OpenFlow port)?"""
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def wait_listening(port: int, proc: subprocess.Popen, timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace").strip().splitlines()[-1:] if log.exists() else []
            raise TestbedError(f"controller exited with {proc.returncode}: {' '.join(tail) or 'no output'} "
                               f"(log: {log})")
        if listening(port):
            return
        time.sleep(0.1)
    raise TestbedError(f"controller not listening on 127.0.0.1:{port} after {timeout:.0f} s (log: {log})")


def _named(entries: list, name: str) -> dict:
    """The fabric description's entry (switch or server) of that topology name; KeyError if none."""
    for entry in entries:
        if entry["name"] == name:
            return entry
    raise KeyError(name)


class Testbed:
    __test__ = False  # not a pytest test class despite the name
    def __init__(self, topology: Topology, prefix: str = "vt", run_root: str | None = None,
                 ofp_port: int | None = None, hooks: list | None = None, progress=None,
                 mode: str = "inprocess"):
        self.topology = topology
        self.prefix = fabric.check_prefix(prefix)
        self.rundir = RunDir(run_root, prefix)
        self.ofp_port = ofp_port
        self._hooks = hooks
        self.progress = progress or (lambda msg: None)
        self.mode = mode
        self.desc = fabric.describe(topology, prefix)
        self.net = None
        self.supervisor: Supervisor | None = None
        self.timings: dict[str, float] = {}
        self._down_hooks: list = []

    # --- access -------------------------------------------------------------------------------
    def host(self, name: str):
        return self.net[name]

    def switch(self, name: str):
        """Mininet switch by topology name (spine1, leaf2...); bridge names carry the prefix."""
        return self.net[self.switch_info(name)["bridge"]]

    def switch_info(self, name: str) -> dict:
        return _named(self.desc["switches"], name)

    def server_info(self, name: str) -> dict:
        return _named(self.desc["servers"], name)

    @property
    def path(self) -> Path:
        return self.rundir.path

    # --- life cycle ---------------------------------------------------------------------------
    def _refuse_if_running(self) -> None:
        if cleanup.is_running(self.rundir):
            raise TestbedError(f"a testbed with prefix {self.prefix!r} is already running "
                               f"({self.rundir.path}): 'sudo testbed down --prefix {self.prefix}' "
                               f"or pick another --prefix")
        if cleanup.leftovers(self.prefix, self.rundir.root):
            self.progress(f"removing leftovers of an earlier run with prefix {self.prefix!r}")
            cleanup.clean_prefix(self.prefix, self.rundir.root, keep_rundir=True, log=self.progress)

    def start(self) -> Testbed:
        t0 = time.monotonic()
        self._refuse_if_running()
        self.rundir.create()
        # The VNC persists run-time changes for its own restarts within this run; a new run starts
        # from the topology, not from what an earlier run with this prefix left behind.
        (self.rundir.path / STATE_FILE).unlink(missing_ok=True)
        for output in (FLOWS_DIR, MIRROR_DIR):
            self.rundir.set_aside(output)
        owner = process_record(os.getpid())
        self.ofp_port = self.ofp_port or free_port()
        self.rundir.write_state(state="starting", prefix=self.prefix, topology=self.topology.name,
                                topology_source=self.topology.source, ofp_port=self.ofp_port,
                                owner=owner, mode=self.mode, rundir=str(self.rundir.path),
                                started=time.time())
        try:
            self.rundir.topology_file.write_text(self.topology.to_yaml())
            fabric.write(self.desc, self.rundir.fabric_file)
            self.supervisor = Supervisor(self.rundir)
            self.progress(f"starting the controller on 127.0.0.1:{self.ofp_port}")
            proc = self.supervisor.start(CONTROLLER, self.controller_argv(), cwd=str(REPO))
            wait_listening(self.ofp_port, proc, 30, self.rundir.log(CONTROLLER))
            self.timings["controller"] = time.monotonic() - t0
            t1 = time.monotonic()
            self.progress(f"building {len(self.desc['switches'])} switches, "
                          f"{len(self.desc['servers'])} servers")
            self.net = build(self.desc, self.ofp_port, progress=self.progress)
            self._record_nodes()
            self.timings["mininet"] = time.monotonic() - t1
            t2 = time.monotonic()
            wait_programmed(self.desc, progress=self.progress)
            self.timings["programmed"] = time.monotonic() - t2
            self._deepen_port_buffers()
            t3 = time.monotonic()
            self._run_up_hooks()
            self.timings["hooks"] = time.monotonic() - t3
        except BaseException:
            self.rundir.write_state(state="failed")
            self.stop()
            raise
        self.timings["total"] = time.monotonic() - t0
        self.rundir.write_state(state="up", timings=self.timings)
        return self

    def controller_argv(self) -> list:
        return [sys.executable, "-m", "controllers.launcher", "--ofp-port", self.ofp_port,
                "--fabric", self.rundir.fabric_file, "--vnc-socket", self.rundir.vnc_socket,
                "--topology", self.rundir.topology_file, "--prefix", self.prefix]

    def _record_nodes(self) -> None:
        """Mininet's node shells, and the hosts' namespaces: cleanup must find them if we die."""
        for node in self.net.hosts + self.net.switches + self.net.controllers:
            if node.pid:
                self.rundir.record_pid(f"node-{node.name}", node.pid, role="node")
        for host in self.net.hosts:
            namespaces.hold(self.rundir, host.name, host.pid)

    def _deepen_port_buffers(self) -> None:
        """Switch ports that absorb bursts, as a hardware leaf's do (testbed/port_buffers.py)."""
        done, why = port_buffers.deepen(self.prefix)
        mb = port_buffers.PORT_RCVBUF >> 20
        if why or not done:
            self.progress(f"switch port buffers left at the system default ({why or 'no port sockets found'}): "
                          f"bursts may drop packets in the fabric")
        else:
            self.progress(f"{done} switch port buffers deepened to {mb} MB")
        self.rundir.write_state(port_buffers={"deepened": done, "bytes": port_buffers.PORT_RCVBUF, "error": why})

    def _run_up_hooks(self) -> None:
        if self._hooks is None:
            load_plugins()
            up, down = list(_HOOKS["up"]), list(_HOOKS["down"])
        else:
            up, down = list(self._hooks), []
        for fn in up:
            self.progress(f"running {getattr(fn, '__module__', '')}.{getattr(fn, '__name__', fn)}")
            fn(self)
        self._down_hooks = down

    def restart_controller(self) -> int:
        """Restart only the controller; switches keep forwarding and resync when it is back."""
        proc = self.supervisor.restart(CONTROLLER)
        wait_listening(self.ofp_port, proc, 30, self.rundir.log(CONTROLLER))
        return proc.pid

    def stop(self) -> float:
        """Tear everything down (safe to call twice); returns the seconds it took."""
        t0 = time.monotonic()
        self.rundir.write_state(state="stopping")
        errors = []
        for fn in reversed(self._down_hooks):
            try:
                fn(self)
            except Exception as exc:  # teardown goes on: leftovers would block the next run
                errors.append(f"{getattr(fn, '__name__', fn)}: {exc}")
        self._down_hooks = []
        if self.supervisor is not None:
            self.supervisor.stop_all()
            self.supervisor = None
        if self.net is not None:
            self.net.stop()
            self.net = None
        for rec in self.rundir.pid_records():
            if rec.get("role") == "node":
                self.rundir.forget_pid(rec["name"])
        # Mininet deletes what it created; this catches what a crashed step left behind, and ends
        # what users started inside the hosts (daemons outlive Mininet's node shells).
        done = cleanup.clean_prefix(self.prefix, self.rundir.root, keep_rundir=True, log=lambda m: None)
        self.timings["teardown"] = time.monotonic() - t0
        self.rundir.write_state(state="stopped", stopped=time.time(), teardown_errors=errors,
                                ended_in_namespaces=done["namespace_processes"])
        return self.timings["teardown"]

    def __enter__(self) -> Testbed:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
