"""The benchmark runs and reports its figures (figures are not asserted: no timing in tests)."""
import ast
import json
import pathlib
import subprocess
import sys

from vrouter.tools import bench


def test_quick_bench_prints_a_table_and_a_json_last_line():
    proc = subprocess.run([sys.executable, "-m", "vrouter.tools.bench", "--quick", "--json"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    res = json.loads(lines[-1])
    for key in ("fast_path_pps_64", "fast_path_pps_1400", "slow_path_flows_per_s", "slow_path_flows_per_s_with_miss"):
        assert isinstance(res[key], int) and res[key] > 0
    assert {(r["direction"], r["size"]) for r in res["rows"] if r["encap"] == "mplsoudp"} == \
        {("vm->fabric", 64), ("fabric->vm", 64), ("vm->fabric", 1400), ("fabric->vm", 1400)}
    assert any("x target" in line for line in lines[:-1])
    bulk = res["bulk"]["rows"]          # the bulk path through the shell: receive twice, send once
    assert [r["name"].split(":")[0] for r in bulk] == ["receive", "receive", "send"]
    assert all(r["us_per_super_frame"] > 0 and r["cpu_s_per_gb"] > 0 for r in bulk)
    assert any("bulk path through the shell" in line for line in lines[:-1])


def test_fast_path_measures_only_flow_hits():
    # fast_path raises if any measured packet missed the flow table.
    assert bench.fast_path("mplsoudp", 1400, "fabric->vm", packets=200, flows=20, repeats=1) > 0
    assert bench.slow_path(50, 1, end_to_end=True) > 0


def _tools_imports():
    """(importer, imported module, names) for every import among vrouter/tools, at any depth."""
    root = pathlib.Path(__file__).resolve().parents[2]
    for path in sorted((root / "vrouter" / "tools").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("vrouter.tools"):
                for alias in node.names:
                    sub = alias.name if node.module == "vrouter.tools" else None
                    yield path.stem, sub or node.module.rsplit(".", 1)[1], alias.name
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith("vrouter.tools."):
                        yield path.stem, alias.name.rsplit(".", 1)[1], alias.name


def test_the_benches_share_benchlib_and_import_no_bench_back():
    graph = {}
    for importer, imported, name in _tools_imports():
        assert not name.startswith("_"), f"{importer} imports the private {name} of {imported}"
        graph.setdefault(importer, set()).add(imported)
    assert "benchlib" in graph["bench_steering"] and "benchlib" in graph["bench_workers"]

    def reaches(start, goal, seen=()):
        return any(n == goal or (n not in seen and reaches(n, goal, (*seen, n)))
                   for n in graph.get(start, ()))
    assert [m for m in graph if reaches(m, m)] == []
