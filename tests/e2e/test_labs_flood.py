"""Lab 7 (labs/07-flood) on a real testbed: its check (which floods from red1 itself) fails on the
starter, whose limits are the whole table, and passes once `lab solve` has set the solution's limits."""
import pytest

from lab_helpers import check, run_cli, started_lab

pytestmark = pytest.mark.e2e


def test_lab_7_fails_on_the_starter_and_passes_once_solved(run_root, new_prefix, tmp_path):
    with started_lab(7, run_root, new_prefix("f"), tmp_path / "work") as env:
        code, results = check(env, 7)
        assert code == 1, results
        assert results["a flow limit keeps red1 below the size of srv1's table"][0] == "FAIL", results
        table = results["neither srv1's nor srv3's table fills during the flood (no flow_table_full drop)"]
        assert table[0] == "FAIL" and table[1].startswith("srv1's table was full during the flood: "), results
        solved = run_cli("lab", "solve", "7", env=env)
        assert solved.returncode == 0, solved.stdout + solved.stderr
        code, results = check(env, 7)
        assert code == 0 and len(results) == 4 and all(r == ["ok"] for r in results.values()), results
