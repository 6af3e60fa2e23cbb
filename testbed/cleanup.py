"""Scoped cleanup: remove what testbed runs left behind, found only by name prefix, run directory
and PID records. Never global: neither Mininet's machine-wide cleanup nor killing by process name,
nothing without our prefix.

Everything a run creates in the root namespace is named `<prefix>-...` (testbed/fabric.py), and the
processes it starts (controller, Mininet node shells, supervised programs) are recorded with their
start time in `<rundir>/pids/`, so a recycled PID is never killed; testbed/proctree.py ends them.
What users or experiments start inside a VM or a server (daemons that left every recorded tree) is
found by network namespace identity instead, through the handles testbed/namespaces.py holds.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import time

import psutil

from testbed import namespaces, proctree
from testbed.rundir import RunDir, live_process, run_dirs

DEFAULT_PREFIX = "vt"


def _lines(argv: list) -> list[str]:
    r = subprocess.run(argv, capture_output=True, text=True)
    return r.stdout.splitlines() if r.returncode == 0 else []


def _ours(name: str, prefix: str) -> bool:
    return name.startswith(prefix + "-")


def bridges(prefix: str) -> list[str]:
    return [b for b in _lines(["ovs-vsctl", "--timeout=10", "list-br"]) if _ours(b, prefix)]


def links(prefix: str) -> list[str]:
    out = []
    for line in _lines(["ip", "-o", "link", "show"]):
        parts = line.split(": ", 2)
        if len(parts) >= 2:
            name = parts[1].split("@")[0]
            if _ours(name, prefix):
                out.append(name)
    return out


def netns(prefix: str) -> list[str]:
    return [line.split()[0] for line in _lines(["ip", "netns", "list"])
            if line.split() and _ours(line.split()[0], prefix)]


def processes(rundir: RunDir) -> list[psutil.Process]:
    """Recorded processes still alive and still the same program; plus their descendants."""
    found: dict[int, psutil.Process] = {}
    for rec in rundir.pid_records():
        p = live_process(rec)
        if p is None or p.pid == os.getpid():
            continue
        try:
            if rec.get("cmdline") and p.cmdline() != rec["cmdline"]:
                continue
        except psutil.Error:
            continue
        found.update((q.pid, q) for q in proctree.tree(p) if q.pid != os.getpid())
    return list(found.values())


def namespace_processes(rundir: RunDir) -> list[psutil.Process]:
    """Every process in a network namespace this run holds, whoever started it."""
    return namespaces.processes_in(namespaces.identities(namespaces.run_paths(rundir)))


def leftovers(prefix: str, root=None) -> dict:
    rd = RunDir(root, prefix)
    found = (("processes", [p.pid for p in processes(rd)]),
             ("namespace processes", [p.pid for p in namespace_processes(rd)]),
             ("held namespaces", list(namespaces.handles(rd))),
             ("bridges", bridges(prefix)), ("links", links(prefix)), ("netns", netns(prefix)))
    return {k: v for k, v in found if v}


def clean_prefix(prefix: str, root=None, keep_rundir: bool = False, log=print) -> dict:
    """Remove one prefix's processes (recorded ones, then whatever else runs in its namespaces),
    OVS bridges, links, namespaces and (unless kept) run dir."""
    rd = RunDir(root, prefix)
    done = {"processes": 0, "namespace_processes": 0, "bridges": 0, "links": 0, "netns": 0, "rundirs": 0}
    procs = processes(rd)
    if procs:
        log(f"{prefix}: stopping {len(procs)} processes ({', '.join(str(p.pid) for p in procs)})")
        done["processes"] = proctree.terminate(procs)
    done["namespace_processes"] = namespaces.end_processes(namespaces.run_paths(rd))
    if done["namespace_processes"]:
        log(f"{prefix}: ended {done['namespace_processes']} processes left in the testbed's network namespaces")
    for br in bridges(prefix):
        subprocess.run(["ovs-vsctl", "--timeout=10", "--if-exists", "del-br", br], capture_output=True)
        done["bridges"] += 1
    if done["bridges"]:
        log(f"{prefix}: deleted {done['bridges']} OVS bridges")
    # A veth goes away with its peer; netdev bridges' tap ports go with del-br, hence the re-list.
    for _ in range(3):
        names = links(prefix)
        if not names:
            break
        for name in names:
            if subprocess.run(["ip", "link", "del", name], capture_output=True).returncode == 0:
                done["links"] += 1
        time.sleep(0.1)
    if done["links"]:
        log(f"{prefix}: deleted {done['links']} links")
    done["netns"] = namespaces.release_all(rd)
    for ns in netns(prefix):
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        done["netns"] += 1
    if done["netns"]:
        log(f"{prefix}: deleted {done['netns']} network namespaces")
    if not keep_rundir and rd.exists():
        shutil.rmtree(rd.path, ignore_errors=True)
        done["rundirs"] += 1
        log(f"{prefix}: removed {rd.path}")
    return done


def is_running(rd: RunDir) -> bool:
    state = rd.read_state()
    owner = state.get("owner")
    return bool(owner and state.get("state") in ("starting", "up") and live_process(owner))


def clean(root=None, prefix: str | None = None, log=print) -> dict:
    """One prefix (even if it still runs), or every run under the run root plus the default prefix,
    skipping testbeds that are still running: those are not leftovers."""
    prefixes = [prefix] if prefix else sorted({rd.prefix for rd in run_dirs(root)} | {DEFAULT_PREFIX})
    total = {}
    for p in prefixes:
        if not prefix and is_running(RunDir(root, p)):
            log(f"{p}: still running, left alone ('testbed down --prefix {p}' or 'testbed clean --prefix {p}')")
            continue
        for k, v in clean_prefix(p, root, log=log).items():
            total[k] = total.get(k, 0) + v
    return total
