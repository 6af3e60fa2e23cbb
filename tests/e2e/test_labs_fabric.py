"""Lab 1 (labs/01-fabric) on its own testbed: right after `lab start 1` (a link left down, a grey
link that loses what spine2 sends to leaf2) every check fails and says what it found; `lab solve 1`
runs the solution's repair.sh on the testbed and every check passes."""
import pytest

from lab_helpers import check, run_cli, started_lab

pytestmark = pytest.mark.e2e


def test_lab_1_fails_on_the_starter_and_passes_once_solved(run_root, new_prefix, tmp_path):
    with started_lab(1, run_root, new_prefix("f"), tmp_path / "work") as env:
        code, results = check(env, 1)
        assert code == 1 and len(results) == 3 and all(r[0] == "FAIL" for r in results.values()), results
        links, drained, paths = results.values()
        assert links[1].startswith("leaf1-spine1 is down, and nothing is wrong with it")
        assert "leaf1's group" in drained[1] and "has a bucket to spine2" in drained[1]
        assert "pings between the leaves got no reply" in paths[1]
        solved = run_cli("lab", "solve", "1", env=env)
        assert solved.returncode == 0, solved.stdout + solved.stderr
        assert "testbed fault link leaf2-spine2 down" in solved.stdout
        code, results = check(env, 1)
        assert code == 0 and all(r == ["ok"] for r in results.values()), results
