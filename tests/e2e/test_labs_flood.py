"""Lab 7 (labs/07-flood) on a real testbed: its check (which floods from red1 itself) fails on the
starter, whose limits are the whole table, and passes once `lab solve` has set the solution's limits."""
import pytest

from lab_helpers import lab_env, run_cli

pytestmark = pytest.mark.e2e


def test_lab_7_fails_on_the_starter_and_passes_once_solved(run_root, new_prefix, tmp_path):
    prefix, work = new_prefix("f"), tmp_path / "work"
    env = lab_env(work)
    r = run_cli("lab", "start", "7", "--prefix", prefix, "--run-root", str(run_root), env=env)
    try:
        assert r.returncode == 0, r.stderr
        starter = run_cli("lab", "check", "7", env=env)
        assert starter.returncode == 1, starter.stdout + starter.stderr
        out = starter.stdout
        assert "FAIL  a flow limit keeps red1 below the size of srv1's table" in out, out
        assert "FAIL  neither srv1's nor srv3's table fills during the flood" in out, out
        assert "srv1's table was full during the flood: " in out, out
        solved = run_cli("lab", "solve", "7", env=env)
        assert solved.returncode == 0, solved.stdout + solved.stderr
        checked = run_cli("lab", "check", "7", env=env)
        assert checked.returncode == 0 and checked.stdout.rstrip().endswith("all 4 checks pass"), checked.stdout
    finally:
        stop = run_cli("lab", "stop", env=env)
    assert stop.returncode == 0, stop.stderr
