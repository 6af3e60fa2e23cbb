"""The loop's keep-warm waits (vrouter/core/warm.py): capped while input is recent, the loop's own
timeout otherwise (its run-time setting: test_offload_shell.py)."""
import pytest

from vrouter.core.warm import ACTIVE, WARM_US, KeepWarm


def test_waits_are_capped_only_while_input_is_recent():
    w = KeepWarm(2000)
    assert w.enabled and w.interval == 0.002
    assert w.timeout(0.5, 10.0) == 0.5                 # no input yet: the loop's own timeout
    w.last_input = 10.0
    assert w.timeout(0.5, 10.1) == 0.002               # a ping 100 ms ago: wake within 2 ms
    assert w.timeout(0.001, 10.1) == 0.001             # a shorter wait stays as it is
    assert w.timeout(0.0, 10.1) == 0.0                 # a busy loop does not wait at all
    assert w.timeout(0.5, 10.0 + ACTIVE) == 0.5        # a second without input: idle, no wake-ups
    assert w.stats() == {"warm_us": 2000, "active_s": ACTIVE, "capped_waits": 1}


def test_off_and_bad_values():
    off = KeepWarm(0)
    off.last_input = 1.0
    assert not off.enabled
    assert KeepWarm().interval == WARM_US / 1e6
    for bad in ({"warm_us": -1}, {"active": 0}):
        with pytest.raises(ValueError):
            KeepWarm(**{"warm_us": 2000, **bad})
