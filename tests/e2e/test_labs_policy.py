"""Lab 4 (labs/04-policies) on a real testbed: its check fails on the starter (the previous admin's
policy the lab's topology starts with), `lab solve` applies the solution's policy and the check passes."""
import pytest

from lab_helpers import lab_env, run_cli

pytestmark = pytest.mark.e2e


def test_lab_4_fails_on_the_starter_and_passes_once_solved(run_root, new_prefix, tmp_path):
    prefix, work = new_prefix("p"), tmp_path / "work"
    env = lab_env(work)
    r = run_cli("lab", "start", "4", "--prefix", prefix, "--run-root", str(run_root), env=env)
    try:
        assert r.returncode == 0, r.stderr
        starter = run_cli("lab", "check", "4", env=env)
        assert starter.returncode == 1, starter.stdout + starter.stderr
        out = starter.stdout
        assert "FAIL  the connections that must work get through" in out
        assert ("red1 -> red3 tcp 8080 (the web application, bottom of its range) failed: srv3 dropped the reply"
                in out), out                                   # the previous admin forgot the replies
        assert "red2 -> red1 icmp got through (allowed by rule 1 (allow icmp" in out, out
        assert "where to look: your policy.yaml, applied with 'sudo testbed net policy red --file" in out
        solved = run_cli("lab", "solve", "4", env=env)
        assert solved.returncode == 0, solved.stdout + solved.stderr
        checked = run_cli("lab", "check", "4", env=env)
        assert checked.returncode == 0 and checked.stdout.rstrip().endswith("all 2 checks pass"), checked.stdout
    finally:
        stop = run_cli("lab", "stop", env=env)
    assert stop.returncode == 0, stop.stderr
