"""experiments.faults end to end, tiny: a forwarder crash and a spine link cut under the traffic mix.
Counts and states, not timings: every phase measured, the fault found in the log, the traffic back."""
import json
import os
import subprocess
import sys
import uuid

import pytest

from testbed import REPO

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root and Mininet")


def test_faults_tiny(tmp_path):
    prefix = "fe" + uuid.uuid4().hex[:3]
    r = subprocess.run([sys.executable, "-m", "experiments.faults", "--quick", "--faults",
                        "forwarder-kill,controller+spine-link", "--prefix", prefix, "--out", str(tmp_path),
                        "--json"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    faults = summary["faults"]
    assert set(faults) == {"forwarder-kill", "controller+spine-link"}
    for name, f in faults.items():
        assert f["ping_sent"] > 400, name
        # the traffic came back: most pings answered, the stream lived to the end
        assert f["ping_lost"] < f["ping_sent"] // 2, (name, f)
        assert f["stream_survived"], (name, f)
        assert f["connections"] > 50 and f["connections_failed"] < f["connections"] // 2, (name, f)
    assert faults["controller+spine-link"]["target"].endswith("(controller paused)")
    (outdir,) = list(tmp_path.iterdir())
    events = [json.loads(line) for line in (outdir / "faults.jsonl").read_text().splitlines()]
    actions = [e["action"] for e in events]
    assert "kill" in actions and "pause" in actions and "link-down" in actions and "resume" in actions
    assert (outdir / "faults_forwarder-kill.png").stat().st_size > 0
    assert (outdir / "faults_controller_spine-link.png").stat().st_size > 0
