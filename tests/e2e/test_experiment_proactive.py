"""A quick run of the main experiment: slow-path counts per exchange (never timings)."""
import csv
import json

import pytest

from experiments import proactive_flow
from testbed.topology import load

pytestmark = pytest.mark.e2e


def test_proactive_costs_2_slow_path_calls_reactive_4(tmp_path, run_root, new_prefix):
    outdir, summary = proactive_flow.run(proactive_flow.DEFAULT_TOPOLOGY, 10, new_prefix("p"),
                                         str(run_root), tmp_path / "results", progress=print)
    rows = list(csv.DictReader(open(outdir / "raw.csv")))
    assert len(rows) == 2 * 2 * 10
    assert all(r["ok"] == "1" for r in rows), [r for r in rows if r["ok"] != "1"]
    src, dst = summary["pair"]["src"]["server"], summary["pair"]["dst"]["server"]
    topo = load(proactive_flow.DEFAULT_TOPOLOGY)
    assert src != dst and topo.leaf_of(src) != topo.leaf_of(dst)
    for r in rows:
        expected = 1 if r["mode"] == "proactive" else 2
        assert (int(r[f"slowpath_{src}"]), int(r[f"slowpath_{dst}"])) == (expected, expected), r
    for mode, total in (("proactive", 2), ("reactive", 4)):
        for proto in ("tcp", "udp"):
            assert summary[mode][proto]["slowpath_mean"] == total
    saved = json.loads((outdir / "summary.json").read_text())
    assert saved["reactive"]["tcp"]["slowpath_histogram"] == {"4": 10}
    assert (outdir / "proactive_flow.png").stat().st_size > 10000
    assert "topology" in (outdir / "config.yaml").read_text()
