"""Preconditions of commands that build namespaces and switches, each failing with one clear line."""
from __future__ import annotations

import os
import shutil
import subprocess


class PreconditionError(Exception):
    """Message is a complete one-line error for the user; exit code 1."""


def require_root() -> None:
    if os.geteuid() != 0:
        raise PreconditionError("testbed needs root: run it with sudo")


def require_ovs() -> None:
    if shutil.which("ovs-vsctl") is None or shutil.which("ovs-ofctl") is None:
        raise PreconditionError("Open vSwitch is not installed: run 'sudo make setup'")
    r = subprocess.run(["ovs-vsctl", "--timeout=3", "show"], capture_output=True, text=True)
    if r.returncode != 0:
        raise PreconditionError("Open vSwitch is not running: run 'sudo make ovs' "
                                "(or /usr/share/openvswitch/scripts/ovs-ctl start)")


def require_tools(*names: str) -> None:
    missing = [n for n in names if shutil.which(n) is None]
    if missing:
        raise PreconditionError(f"missing {', '.join(missing)}: run 'sudo make setup'")


def require_testbed_host() -> None:
    require_root()
    require_ovs()
    require_tools("mnexec", "ethtool", "ip")
