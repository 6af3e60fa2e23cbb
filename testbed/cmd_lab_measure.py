"""`testbed lab measure`: what each lab costs on a student's laptop VM (labs/README.md, "Before you start").

    testbed lab measure [N ...] [--memory 4G] [--target 15] [--prefix lm] [--run-root DIR]

For every lab with a testbed (or the ones named), in a memory cgroup limited to ``--memory``:
`testbed lab start N` (timed: the lab's own "testbed is up in X s" line, setup included, and the
whole command), `testbed lab check N` once (on the starter, so it is expected to fail; what counts
is that it runs, and how long it takes), `testbed lab stop`; then the cgroup's peak memory and how
often it hit the limit, and one table. The students' work folder is a temporary one, removed after.

Why a cgroup of our own: a laptop VM of 4 GB is a memory limit on everything the lab starts. On
systemd hosts `systemd-run --scope -p MemoryMax=4G testbed lab start N` is the same limit; this
command makes the cgroup itself (cgroup v2's memory.max / memory.peak where the memory controller
is on the unified hierarchy, else v1's memory.limit_in_bytes / memory.max_usage_in_bytes), below
the cgroup it runs in, so it works where systemd does not run, and removes it afterwards. What the
cgroup does not hold: ovs-vswitchd and ovsdb-server (started once by the system, shared by every
testbed; their memory is not counted) and the kernel's own objects (namespaces, veths). v1's peak
counts the page cache the processes touched, v2's too.

Pure parts (parsing the commands' output, the table, the limit's syntax) are unit-tested in
tests/unit/test_lab_measure.py; the cgroup and the processes are the shell below them.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from testbed.commands import CommandError, command, prefix_arg
from testbed.lab import Lab, LabError, find, load_labs

UP_LINE = re.compile(r"lab \d+'s testbed is up in ([\d.]+) s")
CHECKS_LINE = re.compile(r"(?:(\d+) of (\d+) checks pass|all (\d+) checks pass)")
SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*([KMG]?)i?B?$", re.IGNORECASE)
UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


# --------------------------------------------------------------------------- pure

def parse_size(text: str) -> int:
    """'4G', '4096M', '512MiB', '1073741824' -> bytes; ValueError with the accepted form."""
    m = SIZE.match(text.strip())
    if m is None or float(m.group(1)) <= 0:
        raise ValueError(f"{text!r} is not a memory size (e.g. 4G, 4096M)")
    return int(float(m.group(1)) * UNITS[m.group(2).upper()])


def up_seconds(stdout: str) -> float | None:
    """The bring-up time `lab start` printed ("lab 3's testbed is up in 2.1 s"), setup included."""
    m = UP_LINE.search(stdout)
    return float(m.group(1)) if m else None


def checks_passed(stdout: str) -> tuple[int, int] | None:
    """(passed, total) from `lab check`'s last line."""
    m = CHECKS_LINE.search(stdout)
    if m is None:
        return None
    if m.group(3):
        return int(m.group(3)), int(m.group(3))
    return int(m.group(1)), int(m.group(2))


@dataclass
class Row:
    number: int
    name: str
    up: float | None = None           # the lab's "testbed is up in X s"
    start: float | None = None        # the whole `lab start` command
    check: float | None = None        # one `lab check` (wall)
    checks: tuple[int, int] | None = None
    peak: int | None = None           # bytes
    limit_hits: int | None = None
    error: str = ""


def table(rows: list[Row], target: float, limit: int) -> list[str]:
    """The measurement as text: one line per lab, the bring-up against ``target`` seconds."""
    def num(v: float | None, fmt: str = "{:.1f}") -> str:
        return "-" if v is None else fmt.format(v)
    out = [f"{'lab':<16} {'up s':>6} {'start s':>8} {'check s':>8} {'checks':>7} {'peak MiB':>9} "
           f"{'limit hits':>10}  under {target:g} s"]
    for r in rows:
        checks = "-" if r.checks is None else f"{r.checks[0]}/{r.checks[1]}"
        ok = "-" if r.up is None else ("yes" if r.up < target else "NO")
        out.append(f"{r.name:<16} {num(r.up):>6} {num(r.start):>8} {num(r.check):>8} {checks:>7} "
                   f"{num(None if r.peak is None else r.peak / (1 << 20), '{:.0f}'):>9} "
                   f"{num(r.limit_hits, '{:.0f}'):>10}  {ok}" + (f"  ({r.error})" if r.error else ""))
    out.append(f"memory limit {limit / (1 << 30):g} GiB per lab (a cgroup: the lab's processes, not ovs-vswitchd); "
               "checks: passed/total on the starter (failing is expected)")
    return out


def memory_mount(self_cgroup: str, mounts: str, v2_controllers: str) -> tuple[int, Path, str] | None:
    """Where the memory controller is: (cgroup version, its mount point, our cgroup's path in it),
    from /proc/self/cgroup, /proc/self/mounts and the cgroup2 mount's cgroup.controllers (v2 first:
    a hybrid host's v2 hierarchy without the memory controller does not count); None if nowhere."""
    ours = dict(line.split(":", 2)[1:] for line in self_cgroup.splitlines() if line.count(":") >= 2)
    found = {}
    for line in mounts.splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[2] in ("cgroup", "cgroup2"):
            found.setdefault(parts[2], []).append((Path(parts[1]), parts[3].split(",")))
    if found.get("cgroup2") and "memory" in v2_controllers.split():
        return 2, found["cgroup2"][0][0], ours.get("", "/")
    v1 = next(((where, c) for c in ours for where, opts in found.get("cgroup", []) if "memory" in opts
               and "memory" in c.split(",")), None)
    return (1, v1[0], ours[v1[1]]) if v1 else None


# --------------------------------------------------------------------------- the cgroup

class MemoryCgroup:
    """A memory cgroup below ours, limited to ``limit`` bytes; processes join it with ``enter``."""

    FILES = {1: ("memory.limit_in_bytes", "memory.max_usage_in_bytes", "memory.failcnt"),
             2: ("memory.max", "memory.peak", "memory.events")}

    def __init__(self, name: str, limit: int):
        mounts = Path("/proc/self/mounts").read_text()
        v2 = next((line.split()[1] for line in mounts.splitlines() if line.split()[2:3] == ["cgroup2"]), None)
        v2_controllers = (Path(v2) / "cgroup.controllers").read_text() if v2 else ""
        found = memory_mount(Path("/proc/self/cgroup").read_text(), mounts, v2_controllers)
        if found is None:
            raise CommandError("no memory cgroup controller on this machine (cgroup v1 memory or v2 with memory)")
        self.version, mount, ours = found
        self.path = mount / ours.lstrip("/") / name
        self.limit_file, self.peak_file, self.hits_file = (self.path / f for f in self.FILES[self.version])
        try:
            self.path.mkdir()
            self.limit_file.write_text(str(limit))
        except OSError as exc:
            raise CommandError(f"cannot make the memory cgroup {self.path}: {exc.strerror}") from None

    def enter(self) -> None:
        """preexec_fn of a child: it (and all it starts) joins the cgroup."""
        (self.path / "cgroup.procs").write_text(str(os.getpid()))

    def peak(self) -> int | None:
        try:
            return int(self.peak_file.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None              # v2 kernels before 5.19 have no memory.peak

    def limit_hits(self) -> int:
        text = self.hits_file.read_text()
        if self.version == 1:
            return int(text)
        return sum(int(n) for key, n in (line.split() for line in text.splitlines()) if key in ("max", "oom"))

    def remove(self) -> list[int]:
        """rmdir the cgroup; processes still in it (none once `lab stop` is done) move to ours first."""
        left: list[int] = []
        for _ in range(50):
            left = [int(p) for p in (self.path / "cgroup.procs").read_text().split()]
            if not left:
                break
            time.sleep(0.2)
        for pid in left:
            try:
                (self.path.parent / "cgroup.procs").write_text(str(pid))
            except OSError:
                pass
        self.path.rmdir()
        return left


# --------------------------------------------------------------------------- the command

def _arguments(p) -> None:
    p.add_argument("numbers", nargs="*", metavar="N", help="the labs to measure (default: every lab with a testbed)")
    p.add_argument("--memory", default="4G", help="the memory limit of the cgroup (default 4G: a laptop VM)")
    p.add_argument("--target", type=float, default=15.0, help="the bring-up time to stay under, in s (default 15)")
    p.add_argument("--prefix", default="lm", type=prefix_arg, help="the prefix of the labs' testbeds (default lm)")
    p.add_argument("--run-root", default=None, help="where run directories live (default as 'testbed up')")


def _cli(*args: str, cg: MemoryCgroup, env: dict, timeout: float = 600) -> tuple[subprocess.CompletedProcess, float]:
    t0 = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "testbed.cli", *args], capture_output=True, text=True,
                          env=env, timeout=timeout, preexec_fn=cg.enter)
    return done, time.monotonic() - t0


def measure(lab: Lab, args, limit: int) -> Row:
    row = Row(lab.number, lab.name)
    work = tempfile.mkdtemp(prefix="lab-measure-")
    env = {**os.environ, "VNET_TESTBED_LAB_WORK": work}
    scope = ["--prefix", args.prefix] + (["--run-root", args.run_root] if args.run_root else [])
    cg = MemoryCgroup(f"vnet-lab-measure-{os.getpid()}-{lab.number}", limit)
    try:
        print(f"lab {lab.number}: start ...", flush=True)
        started, row.start = _cli("lab", "start", str(lab.number), *scope, cg=cg, env=env)
        row.up = up_seconds(started.stdout)
        if started.returncode:
            row.error = "start failed: " + (started.stderr.strip().splitlines() or ["?"])[-1]
        else:
            print(f"lab {lab.number}: up in {row.up} s; check ...", flush=True)
            checked, row.check = _cli("lab", "check", str(lab.number), cg=cg, env=env)
            row.checks = checks_passed(checked.stdout)
            if row.checks is None:
                row.error = "check did not run: " + (checked.stderr.strip().splitlines() or ["?"])[-1]
        stopped, _ = _cli("lab", "stop", cg=cg, env=env)
        if stopped.returncode and not started.returncode:
            row.error = "stop failed: " + (stopped.stderr.strip().splitlines() or ["?"])[-1]
        row.peak, row.limit_hits = cg.peak(), cg.limit_hits()
    finally:
        left = cg.remove()
        shutil.rmtree(work, ignore_errors=True)
    if left:
        row.error += f" (processes left after stop: {', '.join(map(str, left))})"
    return row


@command("lab measure", help="what each lab costs on a laptop VM: bring-up time and peak memory of 'lab start', "
                             "'lab check', 'lab stop' in a memory-limited cgroup", root=True, arguments=_arguments)
def lab_measure(args) -> int:
    try:
        limit = parse_size(args.memory)
        labs = load_labs()
        chosen = [find(labs, n) for n in args.numbers] if args.numbers else [lab for lab in labs if lab.topology]
    except ValueError as exc:
        raise CommandError(f"--memory: {exc}", 2) from None
    except LabError as exc:
        raise CommandError(str(exc), exc.code) from None
    if not chosen:
        raise CommandError("no lab with a testbed to measure")
    rows = []
    for lab in chosen:
        if lab.topology is None:
            rows.append(Row(lab.number, lab.name, error="no testbed"))
            continue
        rows.append(measure(lab, args, limit))
    print("\n".join(table(rows, args.target, limit)))
    return 1 if any(r.error or r.up is None or r.up >= args.target for r in rows if r.error != "no testbed") else 0
