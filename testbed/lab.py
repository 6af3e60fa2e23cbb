"""Classroom labs (labs/NN-name/): their descriptions, the student's work directory, their checks.

The p4lang/tutorials model: each lab is a folder with a README (goals, background, numbered steps,
questions), starter files, a `solution/` and an automated check. This module is what `testbed lab`
(testbed/cmd_lab.py) stands on and has no testbed in it: it loads and validates `lab.yaml`, copies
starter or solution files into the student's work directory, and runs a lab's `check.py` against
the student's files (and, for labs that grade a testbed, a handle of the running one that the
command passes in). Writing a lab: labs/README.md, "Writing a lab".

A lab folder:

    labs/03-proactive/
      README.md        the lab itself
      lab.yaml         title, minutes, summary, testbed, setup, student_files, check_uses_testbed
      decide.py        the starter file(s) the student completes (student_files); never edited in place
      solution/        the same file names, solved
      check.py         check_* functions, in file order; optional solve(ctx) for a testbed's part

Students work on copies: `testbed lab start N` copies the starter files into
`lab-work/NN-name/` (under the checkout, or $VNET_TESTBED_LAB_WORK), keeping any that are already
there; `check` reads them from there (or from `--dir`); `solve` saves them under
`lab-work/NN-name/saved-<time>/` before copying the solution over them. The shipped starter and
solution stay as they are, so `make test` can show that every check fails on the one and passes on
the other.
"""
from __future__ import annotations

import importlib.util
import inspect
import json
import os
import re
import shutil
import subprocess
import sys
import traceback
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from testbed import REPO, namespaces
from testbed.rundir import RunDir
from vrouter.io import introspect

LABS_DIR = REPO / "labs"
TOPOLOGIES_DIR = REPO / "topologies"
WORK_ENV = "VNET_TESTBED_LAB_WORK"
DEFAULT_WORK = REPO / "lab-work"
CURRENT = "current.json"          # in the work root: the started lab and its testbed
DIR_NAME = re.compile(r"^(\d\d)-[a-z0-9][a-z0-9-]*$")
KEYS = {"title": str, "minutes": int, "summary": str, "testbed": (str, type(None)), "setup": list,
        "student_files": list, "check_uses_testbed": bool}
REQUIRED = ("title", "minutes", "summary", "student_files")
MINUTES = (15, 120)               # a lab is a class period: the issue asks for 60-90 minutes each
NO_TESTBED = ("none", None)


class LabError(Exception):
    """One line for the user; ``code`` is the exit status (2: a bad number or file, 1: state)."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


class LabFileError(LabError):
    """A lab folder that is not a valid lab: every problem, one per line."""

    def __init__(self, problems: list[str]):
        super().__init__(f"invalid lab description ({len(problems)} problem{'s' * (len(problems) != 1)}): "
                         + "; ".join(problems), 2)
        self.problems = problems


@dataclass(frozen=True)
class Lab:
    number: int
    name: str                         # the folder's name, e.g. "03-proactive"
    path: Path
    title: str
    minutes: int
    summary: str
    topology: Path | None             # what `lab start` brings up; None: the lab needs no testbed
    setup: tuple[str, ...]            # testbed commands run once it is up (--prefix is added)
    student_files: tuple[str, ...]
    check_uses_testbed: bool

    @property
    def readme(self) -> Path:
        return self.path / "README.md"

    @property
    def solution(self) -> Path:
        return self.path / "solution"

    @property
    def check_file(self) -> Path:
        return self.path / "check.py"


# --------------------------------------------------------------------------- descriptions

def _topology(value: Any, lab_dir: Path, problems: list[str], where: str) -> Path | None:
    if value in NO_TESTBED:
        return None
    own = lab_dir / value
    named = TOPOLOGIES_DIR / f"{value}.yaml"
    for candidate in (own, named):
        if candidate.is_file():
            return candidate
    problems.append(f"{where}: testbed: {value!r} is neither a file of the lab nor topologies/{value}.yaml "
                    "(or 'none' for a lab without a testbed)")
    return None


def _files(value: list[Any], lab_dir: Path, problems: list[str], where: str) -> tuple[str, ...]:
    names = []
    if not value:
        problems.append(f"{where}: student_files: at least one file the student works on")
    for name in value:
        if not isinstance(name, str) or not name or "/" in name or name.startswith("."):
            problems.append(f"{where}: student_files: {name!r} is not a plain file name of the lab folder")
            continue
        for folder, what in ((lab_dir, "starter"), (lab_dir / "solution", "solution")):
            if not (folder / name).is_file():
                problems.append(f"{where}: student_files: no {what} file "
                                f"labs/{folder.relative_to(lab_dir.parent)}/{name}")
        names.append(name)
    return tuple(names)


def _fields(doc: Any, where: str, problems: list[str]) -> dict[str, Any]:
    if not isinstance(doc, dict):
        problems.append(f"{where}: expected a mapping of {', '.join(KEYS)}")
        return {}
    for key in doc:
        if key not in KEYS:
            problems.append(f"{where}: unknown key {key!r} (known: {', '.join(KEYS)})")
    for key in REQUIRED:
        if key not in doc:
            problems.append(f"{where}: {key} is missing")
    good = {}
    for key, kind in KEYS.items():
        if key not in doc:
            continue
        value = doc[key]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            problems.append(f"{where}: {key}: {value!r} is not a {getattr(kind, '__name__', 'string or none')}")
        else:
            good[key] = value
    return good


def load_lab(lab_dir: Path) -> Lab:
    """The lab of one folder; LabFileError lists every problem of it."""
    problems: list[str] = []
    m = DIR_NAME.match(lab_dir.name)
    where = f"labs/{lab_dir.name}/lab.yaml"
    if m is None:
        raise LabFileError([f"labs/{lab_dir.name}: a lab folder is named NN-name (two digits, lowercase words)"])
    try:
        doc = yaml.safe_load((lab_dir / "lab.yaml").read_text())
    except FileNotFoundError:
        raise LabFileError([f"{where}: missing"]) from None
    except yaml.YAMLError as exc:
        raise LabFileError([f"{where}: not YAML ({str(exc).splitlines()[0]})"]) from None
    d = _fields(doc, where, problems)
    minutes = d.get("minutes", MINUTES[0])
    if not MINUTES[0] <= minutes <= MINUTES[1]:
        problems.append(f"{where}: minutes: {minutes} is not within {MINUTES[0]}-{MINUTES[1]}")
    topology = _topology(d.get("testbed", "none"), lab_dir, problems, where)
    none = d.get("testbed", "none") in NO_TESTBED
    setup = d.get("setup", [])
    if any(not isinstance(s, str) or not s.strip() for s in setup):
        problems.append(f"{where}: setup: expected testbed command lines such as 'net mode reactive'")
    if setup and none:
        problems.append(f"{where}: setup: commands need a testbed (testbed: none)")
    if d.get("check_uses_testbed") and none:
        problems.append(f"{where}: check_uses_testbed: the check grades a testbed, but the lab has none")
    files = _files(d.get("student_files", []), lab_dir, problems, where)
    for name in ("README.md", "check.py"):
        if not (lab_dir / name).is_file():
            problems.append(f"labs/{lab_dir.name}/{name}: missing")
    if problems:
        raise LabFileError(problems)
    return Lab(int(m.group(1)), lab_dir.name, lab_dir, d["title"], minutes, d["summary"], topology,
               tuple(setup), files, d.get("check_uses_testbed", False))


def load_labs(root: Path | None = None) -> list[Lab]:
    """Every lab under ``root`` (default labs/), by number; LabFileError with the problems of all of them."""
    root = LABS_DIR if root is None else root
    labs, problems = [], []
    for d in sorted(p for p in root.iterdir() if p.is_dir() and p.name[:1].isdigit()):
        try:
            labs.append(load_lab(d))
        except LabFileError as exc:
            problems += exc.problems
    seen: dict[int, str] = {}
    for lab in labs:
        if lab.number in seen:
            problems.append(f"labs/{lab.name}: number {lab.number} is taken by labs/{seen[lab.number]}")
        seen[lab.number] = lab.name
    if problems:
        raise LabFileError(problems)
    return labs


def find(labs: list[Lab], number: str | int) -> Lab:
    """The lab numbered ``number`` ("3", "03" or 3); LabError (exit 2) naming the labs there are."""
    text = str(number).strip()
    if not text.isdigit():
        raise LabError(f"{number!r} is not a lab number (labs: {numbers(labs)}; 'testbed lab list')", 2)
    for lab in labs:
        if lab.number == int(text):
            return lab
    raise LabError(f"there is no lab {int(text)} (labs: {numbers(labs)}; 'testbed lab list')", 2)


def numbers(labs: list[Lab]) -> str:
    return ", ".join(str(lab.number) for lab in labs) or "none"


# --------------------------------------------------------------------------- work directories

def work_root(given: str | None = None) -> Path:
    return Path(given or os.environ.get(WORK_ENV) or DEFAULT_WORK)


def work_dir(lab: Lab, root: Path) -> Path:
    return root / lab.name


def _give_to_user(path: Path) -> None:
    """Under sudo, files we make belong to the user who ran it, so an editor can save them."""
    uid, gid = os.environ.get("SUDO_UID"), os.environ.get("SUDO_GID")
    if os.geteuid() == 0 and uid and gid:
        os.chown(path, int(uid), int(gid))


def _mkdirs(path: Path) -> None:
    missing = [p for p in (path, *path.parents) if not p.exists()][::-1]
    path.mkdir(parents=True, exist_ok=True)
    for p in missing:
        _give_to_user(p)


def copy_starter(lab: Lab, root: Path) -> tuple[list[str], list[str]]:
    """Copy the starter files the work dir lacks: (copied, kept because the student has them)."""
    dest = work_dir(lab, root)
    _mkdirs(dest)
    copied, kept = [], []
    for name in lab.student_files:
        if (dest / name).exists():
            kept.append(name)
            continue
        shutil.copyfile(lab.path / name, dest / name)
        _give_to_user(dest / name)
        copied.append(name)
    return copied, kept


def apply_solution(lab: Lab, dest: Path, now: datetime | None = None) -> Path | None:
    """Copy the solution over ``dest`` after saving the files there; the folder they were saved in."""
    _mkdirs(dest)
    present = [n for n in lab.student_files if (dest / n).exists()]
    saved = None
    if present:
        saved = dest / f"saved-{(now or datetime.now()).strftime('%Y%m%d-%H%M%S')}"
        _mkdirs(saved)
        for name in present:
            shutil.copyfile(dest / name, saved / name)
            _give_to_user(saved / name)
    for name in lab.student_files:
        shutil.copyfile(lab.solution / name, dest / name)
        _give_to_user(dest / name)
    return saved


def read_current(root: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((root / CURRENT).read_text())
    except (FileNotFoundError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("number"), int) else None


def write_current(root: Path, record: dict[str, Any]) -> None:
    _mkdirs(root)
    (root / CURRENT).write_text(json.dumps(record) + "\n")
    _give_to_user(root / CURRENT)


def clear_current(root: Path) -> None:
    (root / CURRENT).unlink(missing_ok=True)


# --------------------------------------------------------------------------- checks

class Wrong(Exception):
    """Raised by a check: what is wrong (``message``) and where the student should look (``where``)."""

    def __init__(self, message: str, where: str = ""):
        super().__init__(message)
        self.where = where


@dataclass
class Finding:
    message: str
    where: str = ""


@dataclass
class Result:
    """One check's outcome: its title (the function's docstring) and findings (none: it passes)."""
    name: str
    title: str
    findings: list[Finding] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.findings


class StudentLoadError(Wrong):
    """A file that does not load as a module (the student's, or a lab's check.py)."""


@dataclass
class Context:
    """What a check function gets: the lab, the student's folder, their modules, the testbed.

    ``ctx.student("decide.py")`` loads that file of the student's folder afresh as a module (a file
    that does not load is one finding, with the line); ``ctx.testbed`` is the running lab testbed's
    handle (``Testbed``, below) for labs with check_uses_testbed, else None."""
    lab: Lab
    folder: Path
    testbed: Any = None
    _modules: dict[str, types.ModuleType | StudentLoadError] = field(default_factory=dict)

    def student(self, name: str | None = None) -> types.ModuleType:
        name = name or self.lab.student_files[0]
        if name not in self._modules:
            try:
                self._modules[name] = load_module(self.folder / name, f"lab{self.lab.number:02d}_{Path(name).stem}")
            except StudentLoadError as exc:
                self._modules[name] = exc       # every check that needs the file says so, without loading it again
        got = self._modules[name]
        if isinstance(got, StudentLoadError):
            raise got
        return got


def load_module(path: Path, name: str) -> types.ModuleType:
    """Execute ``path`` as a fresh module; StudentLoadError (a Wrong) says why it does not load."""
    if not path.is_file():
        raise StudentLoadError(f"{path} is missing", path.name)
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module        # dataclasses and typing look their module up while it runs
    try:
        spec.loader.exec_module(module)
    except SyntaxError as exc:
        raise StudentLoadError(f"{path.name} does not load: {exc.msg} (line {exc.lineno})",
                               f"{path.name}, line {exc.lineno}") from None
    except Exception as exc:
        raise StudentLoadError(f"{path.name} does not load: {type(exc).__name__}: {exc}",
                               _student_frame(exc, path) or path.name) from None
    finally:
        sys.modules.pop(name, None)
    return module


def _student_frame(exc: BaseException, path: Path) -> str | None:
    """'decide.py, line 12 in decide': the deepest frame of the traceback in the student's file."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if Path(f.filename).name == path.name]
    if not frames:
        return None
    f = frames[-1]
    return f"{path.name}, line {f.lineno} in {f.name}"


def check_functions(lab: Lab) -> tuple[list[tuple[str, Callable[[Context], Any]]], Callable | None]:
    """The lab's check_* functions in file order, and its solve(ctx) if it has one."""
    try:
        module = load_module(lab.check_file, f"lab{lab.number:02d}_check")
    except StudentLoadError as exc:
        raise LabError(f"labs/{lab.name}/{exc}") from None
    found = [(n, f) for n, f in vars(module).items() if n.startswith("check_") and inspect.isfunction(f)]
    found.sort(key=lambda item: item[1].__code__.co_firstlineno)
    solve = getattr(module, "solve", None)
    return found, solve if callable(solve) else None


def _notes(exc: BaseException) -> str:
    """' (smallest failing case: f(x=5))': hypothesis adds its shrunk example to the exception as a
    note ('Failing test case: f(\n    x=5,\n)'), which a finding shows on one line."""
    for note in getattr(exc, "__notes__", ()):
        head, sep, case = note.partition(":")
        if sep and head.strip() in ("Failing test case", "Falsifying example"):
            case = re.sub(r",?\s*\)$", ")", re.sub(r"\(\s+", "(", " ".join(case.split())))
            return f" (smallest failing case: {case})"
    return ""


def _findings(fn: Callable[[Context], Any], ctx: Context) -> list[Finding]:
    """Run one check: returned findings, or a Wrong / AssertionError / error of the student's code."""
    try:
        try:
            out = fn(ctx)
        except BaseExceptionGroup as group:   # hypothesis's "found N distinct failures": the first
            first = group.exceptions[0]
            while isinstance(first, BaseExceptionGroup):
                first = first.exceptions[0]
            raise first from None
    except Wrong as exc:               # says which case it is (a property's own message names it)
        return [Finding(str(exc), exc.where)]
    except AssertionError as exc:
        return [Finding((str(exc) or "an assertion of the check failed") + _notes(exc))]
    except Exception as exc:
        where = next((w for w in (_student_frame(exc, ctx.folder / n) for n in ctx.lab.student_files) if w), "")
        return [Finding(f"your code raised {type(exc).__name__}: {exc}{_notes(exc)}", where)]
    if not out:
        return []
    return [f if isinstance(f, Finding) else Finding(str(f)) for f in out]


def run_checks(lab: Lab, folder: Path, testbed: Any = None) -> Iterator[Result]:
    """Each check's result in order, as it finishes (a check of a file that does not load fails)."""
    functions, _ = check_functions(lab)
    ctx = Context(lab, folder, testbed)
    for name, fn in functions:
        title = (inspect.getdoc(fn) or name).splitlines()[0]
        yield Result(name, title, _findings(fn, ctx))


def format_result(r: Result) -> list[str]:
    if r.passed:
        return [f"  ok    {r.title}"]
    lines = [f"  FAIL  {r.title}"]
    for f in r.findings:
        lines.append(f"        {f.message}")
        if f.where:
            lines.append(f"        where to look: {f.where}")
    return lines


class Testbed:
    """The running lab testbed, for checks that grade it (check_uses_testbed: true in lab.yaml).

    ``vr(server, op, **args)`` asks a vrouter what `testbed vr` shows (ops of vrouter/io/introspect.py:
    flows, vifs, routes, nexthops, dropstats, stats, paths, pressure, nat), e.g. ``tb.vr("srv1", "flows")``;
    ``exec(host, *argv)`` runs a command in a server or VM (``start(host, *argv)``: in the background);
    ``testbed(command, *args)`` runs a testbed command on this testbed (``tb.testbed("net policy", ...)``)."""

    def __init__(self, prefix: str, run_root: str | None, rundir: Path):
        self.prefix, self.run_root, self.rundir = prefix, run_root, rundir

    def testbed(self, command: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        """Runs ``testbed COMMAND ARGS`` on this lab's testbed (its --prefix and --run-root added
        after COMMAND), e.g. ``tb.testbed("fault list", "--json")``; output captured as text."""
        scope = ["--prefix", self.prefix] + (["--run-root", self.run_root] if self.run_root else [])
        argv = [sys.executable, "-m", "testbed.cli", *command.split(), *scope, *args]
        try:
            return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise Wrong(f"'testbed {command} {' '.join(args)}' did not finish in {timeout:.0f} s",
                        f"is the lab's testbed up? 'sudo testbed status --prefix {self.prefix}'") from None

    def exec(self, host: str, *argv: str, timeout: float = 30) -> subprocess.CompletedProcess:
        """Runs ``argv`` in a server or VM of the testbed (what `testbed exec HOST ...` does, but
        captured), e.g. ``tb.exec("red1", "ping", "-c1", "-W1", "192.168.1.13").returncode``."""
        try:
            return subprocess.run(self._in(host, argv), capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise Wrong(f"'{' '.join(argv)}' in {host} did not finish in {timeout:.0f} s") from None

    def start(self, host: str, *argv: str) -> subprocess.Popen:
        """Starts ``argv`` in a server or VM in the background (a listener, a load), its stdout a
        text pipe; the caller stops it by its PID (``proc.terminate()``) before the check returns."""
        return subprocess.Popen(self._in(host, argv), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                text=True)

    def _in(self, host: str, argv: tuple[str, ...]) -> list[str]:
        """``argv`` run in ``host``'s network namespace (nsenter execs it: the PID is the command's)."""
        handle = namespaces.by_host(RunDir(self.run_root, self.prefix)).get(host)
        if handle is None:
            raise Wrong(f"the testbed has no host {host!r}", f"'sudo testbed status --prefix {self.prefix}'")
        return ["nsenter", f"--net={handle}", "--", *argv]

    def vr(self, server: str, op: str, **args: Any) -> Any:
        try:
            return introspect.query(self.rundir, server, op, **args)
        except introspect.IntrospectError as exc:
            raise Wrong(f"could not ask {server}'s vrouter for {op}: {exc}",
                        f"is the lab's testbed up? 'sudo testbed status --prefix {self.prefix}'") from None
