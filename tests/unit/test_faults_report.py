"""The faults experiment's arithmetic (experiments/faults_report.py): outages from ping replies,
recovery, failed connections, targets."""
import pytest

from experiments import faults_report as r
from testbed.measure.loadrun import Connection, Interval
from testbed.measure.runners import ping_replies_from_output

OFFSET = 1_000_000.0  # time.time() - time.monotonic()


def replies(seqs, interval=0.01, rtt_ms=1.0, t0=10.0):
    """ping -D replies for `seqs`, ping n sent at t0 + (n - 1) * interval (harness clock)."""
    return [(s, t0 + (s - 1) * interval + rtt_ms / 1000 + OFFSET, rtt_ms) for s in seqs]


def test_ping_d_output_parses_to_seq_time_rtt():
    out = "[1796196846.448930] 64 bytes from 192.168.1.13: icmp_seq=7 ttl=64 time=1.23 ms\n"
    assert ping_replies_from_output(out) == [(7, 1796196846.44893, 1.23)]


def test_lost_pings_are_placed_between_their_answered_neighbours():
    pings = r.ping_timeline(replies([1, 2, 5]), 6, 0.01, OFFSET)
    assert [p.seq for p in pings] == [1, 2, 3, 4, 5, 6]
    assert [p.rtt_ms is None for p in pings] == [False, False, True, True, False, True]
    assert pings[2].sent == pytest.approx(10.02) and pings[3].sent == pytest.approx(10.03)
    assert pings[5].sent == pytest.approx(10.05)  # after the last reply: extrapolated


def test_one_lost_ping_is_an_outage_of_one_interval_and_none_is_zero():
    pings = r.ping_timeline(replies([1, 2, 4, 5]), 5, 0.01, OFFSET)
    (run,) = r.outages(pings, 0.01)
    assert run[2] == 1 and r.outage_s(run, 0.01) == pytest.approx(0.01)
    assert r.outages(r.ping_timeline(replies(range(1, 6)), 5, 0.01, OFFSET), 0.01) == []


def phase(answered, sent=300, fault_at=1.0, conns=(), intervals=(), name="spine-link", undo_at=2.0):
    return {"fault": name, "target": "spine1-leaf2", "t0": 10.0, "t_end": 13.0, "fault_t": 10.0 + fault_at,
            "undo_t": 10.0 + undo_at if undo_at is not None else None, "hold": 1.0, "ping_interval": 0.01,
            "pings": r.ping_timeline(replies(answered), sent, 0.01, OFFSET), "connections": list(conns),
            "intervals": list(intervals), "stream": {}}


def test_outage_and_recovery_after_a_fault():
    # pings 1..300 over 3 s; 120..159 lost (0.4 s from 1.19 s): the fault at 1.0 s
    f = r.phase_figures(phase([s for s in range(1, 301) if not 120 <= s < 160]))
    assert f["ping_lost"] == 40 and f["ping_lost_after_fault"] == 40
    assert f["outage_ms"] == pytest.approx(400, abs=1)
    assert f["recovery_s"] == pytest.approx(0.59, abs=0.01)  # the first reply after, at seq 160
    assert [t["met"] for t in r.targets(f)] == [True]
    f = r.phase_figures(phase([s for s in range(1, 301) if not 120 <= s < 260]))
    assert f["outage_ms"] == pytest.approx(1400, abs=1) and [t["met"] for t in r.targets(f)] == [False]


def test_connections_failing_after_the_fault_and_their_span():
    conns = [Connection(i, 10.0 + i * 0.05, "timeout" if 30 <= i < 40 else "ok", 900) for i in range(60)]
    f = r.phase_figures(phase(range(1, 301), conns=conns, name="agent-kill", undo_at=None))
    assert f["connections_failed"] == 10 and f["connect_fail_span_s"] == pytest.approx(0.45)
    assert {t["figure"]: t["met"] for t in r.targets(f)} == {"ping_lost": True, "connect_fail_span_s": True}
    conns = [Connection(i, 10.0 + i * 0.05, "timeout" if i in (21, 50) else "ok", 900) for i in range(60)]
    f = r.phase_figures(phase(range(1, 301), conns=conns, name="agent-kill", undo_at=None))
    assert f["connect_fail_span_s"] == pytest.approx(1.45) and not all(t["met"] for t in r.targets(f))


def test_controller_down_needs_no_loss_and_no_failed_connection():
    conns = [Connection(1, 11.5, "timeout", None)]
    f = r.phase_figures(phase(range(1, 301), conns=conns, name="controller"))
    assert {t["figure"]: t["met"] for t in r.targets(f)} == {"ping_lost": True, "connections_failed": False}


def test_stream_throughput_under_the_fault_against_its_own_start():
    # the first second is the stream's slow start, left out of its baseline
    iv = [Interval(10.0 + i * 0.1, 10.1 + i * 0.1, 1_000_000 if not 15 <= i < 25 else 250_000) for i in range(30)]
    f = r.phase_figures(phase(range(1, 301), intervals=iv, name="loss", fault_at=1.5, undo_at=2.5))
    assert f["stream_fault_ratio"] == pytest.approx(0.25) and f["stream_survived"] is True
    s = r.summarize([phase(range(1, 301), intervals=iv, name="loss", fault_at=1.5, undo_at=2.5)],
                    {"ping_interval": 0.01})
    assert s["loss_throughput_ratio"] == pytest.approx(0.25) and s["targets_met"] is True
    assert any(line.startswith("loss: stream throughput 0.25 x") for line in r.summary_lines(s))
