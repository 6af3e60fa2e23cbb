"""Fixtures of the unit tests; helpers they import live in core_helpers (a name of its own, so that
collecting tests/unit and tests/e2e in one run never confuses the two conftest modules)."""
import pytest

from core_helpers import Pair


@pytest.fixture
def pair():
    return Pair()
