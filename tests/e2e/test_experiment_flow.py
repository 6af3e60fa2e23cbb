"""Tiny runs of the flow experiments (flow_pressure, capacity) on a real testbed: the generators run
in the VMs, every file is written and the counts add up (never timings)."""
import csv
import json

import pytest

from experiments import capacity, flow_pressure
from testbed import DEFAULT_TOPOLOGY
from testbed.measure.load import total_items

pytestmark = pytest.mark.e2e


def test_flow_pressure_tiny(tmp_path, run_root, new_prefix):
    setting = "on"
    cfg = flow_pressure.Config(settings=(setting,), multiples=(1.0,), baseline=1.0, flood=1.5, tail=0.5,
                               probe_rate=5000.0, probe_seconds=0.5, settle=0.2)
    outdir, summary = flow_pressure.run(DEFAULT_TOPOLOGY, cfg, new_prefix("f"), str(run_root), tmp_path / "results",
                                        progress=print)
    for name in ("raw.csv", "connections.csv", "intervals.csv", "phases.json", "summary.json", "config.yaml",
                 "provenance.json", "flow_pressure.png", "flow_pressure_time.png", f"topology-{setting}.yaml"):
        assert (outdir / name).is_file(), name
    conns = list(csv.DictReader(open(outdir / "connections.csv")))
    assert len(conns) == total_items(cfg.victim_rate, cfg.baseline + cfg.flood + cfg.tail)
    assert {c["window"] for c in conns} >= {"baseline", "flood"}
    assert list(csv.DictReader(open(outdir / "intervals.csv")))
    samples = list(csv.DictReader(open(outdir / "raw.csv")))
    assert {s["server"] for s in samples} == {"srv1", "srv3"}
    answered = [s for s in samples if not s["error"]]
    assert answered and all(s["entries"] != "" and s["unreplied"] != "" for s in answered)   # "pressure" figures
    assert summary["slowpath_capacity_flows_per_s"] > 0
    phase = json.loads((outdir / "phases.json").read_text())["phases"][0]
    assert phase["flood"]["sent"] + phase["flood"]["errors"] == total_items(phase["offered_rate"], cfg.flood)
    assert summary["phases"][setting]["1"]["ping_sent"] == round((cfg.baseline + cfg.flood + cfg.tail) / 0.01)
    for key in ("victim_success_at_10x", "established_lost_packets", "memory_bounded", "targets"):
        assert key in summary, key
    assert 0.0 <= summary["victim_success_at_10x"] <= 1.0
    # The noisy neighbour meets its own limit and the victim keeps connecting: the flood asks for
    # more entries than red1's share (capacity // 4); the table holds that share plus the other
    # VMs' few hundred (the victim's connections, the stream, the pings), no more.
    fig = summary["phases"][setting]["1"]
    share = cfg.capacity // 4
    assert 2 * phase["flood"]["sent"] > 2 * share
    assert 0.9 * share <= fig["peak_entries"] <= share + 512, fig["peak_entries"]
    assert fig["victim_success"] >= 0.95 and fig["victim_success_baseline"] == 1.0


def test_capacity_tiny(tmp_path, run_root, new_prefix):
    cfg = capacity.Config(caps=(0.0,), rates=(50.0, 100.0), seconds=1.0, stop_after=2)
    outdir, summary = capacity.run(DEFAULT_TOPOLOGY, cfg, new_prefix("c"), str(run_root), tmp_path / "results",
                                   progress=print)
    points = list(csv.DictReader(open(outdir / "raw.csv")))
    assert [(p["mode"], float(p["offered_rate"])) for p in points] == [
        ("proactive", 50.0), ("proactive", 100.0), ("reactive", 50.0), ("reactive", 100.0)]
    assert [int(p["offered"]) for p in points] == [50, 100, 50, 100]
    assert len(list(csv.DictReader(open(outdir / "connections.csv")))) == 300
    # a proactive decision installs the forward and the reverse entry, a reactive one the forward only
    assert summary["occupancy"]["proactive"]["entries_per_install"] == 2.0
    assert summary["occupancy"]["reactive"]["entries_per_install"] == 1.0
    for key in ("capacity_ratio_proactive_over_reactive", "latency_ratio_at_50pct", "latency_ratio_at_90pct",
                "capacity", "occupancy"):
        assert key in summary, key
    assert set(summary["capacity"]["0"]) >= {"proactive", "reactive", "ratio"}
    for name in ("capacity.png", "topology-proactive-0.yaml", "topology-reactive-0.yaml", "points.json"):
        assert (outdir / name).is_file(), name
