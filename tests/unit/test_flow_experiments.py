"""The flow experiments' pure parts (experiments/flow_pressure*.py, capacity*.py, flowbed.py): the
protections settings, the capacity probe's rate, a phase's figures and the targets, the summaries
with the keys the issue names, the sweep, saturation and the capacity definition, the latency
ratios, the flow settings through the topology, and the plots."""
import argparse
import json

import pytest

from experiments import capacity, common, flow_pressure, flowbed
from experiments import capacity_report as crep
from experiments import flow_pressure_report as frep
from experiments.common import ExperimentError
from testbed import REPO
from testbed.measure import flowrecs
from testbed.measure.loadrun import Connection, Interval
from testbed.topology import load as load_topology

TOPOLOGY = load_topology(REPO / "topologies" / "default.yaml")


# --- flow_pressure: settings and roles -------------------------------------------------------------
def test_protections_off_sets_every_limit_to_the_capacity_and_ages_unreplied_like_the_rest():
    off = flow_pressure.setting_flow("off", 1000, 180.0)
    assert off == {"capacity": 1000, "vm_flow_limit": 1000, "network_flow_limit": 1000, "unreplied_timeout": 180.0,
                   "held_limit": 1000, "vm_held_limit": 1000}
    assert flow_pressure.setting_flow("on", 1000, 180.0) == {"capacity": 1000}
    assert flow_pressure.setting_flow("default", 1000, 180.0) == {}


def test_roles_of_the_default_topology_and_what_is_refused():
    cfg = flow_pressure.Config()
    topo = flow_pressure.with_neighbour(TOPOLOGY, cfg)
    roles = flow_pressure.pick_roles(topo, cfg)
    assert roles.flooder["server"] == roles.victim["server"] == roles.neighbour["server"] == "srv1"
    assert roles.flooder["network"] == roles.neighbour["network"] == "red" and roles.victim["network"] == "blue"
    assert roles.neighbour["address"] == "192.168.1.15" and roles.servers == ["srv1", "srv3"]
    assert flow_pressure.with_neighbour(topo, cfg) is topo          # added once
    with pytest.raises(ExperimentError, match="another network"):
        flow_pressure.pick_roles(topo, flow_pressure.Config(victim="red1", victim_dst="red3"))
    with pytest.raises(ExperimentError, match="share a server"):
        flow_pressure.pick_roles(topo, flow_pressure.Config(victim="blue2", victim_dst="blue3"))
    with pytest.raises(ExperimentError, match="no VM 'nope'"):
        flow_pressure.pick_roles(topo, flow_pressure.Config(flooder="nope"))
    with pytest.raises(ExperimentError, match="flooder's network and on its server"):
        flow_pressure.pick_roles(topo, flow_pressure.Config(neighbour="red2"))
    with pytest.raises(ExperimentError, match="adding the neighbour VM red5"):
        flow_pressure.with_neighbour(TOPOLOGY, flow_pressure.Config(neighbour_address="192.168.1.11"))


def test_quick_and_the_argument_checks():
    args = flow_pressure.parser().parse_args(["--quick", "--settings", "on", "--multiples", "1,10"])
    cfg, invalid = flow_pressure.config_from(args)
    assert invalid is None and cfg.flood == 3.0 and cfg.settings == ("on",) and cfg.multiples == (1.0, 10.0)
    _cfg, invalid = flow_pressure.config_from(flow_pressure.parser().parse_args(["--capacity", "8"]))
    assert "--capacity" in invalid
    with pytest.raises(argparse.ArgumentTypeError):
        flow_pressure._settings("on,sideways")
    with pytest.raises(argparse.ArgumentTypeError):
        common.numbers("1,-3")


# --- flow_pressure: figures, targets, summary ------------------------------------------------------
def test_install_rate_leaves_out_the_ramp_and_a_full_table():
    samples = [(0.0, 0, 0, 100), (1.0, 10, 20, 100), (2.0, 40, 60, 100), (3.0, 70, 80, 100),
               (4.0, 100, 95, 100), (5.0, 100, 95, 100)]
    # windows: 10/s (ramp, left out), 30/s, 30/s, then the table passed 90% and installs stopped
    assert frep.install_rate(samples) == 30
    assert frep.install_rate([(0.0, 0, 0, None), (1.0, 0, 0, None)]) is None


def _phase(setting="on", multiple=10.0, victim_ok=20, victim_bad=0, stall_intervals=0, lost=0, rss=(50, 50, 50)):
    t0, f0, f1 = 100.0, 102.0, 112.0
    conns = [Connection(i, t0 + 0.05 * i, "ok", 1000) for i in range(20)]          # baseline
    conns += [Connection(100 + i, f0 + 0.1 * i, "ok", 2000 + i) for i in range(victim_ok)]
    conns += [Connection(200 + i, f0 + 5 + 0.1 * i, "timeout", None) for i in range(victim_bad)]
    ivs = [Interval(t0 + 0.1 * i, t0 + 0.1 * (i + 1), 1000) for i in range(20)]
    ivs += [Interval(f0 + 0.1 * i, f0 + 0.1 * (i + 1), 0 if i < stall_intervals else 600) for i in range(100)]
    phase = {"setting": setting, "multiple": multiple, "offered_rate": 50000.0, "t0": t0, "flood_t0": f0,
             "flood_t1": f1, "t_end": f1 + 1, "flood": {"rate": 49000.0, "sent": 490000, "tx_dropped": 7},
             "victim": {}, "stream": {"side": "receiver"},
             "ping": {"sent": 1300, "received": 1300 - lost, "lost": lost, "loss_percent": 0.0, "t0": t0,
                      "interval": 0.01, "lost_seqs": [300 + i for i in range(lost)]},
             "connections": conns, "intervals": ivs}
    rows = [{"t": f0 + 1, "server": "srv1", "label": {"setting": setting, "multiple": multiple}, "entries": 4000,
             "held": 10, "unreplied": 3000, "evictions": 5, "unreplied_aged": 0, "rss_mb": rss[0]},
            {"t": (f0 + f1) / 2, "server": "srv1", "label": {"setting": setting, "multiple": multiple},
             "entries": 4096, "held": 0, "unreplied": 4000, "evictions": 9, "unreplied_aged": 0, "rss_mb": rss[1]},
            {"t": f1 - 0.5, "server": "srv1", "label": {"setting": setting, "multiple": multiple}, "entries": 4096,
             "held": 0, "unreplied": 4000, "evictions": 9, "unreplied_aged": 0, "rss_mb": rss[2]}]
    return phase, rows


def test_phase_figures_windows_stream_and_victim():
    phase, rows = _phase(victim_ok=18, victim_bad=2, stall_intervals=3)
    f = frep.phase_figures(phase, rows)
    assert f["victim_connections"] == 20 and f["victim_success"] == pytest.approx(0.9)
    assert f["victim_success_baseline"] == 1.0
    assert f["victim_latency_us_median"] == pytest.approx(2008.5)
    assert f["stream_baseline_bps"] == pytest.approx(80_000)          # 1000 B / 100 ms, slow start left out
    assert f["stream_ratio_mean"] == pytest.approx((97 * 600) / 100 / 1000)
    assert f["stream_ratio"] == pytest.approx((7 * 600) / 10 / 1000)        # the first second: 3 empty intervals
    assert f["longest_stall_s"] == pytest.approx(0.3)
    assert f["peak_entries"] == 4096 and f["peak_unreplied"] == 4000 and f["evictions"] == 9
    assert f["rss_growth_second_half"] == 0.0
    phase, rows = _phase(lost=3)
    phase["ping"]["lost_seqs"] = [1, 250, 1250]                  # sent at t0, t0 + 2.49 s, t0 + 12.49 s
    f = frep.phase_figures(phase, rows)
    assert (f["ping_lost_baseline"], f["ping_lost_flood"], f["ping_lost_tail"]) == (1, 1, 1)


def test_the_worst_second_decides_what_the_stream_kept():
    ivs = [Interval(0.1 * i, 0.1 * (i + 1), 0 if 10 <= i < 20 else 1000) for i in range(40)]
    assert frep.worst_window_ratio(ivs, 0.0, 4.0, 80_000) == 0.0
    assert frep.worst_window_ratio(ivs, 2.0, 4.0, 80_000) == pytest.approx(1.0)
    assert frep.worst_window_ratio(ivs, 0.0, 4.0, None) is None
    assert frep.worst_window_ratio(ivs, 0.0, 0.5, 80_000) is None              # no whole second


def test_targets_met_and_not_met():
    good = {"10": frep.phase_figures(*_phase()), "1": frep.phase_figures(*_phase(multiple=1.0))}
    assert all(t["met"] for t in frep.targets(good, "10").values())
    bad = {"10": frep.phase_figures(*_phase(victim_ok=10, victim_bad=10, stall_intervals=4, lost=3,
                                            rss=(50, 50, 60)))}
    t = frep.targets(bad, "10")
    assert not any(v["met"] for k, v in t.items() if k != "stream_throughput_kept")
    assert t["same_network_ping_lost"]["value"] == 3 and t["victim_success_at_top"]["value"] == 0.5
    assert t["forwarder_memory_bounded"]["value"] == pytest.approx(0.2)


def test_summary_has_the_issues_keys_judged_on_protections_on():
    p_on, rows_on = _phase("on", lost=0)
    p_off, rows_off = _phase("off", victim_ok=5, victim_bad=15, lost=40)
    used = {s: {"applied": "topology", "pushed_flow": {"capacity": 16384}}
            for s in ("off", "on")}
    s = frep.summarize([p_off, p_on], rows_on + rows_off, {"flows_per_s": 5000.0, "how": "probe"}, "srv1", used)
    assert s["targets_setting"] == "on" and s["top_multiple"] == "10"
    assert s["victim_success_at_10x"] == 1.0 and s["established_lost_packets"] == 0
    assert s["phases"]["off"]["10"]["victim_success"] == 0.25 and s["phases"]["off"]["10"]["ping_lost"] == 40
    assert s["table_capacity"] == {"off": 16384, "on": 16384}
    lines = frep.summary_lines(s)
    assert any("victim_success_at_top" in line and line.endswith(": met") for line in lines)
    assert not any("note:" in line for line in lines)


def test_settings_not_through_a_flow_section_are_noted():
    p, rows = _phase("default")
    used = {"default": {"applied": "defaults", "pushed_flow": {}}}
    s = frep.summarize([p], rows, {"flows_per_s": 5000.0, "how": "probe"}, "srv1", used)
    lines = frep.summary_lines(s)
    assert s["targets_setting"] == "default"
    assert [line for line in lines if "note:" in line] == [
        "note: default: flow settings defaults (not through a topology flow: section)"]


def test_raw_rows_carry_phase_relative_times_and_windows():
    p, rows = _phase()
    conn_rows = frep.connection_rows([p])
    assert {r["window"] for r in conn_rows} == {"baseline", "flood"}
    assert conn_rows[0]["t_rel"] == 0.0
    samples = frep.sample_rows([dict(r, owners={}) for r in rows], [p])
    assert samples[0]["t_rel"] == pytest.approx(3.0) and samples[0]["setting"] == "on"
    assert "connections" not in frep.phase_record(p)


# --- capacity: sweep, saturation, definition --------------------------------------------------------
def test_sweep_rates_rise_from_a_share_of_the_cap():
    assert crep.sweep_rates(500, None, 0.2, 400, 1.5, 400) == [100.0, 150.0, 225.0, 337.5]
    assert crep.sweep_rates(0, None, 0.2, 400, 2.0, 2000) == [400.0, 800.0, 1600.0]
    assert crep.sweep_rates(500, (10, 20), 0.2, 400, 2.0, 2000) == [10.0, 20.0]


def test_modes_alternate_across_caps_and_flow_sections():
    assert capacity.runs_in_order((250.0, 0.0)) == [("proactive", 250.0), ("reactive", 250.0),
                                                    ("proactive", 0.0), ("reactive", 0.0)]
    cfg = capacity.Config()
    assert capacity.flow_of("reactive", 0.0, cfg) == {"mode": "reactive"}
    assert capacity.flow_of("proactive", 500.0, cfg) == {"mode": "proactive", "setup_rate": 500.0, "burst_tokens": 25}
    assert capacity.burst_for(20.0, cfg) == 4 and capacity.burst_for(20.0, capacity.Config(burst_tokens=9)) == 9
    assert capacity.flow_of("reactive", 250.0, cfg, 65536) == {"mode": "reactive", "vm_flow_limit": 65536,
                                                               "network_flow_limit": 65536, "setup_rate": 250.0,
                                                               "burst_tokens": 12}
    assert capacity.owner_limits(TOPOLOGY) == 65536                      # the default table's capacity
    assert capacity.owner_limits(flowbed.flow_topology(TOPOLOGY, {"capacity": 4096})[0]) == 4096


def _pt(mode, cap, rate, succ, lat=None):
    return {"mode": mode, "cap": cap, "offered_rate": rate, "completed_per_s": rate * succ, "success": succ,
            "latency_us_median": lat, "entries_per_install": 2.0 if mode == "proactive" else 1.0,
            "decisions_per_connection": 2.0 if mode == "proactive" else 4.0, "peak_entries_client": 10,
            "peak_entries_server": 8}


def test_saturation_and_the_two_capacity_figures():
    pts = [_pt("reactive", 500, 100, 1.0), _pt("reactive", 500, 200, 1.0), _pt("reactive", 500, 300, 0.9),
           _pt("reactive", 500, 400, 0.6)]
    assert not crep.saturated(pts[:3], 2) and crep.saturated(pts, 2)
    assert crep.capacity(pts) == 270.0             # the completed rate at saturation
    assert crep.capacity_99(pts) == 200
    assert crep.capacity([]) is None and crep.capacity_99([_pt("reactive", 0, 5, 0.5)]) is None


def test_latency_ratio_at_the_common_rate_nearest_the_share():
    pts = [_pt("proactive", 500, r, 1.0, lat=1000) for r in (100, 200, 300, 400)]
    pts += [_pt("reactive", 500, r, 1.0, lat=lat) for r, lat in ((100, 2000), (200, 3000), (300, 9000))]
    got = crep.latency_ratio(pts, 500, 0.5, 400.0)
    assert got["offered_rate"] == 200 and got["ratio"] == 3.0
    assert crep.latency_ratio(pts, 500, 0.9, 400.0)["offered_rate"] == 400 - 100   # 400 has no reactive point
    assert crep.latency_ratio(pts, 500, 0.5, None) is None


def test_capacity_summary_ratio_per_cap_targets_and_the_middle_cap():
    pts = []
    for cap, pro, rea in ((250, 240, 125), (500, 480, 250), (1000, 700, 500), (0, 3000, 2900)):
        pts += [_pt("proactive", cap, pro, 1.0, 1000), _pt("proactive", cap, 2 * pro, 0.5, 5000)]
        pts += [_pt("reactive", cap, rea, 1.0, 3000), _pt("reactive", cap, 2 * rea, 0.5, 9000)]
    s = crep.summarize(pts, (250.0, 500.0, 1000.0, 0.0), {"x": {"applied": "topology"}})
    assert crep.middle_cap((1000.0, 250.0, 0.0, 500.0)) == 500.0 and crep.middle_cap((0.0,)) is None
    assert s["headline_cap"] == 500.0
    assert s["capacity_ratio_proactive_over_reactive"] == pytest.approx(480 / 250)
    assert s["capacity"]["250"]["met"] and s["capacity"]["500"]["met"] and not s["capacity"]["1000"]["met"]
    assert s["capacity"]["0"]["met"] is None and s["capacity_ratio_uncapped"] == pytest.approx(3000 / 2900)
    assert s["targets_met"] is False
    assert s["occupancy"]["proactive"]["entries_per_install"] == 2.0
    assert s["occupancy"]["reactive"]["decisions_per_connection"] == 4.0
    lines = crep.summary_lines(s)
    assert sum("NOT met" in line for line in lines) == 1 and sum(line.endswith(": met") for line in lines) == 2


def test_uncapped_only_the_headline_is_the_uncapped_ratio():
    pts = [_pt("proactive", 0.0, 3000, 1.0, 1000), _pt("reactive", 0.0, 1500, 1.0, 2000)]
    s = crep.summarize(pts, (0.0,), {})
    assert s["headline_cap"] == 0.0 and s["capacity_ratio_proactive_over_reactive"] == 2.0
    assert s["targets_met"] is None


def test_point_figures_count_decisions_per_connection_and_entries_per_decision():
    conns = [Connection(i, 1.0, "ok", 100 + i) for i in range(8)] + [Connection(8, 1.0, "timeout", None),
                                                                     Connection(9, 1.0, "ECONNREFUSED", None)]
    counters = {"srv1": {"decisions": 10, "installs": 10, "entries_installed": 20},
                "srv3": {"decisions": 10, "installs": 10, "entries_installed": 20}}
    p = crep.point_figures("proactive", 0.0, 100.0, 0.1, conns, {"outcomes": {"ok": 8}}, counters)
    assert p["connected"] == 8 and p["completed_per_s"] == pytest.approx(80) and p["success"] == 0.8
    assert p["decisions_per_connection"] == 2.0 and p["entries_per_install"] == 2.0
    assert p["latency_us_median"] == pytest.approx(103.5)
    assert set(crep.POINT_FIELDS) == set(p)
    samples = [{"server": "srv1", "label": {"mode": "proactive", "cap": 0.0, "rate": 100.0}, "entries": 30},
               {"server": "srv3", "label": {"mode": "proactive", "cap": 0.0, "rate": 100.0}, "entries": 12},
               {"server": "srv1", "label": {"mode": "", "cap": None, "rate": None}, "entries": 99}]
    crep.add_occupancy([p], samples, "srv1")
    assert (p["peak_entries_client"], p["peak_entries_server"]) == (30, 12)


# --- flowbed: settings through the topology -------------------------------------------------------
def test_flow_settings_go_through_the_topology_and_a_refusal_is_one_line():
    assert flowbed.flow_topology(TOPOLOGY, {}) == (TOPOLOGY, "defaults")
    topo, how = flowbed.flow_topology(TOPOLOGY, {"mode": "reactive", "setup_rate": 250.0})
    assert how == "topology" and topo.raw["flow"] == {"mode": "reactive", "setup_rate": 250.0}
    assert "flow" not in TOPOLOGY.raw
    with pytest.raises(ExperimentError) as err:
        flowbed.flow_topology(TOPOLOGY, {"no_such_key": 1})
    assert "no_such_key" in str(err.value) and "\n" not in str(err.value)


# --- plots -----------------------------------------------------------------------------------------
def test_both_experiments_plot(tmp_path):
    p_on, rows = _phase("on")
    used = {"on": {"applied": "topology", "pushed_flow": {}}}
    s = frep.summarize([p_on], rows, {"flows_per_s": 5000.0, "how": "probe"}, "srv1", used)
    frep.plot([p_on], rows, s, tmp_path / "flow_pressure.png")
    assert (tmp_path / "flow_pressure.png").stat().st_size > 10000
    assert (tmp_path / "flow_pressure_time.png").stat().st_size > 10000
    pts = [_pt("proactive", 0.0, 100, 1.0, 1000), _pt("reactive", 0.0, 100, 1.0, 2000)]
    crep.plot(pts, crep.summarize(pts, (0.0,), {}), tmp_path / "capacity.png")
    assert (tmp_path / "capacity.png").stat().st_size > 10000


def test_flow_records_count_a_phases_evictions_and_refusals_exactly(tmp_path, monkeypatch):
    flushed = []
    monkeypatch.setattr(flowrecs.introspect, "query", lambda rundir, s, op, **kw: flushed.append((s, op, kw)))
    files = tmp_path / "flows"
    files.mkdir()
    old = {"kind": "flow", "server": "srv1", "end_reason": "flush"}
    (files / "srv1.jsonl").write_text(json.dumps(old) + "\n")
    window = flowrecs.RecordWindow(tmp_path, ["srv1"])
    mark = window.mark()
    new = [{"kind": "flow", "server": "srv1", "end_reason": "evicted"}] * 3 + [
        {"kind": "flow", "server": "srv1", "end_reason": "unreplied_timeout"},
        {"kind": "refused", "server": "srv1", "reason": "vm_flow_limit", "flows": 40},
        {"kind": "refused", "server": "srv1", "reason": "vm_flow_limit", "flows": 2},
        {"kind": "flow", "server": "srv3", "end_reason": "evicted"}]
    with (files / "srv1.jsonl").open("a") as f:
        f.write("".join(json.dumps(r) + "\n" for r in new) + '{"kind": "fl')    # half a line: skipped
    got = flowrecs.counts(window.since(mark), "srv1")
    assert got == {"ended": {"evicted": 3, "unreplied_timeout": 1}, "refused": {"vm_flow_limit": 42}}
    assert flushed == [("srv1", "records", {"flush": True})] * 2
    during = [{"evictions": 1}, {"evictions": 2}]        # the samples saw 2 of the 3
    fig = frep.record_figures(got, during)
    assert (fig["evictions"], fig["evictions_sampled"], fig["unreplied_aged"]) == (3, 2, 1)
    assert fig["refused"] == {"vm_flow_limit": 42}
    assert frep.record_figures(None, during)["evictions"] == 2           # no records: the sampled peak
