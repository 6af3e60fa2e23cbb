"""The core is pure and the vrouter's rooms are layered.

Every module under vrouter/core/ (found on disk, no hand list) imports no I/O module and no other
part of the project than the core, relatively. Upward imports are refused everywhere: core <- io <-
processes <- tools, and the vrouter never imports the controller's server code, the testbed or the
experiments."""
import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
VROUTER = ROOT / "vrouter"
CORE = VROUTER / "core"
CORE_MODULES = sorted(str(p.relative_to(CORE)) for p in CORE.rglob("*.py"))
FORBIDDEN = {"socket", "os", "subprocess", "select", "selectors", "threading", "multiprocessing", "fcntl",
             "asyncio", "io", "pathlib", "shutil", "signal", "time", "mmap", "ctypes", "tempfile", "urllib",
             "http", "ssl", "logging", "sys", "os_ken", "scapy", "yaml", "msgpack", "random", "argparse",
             "datetime", "psutil"}
# Which rooms a module of each room may import (its own included). The top-level alias modules
# (vrouter/bench.py, ...) and __main__ only re-export.
LAYERS = {"core": {"core"}, "io": {"core", "io"}, "processes": {"core", "io", "processes"},
          "tools": {"core", "io", "processes", "tools"}}


def _imports(path: pathlib.Path):
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, 0, []
        elif isinstance(node, ast.ImportFrom):
            yield node.module or "", node.level, [a.name for a in node.names]
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) in ("__import__", "open", "exec", "eval"):
            yield f"call:{node.func.id}", 0, []


def _absolute(path: pathlib.Path, module: str, level: int, names: list) -> list[str]:
    """The dotted modules an import statement in `path` names (relative ones resolved)."""
    if not level:
        return [module]
    pkg = list(path.relative_to(ROOT).with_suffix("").parts[:-1])
    base = pkg[:len(pkg) - (level - 1)]
    target = ".".join(base + ([module] if module else []))
    out = [target] if module else []
    for n in names:   # `from . import x` / `from .codec import arp` may import the module x / codec.arp
        sub = ROOT.joinpath(*target.split("."), n)
        if sub.with_suffix(".py").exists() or sub.is_dir():
            out.append(f"{target}.{n}")
    return out


def test_the_core_is_found_on_disk():
    assert "pipeline.py" in CORE_MODULES and "codec/ipv4.py" in CORE_MODULES and len(CORE_MODULES) > 25


@pytest.mark.parametrize("module", CORE_MODULES)
def test_core_module_imports_no_io(module):
    path = CORE / module
    for name, level, names in _imports(path):
        assert not name.startswith("call:"), f"{module} calls {name[5:]}"
        if level:
            for target in _absolute(path, name, level, names):
                assert target.startswith("vrouter.core"), f"{module} imports {target}, which is not in the core"
            continue
        top = name.split(".")[0]
        assert top not in FORBIDDEN, f"{module} imports {name}"
        assert top not in ("vrouter", "controllers", "testbed", "experiments"), \
            f"{module} should import core modules relatively, not {name}"


def _room(dotted: str) -> str | None:
    parts = dotted.split(".")
    return parts[1] if len(parts) > 2 and parts[0] == "vrouter" and parts[1] in LAYERS else None


@pytest.mark.parametrize("path", sorted(VROUTER.rglob("*.py")), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_upward_imports(path):
    mine = _room(".".join(path.relative_to(ROOT).with_suffix("").parts))
    for name, level, names in _imports(path):
        if name.startswith("call:"):
            continue
        for target in _absolute(path, name, level, names):
            top = target.split(".")[0]
            assert top not in ("testbed", "experiments"), f"{path.name} imports {target}"
            assert not target.startswith("controllers"), f"{path.name} imports controller code ({target})"
            room = _room(target)
            if mine and room:
                assert room in LAYERS[mine], f"{path.relative_to(ROOT)} ({mine}) imports {target} ({room})"


def test_a_core_module_importing_a_shell_is_caught():
    """The check above is not vacuous: it sees a relative import that leaves the core."""
    fake = CORE / "_probe_not_a_module.py"
    assert _absolute(fake, "io.tap", 2, ["tap"]) == ["vrouter.io.tap"]
    assert _absolute(fake, "", 1, ["pipeline"]) == ["vrouter.core.pipeline"]
    assert _room("vrouter.io.tap") == "io" and "io" not in LAYERS["core"]
