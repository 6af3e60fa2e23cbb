"""Receive coalescing (vrouter/core/coalesce.py): who waits after a round, and the settings' bounds."""
import argparse

import pytest

from vrouter.core.coalesce import BACKOFF, DEFER_US, MAX_DEFER_US, Coalesce
from vrouter.processes.launch import add_loop_arguments, microseconds


def test_only_a_bulk_round_that_left_no_work_waits():
    c = Coalesce(500)
    assert c.after_round(bulk=True, busy=False, now=0.0) == pytest.approx(500e-6)
    assert c.after_round(bulk=False, busy=False, now=0.0) == 0.0        # a ping, a request: never delayed
    assert c.after_round(bulk=True, busy=True, now=0.0) == 0.0          # more is waiting: no need to wait for it
    s = c.stats()
    assert (s["defer_us"], s["bulk_rounds"], s["deferred"]) == (500, 2, 1)


def test_a_sleep_that_overshot_suspends_coalescing_for_a_while():
    c = Coalesce(1000)
    c.woke(1e-3, 1.5e-3, now=10.0)                  # on time, near enough: keep going
    assert c.after_round(True, False, now=10.0) == pytest.approx(1e-3)
    c.woke(1e-3, 4e-3, now=10.0)                    # the CPU was taken: the queue overflowed meanwhile
    assert c.after_round(True, False, now=10.0 + BACKOFF / 2) == 0.0
    assert c.after_round(True, False, now=10.0 + BACKOFF) == pytest.approx(1e-3)
    assert c.stats()["overshoots"] == 1


def test_off_never_waits():
    c = Coalesce(0)
    assert not c.enabled
    assert c.after_round(bulk=True, busy=False, now=0.0) == 0.0
    assert c.stats()["deferred"] == 0 and c.stats()["bulk_rounds"] == 1


@pytest.mark.parametrize("bad", [-1, MAX_DEFER_US + 1])
def test_out_of_range_is_refused(bad):
    with pytest.raises(ValueError, match="defer_us must be"):
        Coalesce(bad)


def test_the_forwarders_option_and_its_default():
    p = argparse.ArgumentParser()
    add_loop_arguments(p)
    assert p.parse_args([]).defer_us == DEFER_US
    assert p.parse_args(["--defer-us", "0"]).defer_us == 0.0
    with pytest.raises(argparse.ArgumentTypeError, match="0..10000"):
        microseconds("20000")
    with pytest.raises(argparse.ArgumentTypeError):
        microseconds("soon")
