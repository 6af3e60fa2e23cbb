"""The loop's latency priority (vrouter/core/priority.py): real-time while idle, normal at once when
busy, real-time again only after a calm spell; the forwarder's system calls for it (faked here: the
test process itself must never become real-time), its argument and the --help of every vrouter process."""
import argparse
import errno
import os

import pytest

from vrouter.core.priority import BUSY_LIMIT, CALM, NORMAL, REALTIME, WINDOW, Priority
from vrouter.processes import agent, dispatcher, forwarder
from vrouter.processes.launch import rt_priority


def test_an_idle_loop_starts_real_time_and_stays_so():
    p = Priority(1)
    assert p.start(0.0) == REALTIME and p.mode == REALTIME
    t = 0.0
    for _ in range(1000):                       # a ping every 20 ms, 150 us of work each
        t += 0.02
        assert p.round(t, 150e-6) is None
    assert p.stats() == {"rt_priority": 1, "mode": REALTIME, "busy_limit": BUSY_LIMIT, "to_realtime": 1,
                         "to_normal": 0, "error": None}


def test_a_busy_window_drops_it_at_once_and_only_a_calm_spell_brings_it_back():
    p = Priority(5)
    p.start(0.0)
    # Bulk: rounds of 1 ms work each, back to back; the first window over the limit switches.
    t, switched = 0.0, []
    while t < 0.05:
        t += 0.001
        if (m := p.round(t, 0.0009)) is not None:
            switched.append((round(t, 3), m))
    assert switched == [(round(WINDOW, 3), NORMAL)]
    # Lulls shorter than CALM (quiet windows, then one busy one) never bring it back.
    for _ in range(5):
        for _ in range(int(CALM / WINDOW) - 5):
            t += WINDOW
            assert p.round(t, 0.0) is None
        t += WINDOW
        assert p.round(t, WINDOW * 0.9) is None
    # A calm spell of CALM: real-time again, once.
    got = []
    for _ in range(int(CALM / WINDOW) + 2):
        t += WINDOW
        if (m := p.round(t, 1e-4)) is not None:
            got.append(m)
    assert got == [REALTIME]
    assert (p.to_realtime, p.to_normal) == (2, 1)


def test_off_and_refused():
    off = Priority(0)
    assert off.start(0.0) is None and not off.enabled and off.mode == NORMAL
    assert off.round(1.0, 1.0) is None
    p = Priority(1)
    p.start(0.0)
    p.failed("SCHED_FIFO refused: Operation not permitted")
    assert not p.enabled and p.mode == NORMAL
    assert p.stats()["error"] == "SCHED_FIFO refused: Operation not permitted"
    for bad in ({"rt_priority": 100}, {"rt_priority": -1}, {"window": 0}, {"busy_limit": 0}, {"calm": -1}):
        with pytest.raises(ValueError):
            Priority(**{"rt_priority": 1, **bad})


def test_rt_priority_argument():
    assert rt_priority("0") == 0 and rt_priority("99") == 99
    for bad in ("100", "-1", "x", "1.5"):
        with pytest.raises(argparse.ArgumentTypeError, match="give a whole number 0..99"):
            rt_priority(bad)


@pytest.fixture
def sched_calls(monkeypatch):
    """os.sched_setscheduler recorded instead of made; `refuse` makes it fail as without CAP_SYS_NICE."""
    calls, refuse = [], []

    def fake(pid, policy, param):
        if refuse:
            raise PermissionError(errno.EPERM, "Operation not permitted")
        calls.append((pid, policy, param.sched_priority))
    monkeypatch.setattr(forwarder.os, "sched_setscheduler", fake)
    return calls, refuse


def test_the_forwarder_makes_the_calls_and_survives_a_refusal(tmp_path, sched_calls):
    calls, refuse = sched_calls
    fwd = forwarder.Forwarder(str(tmp_path), "srv1", rt_priority=3)
    try:
        fwd._schedule(fwd.priority.start(0.0))
        fwd._schedule(NORMAL)
        fifo, other = os.SCHED_FIFO | os.SCHED_RESET_ON_FORK, os.SCHED_OTHER | os.SCHED_RESET_ON_FORK
        assert calls == [(0, fifo, 3), (0, other, 0)]
        assert fwd.set_priority(0)["mode"] == NORMAL and calls[-1][1] == other
        refuse.append(True)
        s = fwd.set_priority(2)
        assert s["mode"] == NORMAL and s["error"] == "SCHED_FIFO refused: Operation not permitted"
        assert not fwd.priority.enabled
    finally:
        fwd.close()


@pytest.mark.parametrize("module", [forwarder, dispatcher, agent])
def test_every_vrouter_process_prints_its_help(module, capsys):
    """--help once ended in a TypeError: a bare '%' in a help text is argparse's formatting."""
    with pytest.raises(SystemExit) as exit_:
        module.main(["--help"])
    assert exit_.value.code == 0
    assert "usage:" in capsys.readouterr().out
