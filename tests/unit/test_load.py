"""The load generators (testbed/measure/load.py) and their harness side (loadrun.py, pressure.py):
the pacing schedule (paced and unpaced floods), the flood's flow numbering, the stall arithmetic,
iperf3 interval parsing, the table rows, and the generators themselves on loopback (counts, never
timings)."""
import json
import os
import socket
import subprocess
import sys
import time

import pytest

from testbed import REPO
from testbed.measure import load
from testbed.measure.loadrun import (
    Connection,
    Interval,
    between,
    connections,
    intervals_of,
    latencies,
    longest_stall,
    stall_threshold,
    stalls,
    success,
    window_bps,
    with_flow,
)
from testbed.measure.pressure import FIELDS, owner_rows, table_row
from testbed.topology import TopologyError
from testbed.topology import load as load_topology


# --- pacing ----------------------------------------------------------------------------------------
def test_due_starts_item_i_at_i_over_rate_and_never_more_than_total():
    assert load.due(0.0, 100, 0, 10) == 1            # item 0 at t=0
    assert load.due(0.0099, 100, 1, 10) == 0
    assert load.due(0.01, 100, 1, 10) == 1
    assert load.due(0.05, 100, 2, 10) == 4           # items 2..5 are due at 0.02..0.05
    assert load.due(10.0, 100, 3, 10) == 7           # capped at total
    assert load.due(-1.0, 100, 0, 10) == 0


def test_a_paced_run_starts_exactly_its_total_whatever_the_wakeups():
    rate, total = 333.0, load.total_items(333.0, 2.0)
    started, t = 0, 0.0
    while t < 3.0:
        started += load.due(t, rate, started, total)
        t += 0.0137                                   # an irregular loop
    assert started == total == 666
    assert load.next_due(10, 100) == pytest.approx(0.1)


def test_a_paced_flood_sends_its_total_even_behind_its_schedule_batch_at_a_time():
    total = load.total_items(1000.0, 1.0)
    assert load.flood_batch(0.0, 1000.0, 1.0, 0, total) == 1
    assert load.flood_batch(0.5, 1000.0, 1.0, 1, total) == load.BATCH      # 500 due: a batch at a time
    assert load.flood_batch(0.5, 1000.0, 1.0, 500, total) == 1
    assert load.flood_batch(0.5, 1000.0, 1.0, 501, total) == 0              # ahead: wait
    assert load.flood_batch(5.0, 1000.0, 1.0, 900, total) == 100            # late: the rest, never more
    assert load.flood_batch(5.0, 1000.0, 1.0, total, total) is None


def test_an_unpaced_flood_sends_batches_until_its_seconds_have_passed():
    sent, t = 0, 0.0
    while (n := load.flood_batch(t, 0.0, 1.0, sent, 0)) is not None:
        assert n == load.BATCH
        sent += n
        t += 0.001
    assert sent == 1000 * load.BATCH and t == pytest.approx(1.0)


def test_flood_ports_are_all_new_flows_until_the_port_space_is_used_up():
    pairs = [load.flood_ports(i, 20000, 3, 1024, 4) for i in range(12)]
    assert len(set(pairs)) == 12
    assert pairs[:5] == [(20000, 1024), (20000, 1025), (20000, 1026), (20000, 1027), (20001, 1024)]
    assert load.flood_ports(12, 20000, 3, 1024, 4) == pairs[0]      # wraps after dports * sports
    assert load.distinct_flows(100, 3, 4) == 12 and load.distinct_flows(5, 3, 4) == 5
    fixed = [load.flood_ports(i, 20000, 5, 1024, 4, fixed_dport=7000) for i in range(5)]
    assert {d for _s, d in fixed} == {7000} and len(set(fixed)) == 5
    assert load.distinct_flows(100, 5, 4, fixed_dport=7000) == 5


def test_connect_ports_cycle_or_leave_the_choice_to_the_kernel():
    assert [load.connect_port(i, 20000, 3) for i in range(4)] == [20000, 20001, 20002, 20000]
    assert load.connect_port(5, 20000, 0) == 0


def test_outcome_counts():
    assert load.outcome_counts([[0, 1.0, "ok", 5], [1, 1.1, "timeout", None], [2, 1.2, "ok", 7]]) == \
        {"ok": 2, "timeout": 1}


@pytest.mark.parametrize("argv, why", [
    (["connect", "--dst", "1.2.3.4", "--port", "70000", "--rate", "1", "--seconds", "1"], "--port"),
    (["flood", "--dst", "1.2.3.4", "--rate", "1", "--seconds", "1", "--sport-base", "65000", "--sports", "1000"],
     "passes port 65535"),
    (["flood", "--dst", "1.2.3.4", "--rate", "1", "--seconds", "1", "--sports", "0"], "must be >= 1"),
])
def test_bad_arguments_are_one_line_errors(argv, why, capsys):
    assert load.main(argv) == 2
    err = capsys.readouterr().err
    assert why in err and err.count("\n") == 1


def test_a_connect_rate_must_be_positive_a_flood_rate_may_be_zero():
    with pytest.raises(SystemExit):
        load.parser().parse_args(["connect", "--dst", "1.2.3.4", "--port", "1", "--rate", "0", "--seconds", "1"])
    with pytest.raises(SystemExit):
        load.parser().parse_args(["flood", "--dst", "1.2.3.4", "--rate", "-1", "--seconds", "1"])
    args = load.parser().parse_args(["flood", "--dst", "1.2.3.4", "--rate", "0", "--seconds", "1", "--start-at", "5"])
    assert (args.rate, args.start_at) == (0.0, 5.0)


# --- the generators on loopback --------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(*args: str) -> list[dict]:
    out = subprocess.run([sys.executable, "-m", "testbed.measure.load", *args], cwd=str(REPO), capture_output=True,
                         text=True, timeout=60, check=True).stdout
    return [json.loads(line) for line in out.splitlines()]


def test_connect_against_serve_on_loopback_records_every_connection():
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "testbed.measure.load", "serve", "--port", str(port), "--bind",
                               "127.0.0.1"], cwd=str(REPO), stdout=subprocess.PIPE, text=True)
    try:
        assert "ready" in json.loads(server.stdout.readline())
        records = _run("connect", "--dst", "127.0.0.1", "--port", str(port), "--rate", "200", "--seconds", "0.5",
                       "--sport-base", "0", "--sports", "0")
    finally:
        server.terminate()
        served = json.loads(server.communicate(timeout=10)[0].splitlines()[-1])
    conns = connections(records)
    final = records[-1]
    assert final["done"] and final["offered"] == 100 == len(conns)
    assert sorted(c.seq for c in conns) == list(range(100))
    assert final["outcomes"] == {"ok": 100} and success(conns) == 1.0
    assert all(c.latency_us is not None and c.latency_us >= 0 for c in conns)
    assert served["accepted"] == 100


def test_connect_to_a_closed_port_is_refused_not_ok():
    records = _run("connect", "--dst", "127.0.0.1", "--port", str(_free_port()), "--rate", "50", "--seconds", "0.1",
                   "--sports", "0")
    assert records[-1]["outcomes"] == {"ECONNREFUSED": 5}
    assert success(connections(records)) == 0.0


@pytest.mark.skipif(os.geteuid() != 0, reason="the flood's raw socket needs root")
def test_flood_sends_one_datagram_per_new_flow_to_a_sink():
    port = _free_port()
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", port))
    sink.settimeout(2)
    try:
        records = _run("flood", "--dst", "127.0.0.1", "--rate", "400", "--seconds", "0.1", "--fixed-dport", str(port),
                       "--sport-base", "30000", "--sports", "1000")
        sources = {sink.recvfrom(2048)[1][1] for _ in range(40)}
    finally:
        sink.close()
    final = records[-1]
    assert final["sent"] == 40 and final["errors"] == 0 and final["flows"] == 40
    assert sources == set(range(30000, 30040))


@pytest.mark.skipif(os.geteuid() != 0, reason="the flood's raw socket needs root")
def test_an_unpaced_flood_waits_for_its_start_and_walks_the_ports():
    port = _free_port()
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", port))
    sink.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    sink.settimeout(2)
    start_at = time.monotonic() + 0.5
    try:
        records = _run("flood", "--dst", "127.0.0.1", "--rate", "0", "--seconds", "0.2", "--fixed-dport", str(port),
                       "--sport-base", "30000", "--sports", "100", "--start-at", f"{start_at:.3f}")
        first = [sink.recvfrom(2048)[1][1] for _ in range(20)]
    finally:
        sink.close()
    final = records[-1]
    assert final["done"] and final["offered_rate"] == 0.0 and final["t0"] >= round(start_at, 3)
    assert final["sent"] > 100 and (final["sent"] + final["errors"]) % load.BATCH == 0
    assert final["flows"] == 100   # the ports wrapped
    assert first == list(range(30000, 30020))


# --- stream intervals and stalls -------------------------------------------------------------------
def _iv(bytes_per_interval, start=100.0, width=0.1):
    return [Interval(start + i * width, start + (i + 1) * width, b) for i, b in enumerate(bytes_per_interval)]


def test_a_stall_is_a_run_of_nearly_empty_intervals():
    ivs = _iv([1000, 1000, 0, 10, 0, 1000, 0, 1000])
    threshold = stall_threshold(ivs[:2])
    assert threshold == pytest.approx(50)                # 5% of the median unflooded interval
    got = stalls(ivs, threshold)
    assert [(round(t - 100, 3), round(s, 3)) for t, s in got] == [(0.2, 0.3), (0.6, 0.1)]
    assert longest_stall(ivs, threshold) == pytest.approx(0.3)
    assert longest_stall(_iv([1000] * 5), threshold) == 0.0
    assert stall_threshold([]) == 1.0


def test_a_gap_between_intervals_ends_a_stall():
    ivs = [Interval(0.0, 0.1, 0), Interval(0.5, 0.6, 0)]
    assert stalls(ivs, 10) == [(0.0, pytest.approx(0.1)), (0.5, pytest.approx(0.1))]


def test_window_throughput_counts_whole_intervals_inside_it():
    ivs = _iv([1250] * 10, start=0.0)                    # 1250 B per 100 ms = 100 kbit/s
    assert window_bps(ivs, 0.0, 1.0) == pytest.approx(100_000)
    assert window_bps(ivs, 0.25, 0.65) == pytest.approx(100_000)   # 0.3..0.6 only
    assert window_bps(ivs, 5.0, 6.0) is None


def test_iperf3_intervals_prefer_the_receivers_and_shift_to_the_harness_clock():
    def ivs(*bs):
        return [{"sum": {"start": i * 0.1, "end": (i + 1) * 0.1, "bytes": b}} for i, b in enumerate(bs)]
    report = {"intervals": ivs(5, 6), "server_output_json": {"intervals": ivs(7, 8, 9)}}
    got, side = intervals_of(report, 50.0)
    assert side == "receiver" and [i.bytes for i in got] == [7, 8, 9] and got[0].start == 50.0
    got, side = intervals_of({"intervals": ivs(5, 6)}, 0.0)
    assert side == "sender" and [i.bytes for i in got] == [5, 6]


def test_connection_records_windows_and_latencies():
    recs = [{"c": [0, 1.0, "ok", 100]}, {"c": [1, 1.5, "timeout", None]}, {"c": [2, 2.0, "ok", 300]}, {"done": True}]
    conns = connections(recs)
    assert conns[0] == Connection(0, 1.0, "ok", 100) and conns[0].ok and not conns[1].ok
    assert [c.seq for c in between(conns, 1.0, 2.0)] == [0, 1]
    assert latencies(conns) == [100, 300]
    assert success(conns) == pytest.approx(2 / 3) and success([]) is None


# --- table samples ---------------------------------------------------------------------------------
def test_a_pressure_reply_is_one_flat_row():
    reply = {"entries": 10, "capacity": 100, "held": 2, "unreplied": 4, "installs": 7, "entries_installed": 14,
             "evictions": 1, "unreplied_aged": 3, "punts_queued": 5, "tokens": None, "setup_rate": 0,
             "vms": {"tap1": {"entries": 6, "limit": 25, "held": 1, "blocked": False, "refused": 0}}}
    row = table_row(reply)
    assert row["entries"] == 10 and row["unreplied"] == 4 and row["tokens"] is None
    assert set(row) == set(FIELDS)
    assert owner_rows(reply)["tap1"]["limit"] == 25
    assert table_row({"entries": 3})["held"] is None      # a key the reply lacks is None, not a KeyError


def test_with_flow_merges_the_section_or_names_the_refusal():
    topo = load_topology(REPO / "topologies" / "default.yaml")
    t = with_flow(topo, {"mode": "reactive"})
    assert t.raw["flow"]["mode"] == "reactive" and "flow" not in topo.raw
    assert with_flow(t, {"capacity": 64}).raw["flow"] == {"mode": "reactive", "capacity": 64}
    with pytest.raises(TopologyError, match="vm_flow_limit"):
        with_flow(topo, {"vm_flow_limit": 0})
