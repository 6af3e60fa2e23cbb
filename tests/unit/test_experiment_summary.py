"""The main experiment's arithmetic, without a testbed: what the demo prints is what the rows say."""
from experiments import gro, rps_gro
from experiments import proactive_flow as pf
from testbed.measure.pairs import pick_pair
from testbed.topology import load


def rows(mode, proto, latencies, per_server):
    return [{"mode": mode, "proto": proto, "ok": 1, "first_reply_us": us, "slowpath_total": sum(per_server),
             "slowpath_a": per_server[0], "slowpath_b": per_server[1]} for us in latencies]


def test_summary_counts_latency_and_ratio():
    data = (rows("proactive", "tcp", [100, 200, 300], (1, 1)) + rows("proactive", "udp", [50, 50], (1, 1)) +
            rows("reactive", "tcp", [300, 400, 500], (2, 2)) + rows("reactive", "udp", [100, 100], (2, 2)))
    data.append({"mode": "reactive", "proto": "udp", "ok": 0, "first_reply_us": "", "slowpath_total": 2,
                 "slowpath_a": 2, "slowpath_b": 0})
    s = pf.summarize(data, ["a", "b"])
    assert s["proactive"]["tcp"]["slowpath_mean"] == 2 and s["reactive"]["tcp"]["slowpath_mean"] == 4
    assert s["reactive"]["udp"] == {**s["reactive"]["udp"], "exchanges": 3, "ok": 2,
                                     "slowpath_histogram": {"4": 2}}
    assert s["proactive"]["tcp"]["first_reply_us_median"] == 200
    assert s["reactive"]["tcp"]["first_reply_us_p90"] == 400
    assert s["ratio_reactive_over_proactive_median_first_reply"] == {"tcp": 2.0, "udp": 2.0}
    assert s["reactive"]["tcp"]["slowpath_per_server_mean"] == {"a": 2, "b": 2}


def test_rtt_summary_and_pair_choice_prefer_different_leaves():
    assert pf.rtt_summary({"proactive": {"a": [4, 1, 3, 2], "b": []}}) == {
        "proactive": {"a": {"count": 4, "median": 2.5, "p90": 3, "min": 1, "max": 4}, "b": {"count": 0}}}
    topo = load(pf.DEFAULT_TOPOLOGY)
    pair = pick_pair(topo, require_cross_leaf=False)  # the experiment's choice (proactive_flow.run)
    src, dst = pair.client_vm, pair.server_vm
    assert src.network == dst.network and topo.leaf_of(src.server) != topo.leaf_of(dst.server)


def test_multicore_offload_summary_medians_and_ratio(tmp_path):
    runs = [("off", 0.1, 0.0, 0.0), ("on", 0.3, 16.0, 25.0), ("off", 0.2, 0.0, 0.0), ("on", 0.5, 14.0, 23.0),
            ("off", 0.15, 0.0, 0.0), ("on", 0.4, 15.0, 24.0)]
    rows = [{"mode": "rps", "run": i, "gro_gso": sw, "gbps": g, "gro_segments_per_merge": m,
             "gso_segments_per_send": s, "cpu_s_per_gb": 20.0 - 10 * (sw == "on") + i}
            for i, (sw, g, m, s) in enumerate(runs)]
    s = rps_gro.summarize(rows, ["rps"])
    assert s["rps"]["off"]["gbps_median"] == 0.15 and s["rps"]["on"]["gbps_median"] == 0.4
    assert s["rps"]["throughput_on_over_off"] == round(0.4 / 0.15, 3)
    assert s["rps"]["on"]["gro_segments_per_merge_median"] == 15.0
    assert s["rps"]["on"]["gso_segments_per_send_median"] == 24.0
    assert s["rps"]["off"]["cpu_s_per_gb_median"] == 22.0 and s["rps"]["on"]["cpu_s_per_gb_median"] == 13.0
    assert any("on/off" in line for line in rps_gro.summary_lines(s))
    rps_gro.plot(rows, s, tmp_path / "p.png")
    assert (tmp_path / "p.png").stat().st_size > 0


def test_summaries_report_the_spread_of_repeated_runs(tmp_path):
    """Added next to the existing keys: min and max with every median."""
    data = rows("proactive", "tcp", [300, 100, 200], (1, 1)) + rows("reactive", "tcp", [500, 400], (2, 2))
    s = pf.summarize(data, ["a", "b"])
    tcp = s["proactive"]["tcp"]
    assert (tcp["first_reply_us_min"], tcp["first_reply_us_median"], tcp["first_reply_us_max"]) == (100, 200, 300)
    assert s["proactive"]["udp"]["first_reply_us_min"] is None  # nothing measured: null, not an error
    s["slowpath_rtt_us"] = pf.rtt_summary({"proactive": {"a": [10, 30, 20]}, "reactive": {"a": []}})
    text = "\n".join(pf.summary_lines(s))
    assert "100 us" in text and "300 us" in text and "20 us (10-30, n=3)" in text

    runs = [(1, "off", 0.2, 30.0), (1, "on", 0.5, 12.0), (2, "off", 0.3, None), (2, "on", 0.4, 10.0),
            (3, "off", 0.1, 20.0), (3, "on", 0.6, 11.0)]
    grows = [{"run": i, "gro_gso": sw, "streams": n, "gbps": g * n, "cpu_s_per_gb": c, "gro_segments_per_merge": 4.0,
              "gso_segments_per_send": 8.0} for i, sw, g, c in runs for n in gro.STREAMS]
    g = gro.summarize(grows)
    off = g["1"]["off"]
    assert (off["gbps_min"], off["gbps_median"], off["gbps_max"]) == (0.1, 0.2, 0.3)
    assert (off["cpu_s_per_gb_min"], off["cpu_s_per_gb_median"], off["cpu_s_per_gb_max"]) == (20.0, 25.0, 30.0)
    assert off["runs"] == 3 and g["1"]["throughput_on_over_off"] == 0.5 / 0.2
    assert any("0.200 (0.100-0.300)" in line for line in gro.summary_lines(g))
    gro.plot(grows, g, tmp_path / "gro.png")
    assert (tmp_path / "gro.png").stat().st_size > 0
    r = rps_gro.summarize([{**row, "mode": "rps"} for row in grows if row["streams"] == 1], ["rps"])
    assert (r["rps"]["on"]["gbps_min"], r["rps"]["on"]["gbps_max"]) == (0.4, 0.6)
    assert r["rps"]["on"]["gbps"] == [0.5, 0.4, 0.6]
