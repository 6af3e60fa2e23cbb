"""End-to-end test support: skip cleanly without root/OVS, unique prefixes, per-module run roots
whose logs are pointed at when a test fails."""
import os
import shutil
import subprocess
import uuid

import pytest

_FAILED_MODULES = set()


def e2e_skip_reason():
    if os.geteuid() != 0:
        return "end-to-end tests need root (run 'sudo make test')"
    if shutil.which("ovs-vsctl") is None:
        return "Open vSwitch is not installed (run 'sudo make setup')"
    if subprocess.run(["ovs-vsctl", "--timeout=3", "show"], capture_output=True).returncode != 0:
        return "Open vSwitch is not running (run 'sudo make ovs')"
    if shutil.which("mnexec") is None:
        return "Mininet is not installed (run 'sudo make setup')"
    return None


def pytest_collection_modifyitems(config, items):
    reason = e2e_skip_reason()
    if reason:
        for item in items:
            if item.get_closest_marker("e2e"):
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    if outcome.get_result().failed:
        _FAILED_MODULES.add(item.module.__name__)


def unique_prefix(letter: str) -> str:
    """Six characters, distinct per module and run: parallel runs never share bridge/link names."""
    return letter + uuid.uuid4().hex[:5]


@pytest.fixture(scope="module")
def run_root(request, tmp_path_factory):
    """A run root of this module's own; on failure its logs stay and their place is printed."""
    path = tmp_path_factory.mktemp("runs")
    yield path
    if request.module.__name__ in _FAILED_MODULES:
        tr = request.config.pluginmanager.get_plugin("terminalreporter")
        if tr is not None:
            tr.write_line(f"\n{request.module.__name__}: testbed logs kept in {path}")


@pytest.fixture(scope="session")
def new_prefix():
    """Call with a letter: returns a fresh unique testbed prefix."""
    return unique_prefix
