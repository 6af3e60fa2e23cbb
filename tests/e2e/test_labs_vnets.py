"""Lab 2 (labs/02-vnets) on its own testbed (its topology.yaml: VXLAN, red and blue on one subnet):
right after `lab start 2` (blue3 added to red) every check fails and says what it found; `lab
solve 2` moves blue3 into blue on red3's address and captures both networks' pings, and every
check passes."""
import pytest

from lab_helpers import check, run_cli, started_lab

pytestmark = pytest.mark.e2e


def test_lab_2_fails_on_the_starter_and_passes_once_solved(run_root, new_prefix, tmp_path):
    work = tmp_path / "work"
    with started_lab(2, run_root, new_prefix("v"), work) as env:
        code, results = check(env, 2)
        assert code == 1 and len(results) == 3 and all(r[0] == "FAIL" for r in results.values()), results
        vm, isolation, captures = results.values()
        assert vm[1].startswith("srv3 has no VM of blue on 192.168.1.13") and "192.168.1.23" in vm[1]
        assert "blue1 -> 192.168.1.13: 0 of 5 replies" in isolation[1]
        assert captures[1] == f"no capture (*.pcap) in {work}/02-vnets/captures"
        solved = run_cli("lab", "solve", "2", env=env)
        assert solved.returncode == 0, solved.stdout + solved.stderr
        assert (work / "02-vnets" / "captures" / "srv3-leaf2.pcap").is_file()
        code, results = check(env, 2)
        assert code == 0 and all(r == ["ok"] for r in results.values()), results
