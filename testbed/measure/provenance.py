"""Where a result came from: the code (git commit, dirty or not), the machine (kernel, CPUs), the
tools (Open vSwitch, Python and the pinned packages) and the exact command, written next to every
result as provenance.json. Reading any of these may fail (no git, OVS not installed, a package
missing); that is recorded as null with the reason under "unavailable" and never fails a run.
"""
from __future__ import annotations

import functools
import importlib.metadata
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from testbed import REPO

# The pinned packages (requirements.txt) and Mininet (a Debian package), by distribution name.
PACKAGES = ("os-ken", "scapy", "psutil", "matplotlib", "msgpack", "mininet")
TOOL_TIMEOUT = 10.0


class Unavailable(Exception):
    """One provenance field cannot be read; the message says why."""


def _tool(argv: list[str]) -> str:
    """stdout of a command, or Unavailable saying why there is none."""
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=TOOL_TIMEOUT)
    except FileNotFoundError:
        raise Unavailable(f"{argv[0]} not found") from None
    except (OSError, subprocess.SubprocessError) as exc:
        raise Unavailable(f"{' '.join(argv)}: {exc}") from None
    if r.returncode != 0:
        lines = (r.stderr or r.stdout).strip().splitlines()
        raise Unavailable(f"{' '.join(argv)} exited with {r.returncode}: {lines[0] if lines else ''}".rstrip(": "))
    return r.stdout


def git_commit(repo: Path = REPO) -> str:
    return _tool(["git", "-C", str(repo), "rev-parse", "HEAD"]).strip()


def git_dirty(repo: Path = REPO) -> bool:
    """Whether tracked files differ from the commit (untracked files do not count)."""
    return bool(_tool(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"]).strip())


def ovs_version() -> str:
    """The first line of `ovs-vsctl --version`, e.g. "ovs-vsctl (Open vSwitch) 3.1.0"."""
    out = _tool(["ovs-vsctl", "--version"]).strip()
    if not out:
        raise Unavailable("ovs-vsctl --version printed nothing")
    return out.splitlines()[0]


def package_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        raise Unavailable(f"package {name} is not installed") from None


def _read(field: str, probe: Callable[[], Any], unavailable: dict[str, str]) -> Any:
    try:
        return probe()
    except Exception as exc:  # any failure to read one field is recorded, never raised
        unavailable[field] = str(exc) or type(exc).__name__
        return None


def collect(started: float | None = None, argv: list[str] | None = None, repo: Path = REPO,
            packages: tuple[str, ...] = PACKAGES) -> dict[str, Any]:
    """The provenance record: every field present, null where it could not be read.

    `started` is the run's start (time.time(); default now), `argv` its command line (default the
    interpreter's own, as it was started: sys.orig_argv)."""
    unavailable: dict[str, str] = {}
    when = time.time() if started is None else started
    out: dict[str, Any] = {
        "git_commit": _read("git_commit", lambda: git_commit(repo), unavailable),
        "git_dirty": _read("git_dirty", lambda: git_dirty(repo), unavailable),
        "kernel": _read("kernel", lambda: os.uname().release, unavailable),
        "ovs_version": _read("ovs_version", ovs_version, unavailable),
        "python_version": platform.python_version(),
        "python_executable": sys.executable,
        "packages": {name: _read(f"packages.{name}", functools.partial(package_version, name), unavailable)
                     for name in packages},
        "cpu_count": os.cpu_count(),
        "command": list(sys.orig_argv if argv is None else argv),
        "cwd": _read("cwd", os.getcwd, unavailable),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(when)),
        "started_unix": when,
    }
    if out["cpu_count"] is None:
        unavailable["cpu_count"] = "os.cpu_count() could not tell"
    out["unavailable"] = unavailable
    return out
