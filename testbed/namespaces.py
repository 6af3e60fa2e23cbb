"""The testbed's network namespaces, held open and named by identity, so that cleanup can end every
process inside them (a daemon started in a VM or a server with double fork and setsid has left every
process tree the testbed recorded) and nothing outside them.

A namespace is known by its nsfs identity (device, inode), the one `stat /proc/PID/ns/net` shows.
Inode numbers are reused once a namespace dies, so an identity is only trusted while the namespace
is held: each Mininet host's namespace is bind-mounted on `<rundir>/netns/<host>` when the host
starts and released by cleanup, after the processes in it have ended. Namespaces created with
`ip netns add <prefix>-...` (`testbed net add-vm`) are held by iproute2 under /run/netns already.
Never by process name; the root namespace (PID 1's, and the caller's own) is refused as a handle, so a bug here cannot
turn into "every process on the machine".
"""
from __future__ import annotations

import ctypes
import os
from pathlib import Path

import psutil

from testbed import proctree
from testbed.rundir import RunDir

MS_BIND, MNT_DETACH = 4096, 2   # mount(2) and umount2(2) flags
NAMED_NETNS = Path("/run/netns")  # where `ip netns add` holds its namespaces
ROUNDS = 3  # a process may fork while it is being ended: look again this many times

Identity = tuple[int, int]  # (st_dev, st_ino) of an nsfs file


class NamespaceError(Exception):
    pass


def identity(path: str | Path) -> Identity | None:
    """The namespace `path` (a /proc/PID/ns/net file or a bind mount of one) is; None if unreadable."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _nsfs_device() -> int | None:
    own = identity("/proc/self/ns/net")
    return own[0] if own else None


def never_ours() -> set[Identity]:
    """Namespaces that are never a testbed's: PID 1's (when readable: some inits hide it) and the
    caller's own, which for every testbed command is the root namespace."""
    return {i for i in (identity("/proc/1/ns/net"), identity("/proc/self/ns/net")) if i is not None}


def handles_dir(rundir: RunDir) -> Path:
    return rundir.path / "netns"


def _mounted(path: Path) -> bool:
    """Is `path` a bind mount of a namespace (and not the empty file it is mounted on)?"""
    ident = identity(path)
    return ident is not None and ident[0] == _nsfs_device()


def hold(rundir: RunDir, name: str, pid: int) -> Path:
    """Bind-mount the network namespace of `pid` on `<rundir>/netns/<name>`; returns the handle."""
    ident = identity(f"/proc/{pid}/ns/net")
    if ident is None:
        raise NamespaceError(f"cannot read the network namespace of pid {pid} ({name})")
    if ident in never_ours():
        raise NamespaceError(f"{name} (pid {pid}) is in the root network namespace: not holding it")
    folder = handles_dir(rundir)
    folder.mkdir(parents=True, exist_ok=True)
    handle = folder / name
    if _mounted(handle):
        if identity(handle) == ident:
            return handle
        release_handle(handle)
    handle.touch()
    # The system call, not mount(8): a large testbed holds hundreds of namespaces, and a program
    # started for each cost it seconds.
    if _libc().mount(f"/proc/{pid}/ns/net".encode(), str(handle).encode(), None, MS_BIND, None) != 0:
        err = ctypes.get_errno()
        handle.unlink(missing_ok=True)
        raise NamespaceError(f"cannot hold the namespace of {name} (pid {pid}): {os.strerror(err)}")
    return handle


def _libc():
    return ctypes.CDLL(None, use_errno=True)


def release_handle(handle: Path) -> None:
    """Unmount (lazily: a process may still have it open) and remove one handle."""
    while _mounted(handle):
        if _libc().umount2(str(handle).encode(), MNT_DETACH) != 0:
            break
    handle.unlink(missing_ok=True)


def handles(rundir: RunDir) -> dict[str, Path]:
    """{host name: handle} of the namespaces this run holds."""
    folder = handles_dir(rundir)
    if not folder.is_dir():
        return {}
    return {p.name: p for p in sorted(folder.iterdir()) if _mounted(p)}


def by_host(rundir: RunDir) -> dict[str, Path]:
    """{host name: namespace} of a run, for entering one: its Mininet hosts' handles (servers and
    VMs) and the `ip netns` namespaces of VMs added by `testbed net add-vm` (`<prefix>-red4` is red4)."""
    found = {name[len(rundir.prefix) + 1:]: path for name, path in named(rundir.prefix).items()}
    found.update(handles(rundir))
    return found


def named(prefix: str) -> dict[str, Path]:
    """{name: path} of the `ip netns` namespaces with our prefix."""
    if not NAMED_NETNS.is_dir():
        return {}
    return {p.name: p for p in sorted(NAMED_NETNS.iterdir())
            if p.name.startswith(prefix + "-") and _mounted(p)}


def identities(paths) -> set[Identity]:
    """The namespaces behind `paths`; never the root namespace."""
    found = {identity(p) for p in paths}
    return {i for i in found if i is not None} - never_ours()


def processes_in(idents: set[Identity]) -> list[psutil.Process]:
    """Every process (but this one) whose network namespace is one of `idents`."""
    if not idents:
        return []
    out = []
    for proc in psutil.process_iter():
        if proc.pid == os.getpid():
            continue
        if identity(f"/proc/{proc.pid}/ns/net") in idents:
            out.append(proc)
    return out


def end_processes(paths, grace: float = proctree.GRACE) -> int:
    """End every process in the namespaces behind `paths` (SIGTERM, grace, SIGKILL); looks again
    for what they forked meanwhile. Returns how many ended."""
    idents = identities(paths)
    ended = 0
    for _ in range(ROUNDS):
        procs = processes_in(idents)
        if not procs:
            break
        ended += proctree.terminate(procs, grace)
    return ended


def run_paths(rundir: RunDir) -> list[Path]:
    """The handles of a run: its held host namespaces and its prefix's `ip netns` ones."""
    return [*handles(rundir).values(), *named(rundir.prefix).values()]


def release_all(rundir: RunDir) -> int:
    """Drop every handle this run holds (the namespaces die with their last process)."""
    folder = handles_dir(rundir)
    if not folder.is_dir():
        return 0
    count = 0
    for handle in sorted(folder.iterdir()):
        count += _mounted(handle)
        release_handle(handle)
    try:
        folder.rmdir()
    except OSError:
        pass
    return count


def end_and_release(rundir: RunDir, name: str, grace: float = proctree.GRACE) -> int:
    """For one host leaving a running testbed: end what runs in its namespace, drop the handle."""
    handle = handles_dir(rundir) / name
    ended = end_processes([handle], grace) if _mounted(handle) else 0
    release_handle(handle)
    return ended
