"""Namespace handles (testbed/namespaces.py) on real namespaces: a process in a namespace of ours is
ended, a same-named one in the root namespace is not, a held namespace outlives its first process
(what enters it later is still found), and the root namespace is never accepted as a handle.
Needs root (unshare, mount --bind); skipped otherwise."""
import os
import subprocess
import time

import psutil
import pytest

from testbed import namespaces
from testbed.rundir import RunDir

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (unshare -n, mount --bind)")


def in_new_netns(*argv) -> subprocess.Popen:
    return subprocess.Popen(["unshare", "-n", *argv])


def ns_of(pid: int):
    deadline = time.monotonic() + 5
    root = namespaces.identity("/proc/self/ns/net")
    while time.monotonic() < deadline:  # unshare switches namespace before exec'ing
        ident = namespaces.identity(f"/proc/{pid}/ns/net")
        if ident != root and psutil.Process(pid).name() == "sleep":
            return ident
        time.sleep(0.01)
    raise AssertionError(f"pid {pid} never left the root namespace")


@pytest.fixture
def rundir(tmp_path):
    rd = RunDir(tmp_path, "ut")
    rd.create()
    yield rd
    namespaces.release_all(rd)


@pytest.fixture
def reaped():
    procs = []
    yield procs
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait()


def test_root_namespace_is_never_a_handle(rundir):
    with pytest.raises(namespaces.NamespaceError, match="root network namespace"):
        namespaces.hold(rundir, "self", os.getpid())
    assert namespaces.identities(["/proc/self/ns/net", "/proc/1/ns/net"]) == set()


def test_ends_what_runs_inside_and_nothing_outside(rundir, reaped):
    inside = in_new_netns("sleep", "600")
    outside = subprocess.Popen(["sleep", "600"])  # same name, root namespace
    reaped += [inside, outside]
    ident = ns_of(inside.pid)
    handle = namespaces.hold(rundir, "vm1", inside.pid)
    assert namespaces.identity(handle) == ident and list(namespaces.handles(rundir)) == ["vm1"]
    assert [p.pid for p in namespaces.processes_in({ident})] == [inside.pid]
    assert namespaces.end_processes([handle], grace=1.0) == 1
    assert inside.wait(5) is not None
    assert outside.poll() is None
    assert namespaces.release_all(rundir) == 1
    assert not handle.exists() and namespaces.handles(rundir) == {}


def test_a_held_namespace_outlives_its_first_process(rundir, reaped):
    first = in_new_netns("sleep", "600")
    reaped.append(first)
    ns_of(first.pid)
    handle = namespaces.hold(rundir, "srv1", first.pid)
    first.kill()
    first.wait()
    # The namespace is kept by the handle: what enters it later is still ours.
    later = subprocess.Popen(["nsenter", f"--net={handle}", "sleep", "600"])
    reaped.append(later)
    ns_of(later.pid)
    assert namespaces.end_processes([handle], grace=1.0) == 1
    assert later.wait(5) is not None


def test_holding_again_is_idempotent_and_an_unheld_handle_finds_nothing(rundir, reaped):
    proc = in_new_netns("sleep", "600")
    reaped.append(proc)
    ns_of(proc.pid)
    a = namespaces.hold(rundir, "vm2", proc.pid)
    b = namespaces.hold(rundir, "vm2", proc.pid)
    assert a == b and namespaces.release_all(rundir) == 1
    assert namespaces.end_processes([a]) == 0  # released: its identity is no longer trusted
    assert proc.poll() is None


def test_by_host_names_held_hosts_and_add_vm_namespaces_without_the_prefix(rundir, reaped, tmp_path, monkeypatch):
    server, added = in_new_netns("sleep", "600"), in_new_netns("sleep", "600")
    reaped += [server, added]
    ns_of(server.pid), ns_of(added.pid)
    # `ip netns add ut-red9` in a /run/netns of the test's own: a held namespace named with the prefix.
    named = RunDir(tmp_path / "named", "x")
    monkeypatch.setattr(namespaces, "NAMED_NETNS", namespaces.handles_dir(named))
    try:
        namespaces.hold(named, f"{rundir.prefix}-red9", added.pid)
        namespaces.hold(named, "other-red8", added.pid)  # another testbed's
        handle = namespaces.hold(rundir, "srv1", server.pid)
        assert namespaces.by_host(rundir) == {"srv1": handle,
                                              "red9": namespaces.handles_dir(named) / f"{rundir.prefix}-red9"}
    finally:
        namespaces.release_all(named)
