"""The core is pure: its modules import no I/O modules, directly or through each other."""
import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2] / "vrouter"
CORE_MODULES = [
    "codec/__init__.py", "codec/errors.py", "codec/ethernet.py", "codec/arp.py", "codec/ipv4.py", "codec/l4.py",
    "codec/mpls.py", "codec/gre.py", "codec/vxlan.py", "codec/outer.py",
    "actions.py", "drops.py", "flowkey.py", "config.py", "fib.py", "policy.py", "vrf.py", "flowtable.py",
    "slowpath.py", "pipeline.py", "codec/virtio.py", "gso.py", "gro.py",
    "steerhash.py", "buckets.py", "fairness.py", "steering.py",
]
FORBIDDEN = {"socket", "os", "subprocess", "select", "selectors", "threading", "multiprocessing", "fcntl",
             "asyncio", "io", "pathlib", "shutil", "signal", "time", "mmap", "ctypes", "tempfile", "urllib",
             "http", "ssl", "logging", "sys", "os_ken", "scapy", "yaml", "msgpack", "random"}


def _imports(path: pathlib.Path):
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name.split(".")[0], 0
        elif isinstance(node, ast.ImportFrom):
            yield (node.module or "").split(".")[0], node.level
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) in ("__import__", "open", "exec", "eval"):
            yield f"call:{node.func.id}", 0


@pytest.mark.parametrize("module", CORE_MODULES)
def test_core_module_imports_no_io(module):
    path = ROOT / module
    assert path.exists(), f"core module {module} is missing"
    for name, level in _imports(path):
        assert not name.startswith("call:"), f"{module} calls {name[5:]}"
        if level:
            continue                                       # relative import: another core module
        assert name not in FORBIDDEN, f"{module} imports {name}"
        assert name != "vrouter", f"{module} should import core modules relatively"


def test_relative_imports_stay_inside_the_core():
    core = {m.removesuffix(".py").replace("/", ".").removesuffix(".__init__") for m in CORE_MODULES}
    for module in CORE_MODULES:
        pkg = "codec" if module.startswith("codec/") else ""
        tree = ast.parse((ROOT / module).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = pkg if node.level == 1 else ""
                target = ".".join(p for p in (base, node.module or "") if p)
                names = [target] if node.module else [".".join(p for p in (base, a.name) if p) for a in node.names]
                if node.module:     # `from .codec import arp` imports the module codec.arp
                    names += [f"{target}.{a.name}" for a in node.names
                              if (ROOT / target.replace(".", "/") / f"{a.name}.py").exists()]
                for name in names:
                    assert name in core, f"{module} imports {name}, which is not a listed core module"
