"""The throughput bench's arithmetic and report, and the hop-floor helpers that need no root."""
import os
import subprocess
import sys
import time
from types import SimpleNamespace

import psutil
import pytest
from scapy.all import ICMP, raw

from testbed import fabric_tso, hop_floor
from testbed.bench_throughput import report_lines, summarize
from testbed.measure.throughput import vrouter_pids
from testbed.overlay import forwarder_name
from vrouter.core.latency import LEGS, SEND_CALLS


def _run(mode, streams, gbps, **extra):
    r = {"mode": mode, "streams": streams, "gbps": gbps, "retransmits": 0, "cpu_s_per_gb": 10.0}
    r.update(extra)
    return r


def _result(overlay_on=0.5, overhead=900.0, floor_hop=120.0):
    runs = [_run("underlay", 1, 0.5), _run("kernel_vxlan", 1, 0.4), _run("overlay_off", 1, 0.3),
            _run("overlay_on", 1, overlay_on, gro_segments_per_merge=12.0)]
    return {"runs": runs, "topology": "t", "encapsulation": "mplsoudp", "client": "a", "server": "b",
            "client_vm": "v1", "server_vm": "v2", "seconds": 3.0,
            "rtt_us": {"underlay_median": 500.0, "overlay_median": 500.0 + overhead, "overhead_median": overhead,
                       "kernel_vxlan_median": 540.0, "kernel_vxlan_overhead_median": 40.0,
                       "hop_floor": {"kernel_echo": 100.0, "python_echo": 100.0 + floor_hop, "hop": floor_hop}}}


def test_ratios_and_targets():
    r = _result(overlay_on=0.52, overhead=140.0)
    r.update(summarize(r))
    q = r["ratios"]["1"]
    assert (round(q["c_over_a"], 2), round(q["d_over_a"], 2), round(q["d_over_b"], 2)) == (0.6, 1.04, 1.3)
    met = r["targets_met"]
    assert met["RTT overhead <= 480 us"] and met["RTT overhead <= 300 us (stretch)"]
    assert met["(d) >= 1.0 x kernel VXLAN, 1 and 8 streams"]
    assert met["(d) >= 0.9 x underlay, 1 and 8 streams (the physical limit)"]
    assert not met["vrouter CPU <= 8 s per GB, GRO/GSO on"]          # 10 s/GB in _run
    assert met["GRO segments per merge >= 8"]
    r = _result(overlay_on=0.38, overhead=400.0)
    r.update(summarize(r))
    met = r["targets_met"]
    assert met["RTT overhead <= 480 us"] and not met["RTT overhead <= 300 us (stretch)"]
    assert not met["(d) >= 1.0 x kernel VXLAN, 1 and 8 streams"]
    assert not met["(d) >= 0.9 x underlay, 1 and 8 streams (the physical limit)"]


def test_report_names_the_hop_floor_and_the_kernel_rtt():
    r = _result(overhead=900.0, floor_hop=120.0)
    r.update(summarize(r))
    text = "\n".join(report_lines(r))
    assert "kernel VXLAN: 540 us, overhead 40 us" in text
    assert "one idle Python process hop here: 120 us" in text
    assert "floor 480 us, ours 225 us per hop" in text
    assert "target RTT overhead <= 480 us: NOT met" in text
    assert "round-trip breakdown: not measured (no complete round trip was stamped)" in text
    assert "fabric setting: OVS userspace TSO off" in text
    assert "bare Python relay" not in text          # an older result without the relay figures
    r["rtt_us"].update(relay_median=1100.0, relay_overhead_median=600.0)
    text = "\n".join(report_lines(r))
    assert "bare Python relay (TAP + UDP, nothing else, scheduled as an idle vrouter loop; " \
           "testbed/relay_floor.py): 1100 us, overhead 600 us; ours 300 us above it" in text
    assert "vrouter loops after the pings" not in text     # an older result without the priority
    r["priority"] = {"a": {"rt_priority": 1, "mode": "realtime", "error": None},
                     "b": {"rt_priority": 1, "mode": "normal", "error": "SCHED_FIFO refused: Operation not permitted"},
                     "c": {"error": "no answer"}}
    assert "vrouter loops after the pings: a realtime (SCHED_FIFO 1 while idle), b normal (SCHED_FIFO refused: " \
           "Operation not permitted), c unknown (no answer)" in "\n".join(report_lines(r))
    r["rtt_us"].update(relay_median=None, relay_overhead_median=None, relay_error="relay on b did not start")
    assert "bare Python relay: not measured (relay on b did not start)" in "\n".join(report_lines(r))


def test_report_prints_the_breakdown_and_the_tso_leg():
    r = _result(overhead=900.0)
    legs = {leg: 10.0 for leg in LEGS + SEND_CALLS}
    legs["send_fabric_out"] = legs["send_fabric_back"] = 300.0
    r["breakdown"] = {"round_trips": 49, "legs_us": legs, "sum_us": 740.0, "vrouter_us": 140.0}
    r["fabric_tso"] = {"runs": [{"mode": "underlay", "streams": 1, "gbps": 6.8},
                                {"mode": "kernel_vxlan", "streams": 1, "gbps": None, "error": "iperf3: timed out"}],
                       "rtt_us": {"underlay_median": 800.0}}
    r.update(summarize(r))
    text = "\n".join(report_lines(r))
    assert "round-trip breakdown (median us over 49 stamped pings" in text
    assert "sum 740 us: vrouters and VMs 140, send + fabric 600 (the underlay's whole RTT: 500)" in text
    assert "6.800 Gbit/s" in text and "not carried (iperf3: timed out)" in text


def test_icmp_echo_request_matches_scapy():
    pkt = raw(ICMP(type=8, id=0x1234, seq=7) / b"vnet-hop")
    assert hop_floor.echo_request(0x1234, 7) == pkt


def test_python_echo_answers_every_datagram():
    rtts = hop_floor._with_echo_process(lambda client, where: [hop_floor._python_echo(client, where)
                                                                for _ in range(5)])
    assert len(rtts) == 5 and all(x > 0 for x in rtts)


def test_vrouter_pids_include_forked_workers():


    # A "dispatcher" that forks a "worker", as rps_dispatch does.
    parent = subprocess.Popen([sys.executable, "-c", "import os, time\nos.fork()\ntime.sleep(30)"])
    try:
        deadline = time.monotonic() + 5
        while not psutil.Process(parent.pid).children() and time.monotonic() < deadline:
            time.sleep(0.02)
        supervisor = SimpleNamespace(pid=lambda name: parent.pid if name == forwarder_name("srv1") else None)
        pids = vrouter_pids(SimpleNamespace(supervisor=supervisor), ["srv1"])
        assert pids[0] == parent.pid and len(pids) == 2
    finally:
        for child in psutil.Process(parent.pid).children():
            child.kill()
        parent.kill()
        parent.wait()


def test_fabric_tso_switch_refuses_while_ovs_serves_bridges(monkeypatch):
    calls = []

    def vsctl(*args):
        calls.append(args)
        return SimpleNamespace(returncode=0, stdout="vtt-l1\nvtt-s1\n" if args == ("list-br",) else "", stderr="")
    monkeypatch.setattr(fabric_tso, "_vsctl", vsctl)
    with pytest.raises(fabric_tso.FabricTsoError, match="vtt-l1, vtt-s1.*stop those testbeds"):
        fabric_tso.switch(True)
    assert calls == [("list-br",)]          # nothing was set, nothing restarted


@pytest.mark.skipif(os.geteuid() != 0, reason="a raw ICMP socket needs root")
def test_hop_floor_alternates_both_echoes():
    kernel, python = hop_floor.interleaved_rtts(4, 0.0)
    assert len(kernel) == len(python) == 4 and all(x > 0 for x in kernel + python)
    floor = hop_floor.hop_floor_us(3, 0.0)
    assert floor["hop"] == pytest.approx(floor["python_echo"] - floor["kernel_echo"])
