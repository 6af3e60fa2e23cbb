"""The project's packages import each other in one direction and without cycles.

experiments -> testbed -> controllers -> vrouter (each may import those to its right, never to its
left), no module imports itself back through others, and no module passes 600 lines. The finer
rooms inside vrouter/ are checked by test_core_purity.py."""
import ast
import collections
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
PACKAGES = ("experiments", "testbed", "controllers", "vrouter")   # left may import right
MAX_LINES = 600


def _modules() -> dict[str, pathlib.Path]:
    out = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


MODULES = _modules()


def _targets(name: str, path: pathlib.Path) -> set[str]:
    """The project modules that `name` imports (at any depth of its code), resolved to modules."""
    pkg = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            cands = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(pkg[:len(pkg) - node.level + 1] + ([base] if base else []))
            cands = [f"{base}.{a.name}" for a in node.names] + [base]
        else:
            continue
        for c in cands:
            while c and c not in MODULES:
                c = c.rpartition(".")[0]
            if c and c != name:
                found.add(c)
    return found


GRAPH = {name: _targets(name, path) for name, path in MODULES.items()}


@pytest.mark.parametrize("name", sorted(MODULES))
def test_packages_import_only_to_their_right(name):
    mine = PACKAGES.index(name.split(".")[0])
    for target in GRAPH[name]:
        theirs = PACKAGES.index(target.split(".")[0])
        assert theirs >= mine, f"{name} imports {target}: {PACKAGES[theirs]} may not be imported by {PACKAGES[mine]}"


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(n, stack):
        state[n] = 1
        stack.append(n)
        for t in sorted(graph.get(n, ())):
            if state.get(t) == 1:
                cycles.append(stack[stack.index(t):] + [t])
            elif t not in state:
                visit(t, stack)
        stack.pop()
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n, [])
    return cycles


def test_no_import_cycles():
    """Between modules (a package's __init__ re-exporting its modules is not a cycle)."""
    graph = {n: {t for t in ts if not _is_package(t)} for n, ts in GRAPH.items() if not _is_package(n)}
    cycles = find_cycles(graph)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_the_checks_see_what_they_look_for():
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []
    assert "vrouter.core.pipeline" in GRAPH["vrouter.processes.datapath"]          # imports are seen
    assert "vrouter.core.codec.ipv4" in GRAPH["vrouter.core.pipeline"]             # relative ones too


@pytest.mark.parametrize("path", sorted(p for d in (*PACKAGES, "tests", "scripts") for p in (ROOT / d).rglob("*.py")),
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_over_600_lines(path):
    n = len(path.read_text().splitlines())
    assert n <= MAX_LINES, f"{path.relative_to(ROOT)} has {n} lines (split it by concern)"


def test_test_files_have_unique_basenames():
    """pytest imports test modules by basename (rootdir-relative packages are not used here): two
    test_x.py in tests/unit and tests/e2e make the whole run stop at collection (it did, twice)."""
    names = collections.Counter(p.name for p in (ROOT / "tests").rglob("test_*.py"))
    assert not [n for n, k in names.items() if k > 1]
