"""The measurement helpers' pure parts (testbed/measure/): the VM-pair picker on topology dicts, the
spread, provenance when tools are missing, the results writer, iperf3 and ping parsing, the plots."""
import ast
import csv
import json
from pathlib import Path

import pytest
import yaml

from testbed import REPO
from testbed.measure import plot as plots
from testbed.measure import provenance
from testbed.measure.pairs import PairError, pick_pair, same_servers, vm_dict
from testbed.measure.results import ResultsRun, make_unique_dir
from testbed.measure.runners import parse_iperf3, ping_loss_from_output, ping_rtts_from_output
from testbed.measure.spread import percentile_low, spread, spread_keys, spread_text
from testbed.topology import from_dict, load


def topology(vms, leaves=(("srv1", "leaf1"), ("srv2", "leaf1"), ("srv3", "leaf2"), ("srv4", "leaf2")),
             networks=("red", "blue")):
    servers = [s for s, _ in leaves]
    return from_dict({
        "name": "t", "underlay": "10.0.0.0/16",
        "switches": [{"name": "spine1", "role": "spine"}] + [{"name": n, "role": "leaf"}
                                                              for n in dict.fromkeys(leaf for _, leaf in leaves)],
        "servers": [{"name": s, "address": f"10.0.{i // 2 + 1}.{i % 2 + 1}"} for i, s in enumerate(servers)],
        "links": [[n, "spine1"] for n in dict.fromkeys(leaf for _, leaf in leaves)] + [list(p) for p in leaves],
        "virtual_networks": [{"name": n, "id": 100 * (i + 1), "subnets": ["192.168.1.0/24"]}
                             for i, n in enumerate(networks)],
        "vms": [{"name": n, "network": net, "server": s, "address": f"192.168.1.{10 + i}"}
                for i, (n, net, s) in enumerate(vms)]})


# --- pairs ----------------------------------------------------------------------------------------
def test_pair_crosses_leaves_and_is_the_first_in_file_order():
    t = topology([("r1", "red", "srv1"), ("r2", "red", "srv2"), ("r3", "red", "srv3"), ("r4", "red", "srv4")])
    p = pick_pair(t)
    assert (p.client_vm.name, p.server_vm.name) == ("r1", "r3") and p.cross_leaf
    assert p.servers == ("srv1", "srv3") and (p.client_ip, p.server_ip) == ("10.0.1.1", "10.0.2.1")
    assert p.ends == {"client": "r1@srv1", "server": "r3@srv3"}
    assert pick_pair(t) == p  # deterministic
    assert vm_dict(p.server_vm) == {"name": "r3", "network": "red", "server": "srv3", "address": "192.168.1.12"}


def test_pair_stays_in_one_network_and_can_be_asked_for_one():
    t = topology([("r1", "red", "srv1"), ("b3", "blue", "srv3"), ("b1", "blue", "srv2"), ("r2", "red", "srv2")])
    p = pick_pair(t)
    assert (p.client_vm.name, p.server_vm.name) == ("b3", "b1")
    with pytest.raises(PairError, match="network 'red' on servers under two different leaves"):
        pick_pair(t, network="red")
    same_leaf = pick_pair(t, network="red", require_cross_leaf=False)
    assert (same_leaf.client_vm.name, same_leaf.server_vm.name, same_leaf.cross_leaf) == ("r1", "r2", False)


def test_pair_refuses_a_topology_without_one():
    t = topology([("r1", "red", "srv1"), ("b3", "blue", "srv3")])
    with pytest.raises(PairError, match="needs two VMs of one virtual network"):
        pick_pair(t, require_cross_leaf=False)


def test_pairs_per_network_on_the_servers_sharing_most_networks():
    t = topology([("r1", "red", "srv1"), ("r3", "red", "srv3"), ("r4", "red", "srv4"), ("b1", "blue", "srv1"),
                  ("b4", "blue", "srv4")])
    assert pick_pair(t).servers == ("srv1", "srv3")
    best = pick_pair(t, most_networks=True)
    assert best.servers == ("srv1", "srv4")
    assert [(p.client_vm.name, p.server_vm.name) for p in same_servers(t, best)] == [("r1", "r4"), ("b1", "b4")]


def test_default_topology_pair_is_what_the_bench_always_used():
    p = pick_pair(load(REPO / "topologies" / "default.yaml"))
    assert p.ends == {"client": "red1@srv1", "server": "red3@srv3"}


# --- spread ---------------------------------------------------------------------------------------
def test_spread_min_median_max_ignores_missing_values():
    assert spread([3, None, 1, 2, 10]) == {"min": 1, "median": 2.5, "max": 10}
    assert spread([]) == {"min": None, "median": None, "max": None}
    assert spread_keys("gbps", [0.12345, 0.2], digits=3) == {"gbps_min": 0.123, "gbps_median": 0.162,
                                                              "gbps_max": 0.2}
    assert percentile_low([300, 100, 200], 0.9) == 200 and percentile_low([], 0.9) is None
    assert spread_text(spread_keys("g", [1, 2, 4]), "g", "{:.1f}") == "2.0 (1.0-4.0)"
    assert spread_text(spread([])) == "-"


# --- provenance -----------------------------------------------------------------------------------
def test_provenance_names_commit_versions_and_command():
    p = provenance.collect(started=0.0, argv=["python", "-m", "experiments.gro", "--runs", "2"])
    assert p["command"] == ["python", "-m", "experiments.gro", "--runs", "2"]
    assert p["packages"]["psutil"] and p["packages"]["matplotlib"] and p["kernel"]
    assert p["cpu_count"] >= 1 and p["python_version"].count(".") == 2 and p["started_unix"] == 0.0
    assert set(provenance.PACKAGES) == set(p["packages"])
    if "git_commit" not in p["unavailable"]:
        assert len(p["git_commit"]) == 40 and isinstance(p["git_dirty"], bool)


def test_provenance_records_null_and_why_when_tools_are_missing(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # neither git nor ovs-vsctl to be found
    p = provenance.collect(packages=("psutil", "no-such-package-here"))
    assert p["git_commit"] is None and p["git_dirty"] is None and p["ovs_version"] is None
    assert p["unavailable"]["git_commit"] == "git not found"
    assert p["unavailable"]["ovs_version"] == "ovs-vsctl not found"
    assert p["packages"] == {"psutil": p["packages"]["psutil"], "no-such-package-here": None}
    assert "not installed" in p["unavailable"]["packages.no-such-package-here"]
    json.dumps(p)  # the record is always writable


def test_provenance_outside_a_repository(tmp_path):
    p = provenance.collect(repo=tmp_path)
    assert p["git_commit"] is None and "exited with" in p["unavailable"]["git_commit"]


# --- results --------------------------------------------------------------------------------------
def test_results_run_writes_every_file_into_its_own_directory(tmp_path):
    run = ResultsRun("demo", tmp_path / "results" / "demo", argv=["x", "--y"])
    drawn = []

    def draw(path):
        fig, (ax,) = plots.figure()
        ax.plot([1, 2], [3, 4], label="a")
        plots.label(ax, "time (s)", "rate (1/s)", "one series")
        assert ax.get_legend() is None  # one series: no legend
        plots.save(fig, path, "demo")
        drawn.append(path)

    out = run.write(["k", "v"], [{"k": "a", "v": 1}, {"k": "b", "v": 2}], {"median": 1.5}, {"n": 2}, draw)
    assert out.parent == tmp_path / "results" / "demo"
    assert sorted(f.name for f in out.iterdir()) == ["config.yaml", "demo.png", "provenance.json", "raw.csv",
                                                      "summary.json"]
    assert list(csv.DictReader(open(out / "raw.csv"))) == [{"k": "a", "v": "1"}, {"k": "b", "v": "2"}]
    assert json.loads((out / "summary.json").read_text()) == {"median": 1.5}
    assert yaml.safe_load((out / "config.yaml").read_text()) == {"n": 2}
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["command"] == ["x", "--y"] and prov["finished"] and drawn == [out / "demo.png"]
    second = ResultsRun("demo", tmp_path / "results" / "demo")
    second.started = run.started  # the same second: a directory of its own all the same
    assert second.write(["k"], [], {}, {}) == out.with_name(out.name + "-2")


def test_unique_dirs_never_collide(tmp_path):
    made = {make_unique_dir(tmp_path, 0.0) for _ in range(3)}
    assert len(made) == 3 and all(d.is_dir() for d in made)


# --- runners --------------------------------------------------------------------------------------
IPERF_TCP = json.dumps({"start": {}, "end": {"sum_sent": {"bits_per_second": 2e9, "retransmits": 7},
                                             "sum_received": {"bits_per_second": 1.9e9, "seconds": 3.0}}})


def test_iperf3_report_is_parsed_after_shell_noise():
    r = parse_iperf3("warning: something\n" + IPERF_TCP, streams=8)
    assert r == {"bits_per_second": 1.9e9, "sent_bits_per_second": 2e9, "retransmits": 7, "seconds": 3.0,
                 "streams": 8}
    udp = parse_iperf3(json.dumps({"end": {"sum": {"bits_per_second": 1e8, "lost_percent": 0.5, "seconds": 2}}}),
                       udp=True)
    assert udp == {"bits_per_second": 1e8, "lost_percent": 0.5, "seconds": 2, "streams": 1}
    with pytest.raises(RuntimeError, match="iperf3: unable to connect"):
        parse_iperf3(json.dumps({"error": "unable to connect"}))
    with pytest.raises(RuntimeError, match="no JSON report: bash: iperf3: not found"):
        parse_iperf3("bash: iperf3: not found")


def test_ping_output_is_parsed():
    out = ("64 bytes from 10.0.2.1: icmp_seq=1 ttl=64 time=0.512 ms\n"
           "64 bytes from 10.0.2.1: icmp_seq=3 ttl=64 time=1.25 ms\n"
           "3 packets transmitted, 2 received, 33.3333% packet loss, time 2003ms\n")
    assert ping_loss_from_output(out) == (3, 2)
    assert ping_rtts_from_output(out) == [512.0, 1250.0]
    with pytest.raises(ValueError, match="no ping summary"):
        ping_loss_from_output("connect: Network is unreachable")


def test_grouped_bars_label_every_series(tmp_path):
    fig, (ax,) = plots.figure()
    plots.grouped_bars(ax, ["a", "b"], [plots.Bars("off", [1.0, None], points=[[0.9, 1.1], []]),
                                        plots.Bars("on", [2.0, 3.0], plots.OFF_ON["on"])])
    plots.label(ax, "group", "height (units)", "bars")
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["off", "on"]
    assert ax.get_xlabel() == "group" and ax.get_ylabel() == "height (units)" and ax.get_title() == "bars"
    plots.save(fig, tmp_path / "b.png", "title")
    assert (tmp_path / "b.png").stat().st_size > 0


# --- layering -------------------------------------------------------------------------------------
def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("path", sorted((REPO / "testbed").rglob("*.py")), ids=lambda p: str(p.relative_to(REPO)))
def test_testbed_never_imports_experiments(path):
    assert not {m for m in imported_modules(path) if m.split(".")[0] == "experiments"}
