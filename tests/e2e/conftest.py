"""End-to-end test support: skip cleanly without root/OVS, unique prefixes, per-module run roots
whose logs are pointed at when a test fails."""
import uuid

import pytest

from testbed.checks import PreconditionError, require_testbed_host

_FAILED_MODULES = set()


def e2e_skip_reason():
    """What the `testbed` commands would refuse to run without (root, OVS running, Mininet...)."""
    try:
        require_testbed_host()
    except PreconditionError as exc:
        return f"end-to-end tests: {exc}"
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
