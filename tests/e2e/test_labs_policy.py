"""Lab 4 (labs/04-policies) on a real testbed: its check fails on the starter (the previous admin's
policy the lab's topology starts with), `lab solve` applies the solution's policy and the check passes."""
import pytest

from lab_helpers import check, run_cli, started_lab

pytestmark = pytest.mark.e2e


def test_lab_4_fails_on_the_starter_and_passes_once_solved(run_root, new_prefix, tmp_path):
    with started_lab(4, run_root, new_prefix("p"), tmp_path / "work") as env:
        code, results = check(env, 4)
        assert code == 1, results
        work, fail = (results["the connections that must work get through"],
                      results["the connections that must fail are dropped by a vrouter's policy (policy_deny)"])
        assert work[0] == fail[0] == "FAIL", results
        assert any(line.startswith("red1 -> red3 tcp 8080 (the web application, bottom of its range) failed: "
                                   "srv3 dropped the reply") for line in work), work   # the admin forgot the replies
        assert any(line.startswith("red2 -> red1 icmp got through (allowed by rule 1 (allow icmp") for line in fail)
        assert any(line.startswith("where to look: your policy.yaml, applied with 'sudo testbed net policy red "
                                   "--file") for line in work), work
        solved = run_cli("lab", "solve", "4", env=env)
        assert solved.returncode == 0, solved.stdout + solved.stderr
        code, results = check(env, 4)
        assert code == 0 and len(results) == 2 and all(r == ["ok"] for r in results.values()), results
