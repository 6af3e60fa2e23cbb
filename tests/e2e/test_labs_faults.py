"""Lab 8 (labs/08-faults) on its own testbed: right after `lab start 8` (a healthy fabric) every check
fails and says what it found; `lab solve 8` stages the solution's outage (flows established, the
controller paused, leaf2-spine1 cut, srv4 restarted) and every check passes; `lab stop` brings the
testbed down with the controller still paused, and nothing of it is left running."""
import json

import psutil
import pytest

from lab_helpers import check, run_cli, started_lab

pytestmark = pytest.mark.e2e


def test_lab_8_fails_on_the_starter_and_passes_once_solved(run_root, new_prefix, tmp_path):
    prefix = new_prefix("o")
    opts = ["--prefix", prefix, "--run-root", str(run_root)]
    with started_lab(8, run_root, prefix, tmp_path / "work") as env:
        code, results = check(env, 8)
        assert code == 1 and len(results) == 5 and all(r[0] == "FAIL" for r in results.values()), results
        outage, established, new, restarted, repair = results.values()
        assert outage[1] == ("the testbed is not in the outage of the README: the controller is not paused; "
                             "leaf2-spine1 is up")
        assert established[1].startswith("32 of 32 established flows have no entry at srv1")
        for lines in (new, restarted, repair):
            assert "there is no outage yet: the controller is not paused and leaf2-spine1 is up" in lines[1], lines
        solved = run_cli("lab", "solve", "8", env=env)
        assert solved.returncode == 0, solved.stdout + solved.stderr
        assert "testbed fault controller pause: controller paused" in solved.stdout
        code, results = check(env, 8)
        assert code == 0 and all(r == ["ok"] for r in results.values()), results
        faults = json.loads(run_cli("fault", "list", "--json", *opts, env=env).stdout)
        controller = faults["paused"]["controller"]["procs"][0]["pid"]
        assert psutil.Process(controller).status() == psutil.STATUS_STOPPED
    assert not psutil.pid_exists(controller) or psutil.Process(controller).status() == psutil.STATUS_ZOMBIE
    assert run_cli("status", *opts, env=env).returncode == 3
