"""`testbed lab ...`: the classroom labs of labs/ (testbed/lab.py; labs/README.md).

    testbed lab list [--json]           the labs, their minutes, what they need
    testbed lab start N                 copy the starter files to lab-work/NN-name/, bring up the lab's testbed
    testbed lab check N [--dir DIR]     check the student's work (and the running testbed, for labs that grade it)
    testbed lab solve N [--dir DIR]     save the student's files, copy the solution over them (teachers)
    testbed lab stop                    bring the started lab's testbed down; the student's files stay
    testbed lab measure [N ...]         bring-up time and peak memory of each lab in a 4 GB cgroup (cmd_lab_measure.py)

One lab is started at a time (lab-work/current.json records which, and its testbed's prefix).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import time
from datetime import datetime
from pathlib import Path

from testbed import cli
from testbed.checks import require_testbed_host
from testbed.cleanup import is_running
from testbed.cmd_fabric import down, up
from testbed.commands import CommandError, command, group, prefix_arg
from testbed.lab import (
    WORK_ENV,
    Context,
    Lab,
    LabError,
    Testbed,
    apply_solution,
    check_functions,
    clear_current,
    copy_starter,
    find,
    format_result,
    load_labs,
    read_current,
    run_checks,
    work_dir,
    work_root,
    write_current,
)
from testbed.rundir import RunDir

group("lab", "classroom labs: list, start, check, solve, stop (labs/README.md)")


def _labs() -> list[Lab]:
    try:
        return load_labs()
    except LabError as exc:
        raise CommandError(str(exc), exc.code) from None


def _lab(args) -> Lab:
    try:
        return find(_labs(), args.number)
    except LabError as exc:
        raise CommandError(str(exc), exc.code) from None


def _work_arguments(p) -> None:
    p.add_argument("--work", default=None, metavar="DIR",
                   help=f"where the students' folders live (default lab-work/ in the checkout, or ${WORK_ENV})")


def _number_arguments(p) -> None:
    p.add_argument("number", metavar="N", help="the lab's number (testbed lab list)")
    _work_arguments(p)


def _started_testbed(current: dict) -> RunDir | None:
    """The run dir of the started lab's testbed while it runs."""
    if not current.get("testbed"):
        return None
    rundir = RunDir(current.get("run_root"), current["prefix"])
    return rundir if is_running(rundir) else None


# --- list ----------------------------------------------------------------------------------------

def _list_arguments(p) -> None:
    p.add_argument("--json", action="store_true", help="one JSON list of the labs")
    _work_arguments(p)


@command("lab list", help="list the labs: number, minutes, what the check grades, the testbed, the title",
         arguments=_list_arguments)
def lab_list(args) -> int:
    labs = _labs()
    current = read_current(work_root(args.work))
    if args.json:
        print(json.dumps([{"number": lab.number, "name": lab.name, "title": lab.title, "minutes": lab.minutes,
                           "summary": lab.summary, "testbed": lab.topology.stem if lab.topology else None,
                           "grades": "testbed" if lab.check_uses_testbed else "code",
                           "started": bool(current and current["number"] == lab.number)} for lab in labs]))
        return 0
    print(f"{'N':>2}  {'min':>3}  {'grades':<7}  {'testbed':<8}  title")
    for lab in labs:
        mark = "  (started)" if current and current["number"] == lab.number else ""
        print(f"{lab.number:>2}  {lab.minutes:>3}  {'testbed' if lab.check_uses_testbed else 'code':<7}  "
              f"{lab.topology.stem if lab.topology else '-':<8}  {lab.title}{mark}")
        print(f"{'':>25}{lab.summary}")
    print("\n'testbed lab start N' begins one (sudo if it has a testbed); labs/README.md says what a lab costs.")
    return 0


# --- start / stop --------------------------------------------------------------------------------

def _start_arguments(p) -> None:
    _number_arguments(p)
    p.add_argument("--prefix", default="vt", type=prefix_arg,
                   help="the prefix of the lab's testbed (default vt, so 'testbed vr ...' needs no --prefix)")
    p.add_argument("--run-root", default=None, help="where run directories live (default as 'testbed up')")


def _refuse_second_start(root, lab: Lab) -> None:
    current = read_current(root)
    if current is None:
        return
    if current.get("testbed") and _started_testbed(current) is None:
        clear_current(root)             # its testbed went down some other way: nothing is started
        return
    again = "is already started" if current["number"] == lab.number else f"{current['number']} is started"
    raise CommandError(f"lab {again} ({current['name']}"
                       + (f", testbed {current['prefix']!r}" if current.get("testbed") else "")
                       + "): 'testbed lab stop' first (your files stay)")


def _bring_up(lab: Lab, args) -> None:
    """`testbed up` of the lab's topology, then its setup commands, as the command line runs them."""
    require_testbed_host()
    t0 = time.monotonic()
    up(argparse.Namespace(topology=str(lab.topology), ofp_port=None, prefix=args.prefix, run_root=args.run_root))
    where = ["--prefix", args.prefix] + (["--run-root", args.run_root] if args.run_root else [])
    for line in lab.setup:
        print(f"  lab setup: testbed {line}")
        code = cli.main(shlex.split(line) + where)
        if code:
            raise CommandError(f"lab {lab.number}'s setup 'testbed {line}' failed (exit {code}); the testbed "
                               f"stays up: 'sudo testbed lab stop' or 'sudo testbed down --prefix {args.prefix}'")
    print(f"lab {lab.number}'s testbed is up in {time.monotonic() - t0:.1f} s")


@command("lab start", help="start lab N: copy its starter files to your work folder, bring up its testbed",
         arguments=_start_arguments)
def lab_start(args) -> int:
    lab, root = _lab(args), work_root(args.work)
    _refuse_second_start(root, lab)
    if lab.topology is not None:
        _bring_up(lab, args)
    copied, kept = copy_starter(lab, root)
    write_current(root, {"number": lab.number, "name": lab.name, "testbed": lab.topology is not None,
                         "prefix": args.prefix, "run_root": args.run_root,
                         "started": datetime.now().isoformat(timespec="seconds")})
    folder = work_dir(lab, root)
    print(f"lab {lab.number} started: {lab.title}")
    if copied:
        print(f"  starter files copied to {folder}/: {', '.join(copied)}")
    if kept:
        print(f"  kept your files in {folder}/: {', '.join(kept)} (delete them to start again from the starter)")
    print(f"  read {os.path.relpath(lab.readme)}; check your work with 'testbed lab check {lab.number}'")
    return 0


@command("lab stop", help="stop the started lab: its testbed goes down, your files stay",
         arguments=_work_arguments)
def lab_stop(args) -> int:
    root = work_root(args.work)
    current = read_current(root)
    if current is None:
        raise CommandError("no lab is started ('testbed lab start N')")
    rundir = _started_testbed(current)
    if rundir is not None:
        require_testbed_host()
        down(argparse.Namespace(prefix=current["prefix"], run_root=current.get("run_root")))
    clear_current(root)
    print(f"lab {current['number']} stopped; your files stay in {root / current['name']}/")
    return 0


# --- check / solve -------------------------------------------------------------------------------

def _check_arguments(p) -> None:
    _number_arguments(p)
    p.add_argument("--dir", default=None,
                   help="check the files in DIR instead of your work folder (e.g. labs/03-proactive/solution)")


def _running_testbed(lab: Lab, root, what: str) -> Testbed | None:
    """The running lab testbed's handle if the lab grades one, else None; CommandError without it."""
    if not lab.check_uses_testbed:
        return None
    current = read_current(root)
    if current is None or current["number"] != lab.number:
        raise CommandError(f"lab {lab.number}'s {what} works on its running testbed: "
                           f"'sudo testbed lab start {lab.number}' first")
    rundir = _started_testbed(current)
    if rundir is None:
        raise CommandError(f"lab {lab.number}'s testbed {current['prefix']!r} is not running: "
                           f"'testbed lab stop', then 'sudo testbed lab start {lab.number}'")
    return Testbed(current["prefix"], current.get("run_root"), rundir.path)


def _folder(lab: Lab, args, root):
    folder = work_dir(lab, root) if args.dir is None else Path(args.dir)
    if not folder.is_dir():
        if args.dir is not None:
            raise CommandError(f"--dir {args.dir}: no such folder", 2)
        raise CommandError(f"lab {lab.number} has no work folder yet ({folder}): 'testbed lab start {lab.number}' "
                           "copies its starter files there (or check other files with --dir DIR)")
    return folder


@command("lab check", help="check lab N: your files (and the lab's running testbed, if it grades one); "
                           "exit 0 when every check passes, 1 otherwise", arguments=_check_arguments)
def lab_check(args) -> int:
    lab, root = _lab(args), work_root(args.work)
    folder = _folder(lab, args, root)
    testbed = _running_testbed(lab, root, "check")
    print(f"lab {lab.number}: {lab.title}: checking {', '.join(str(folder / n) for n in lab.student_files)}")
    try:
        results = []
        for r in run_checks(lab, folder, testbed):
            results.append(r)
            print("\n".join(format_result(r)), flush=True)
    except LabError as exc:            # the lab's own check.py does not load: the lab's author's bug
        raise CommandError(f"lab {lab.number}'s check cannot run: {exc}") from None
    failed = sum(not r.passed for r in results)
    if failed:
        print(f"{len(results) - failed} of {len(results)} checks pass: {failed} to fix")
        return 1
    print(f"all {len(results)} checks pass")
    return 0


@command("lab solve", help="apply lab N's solution (for teachers): your files are saved first, then the "
                           "solution is copied over them (and applied to the testbed, for labs that grade one)",
         arguments=_check_arguments)
def lab_solve(args) -> int:
    lab, root = _lab(args), work_root(args.work)
    folder = work_dir(lab, root) if args.dir is None else Path(args.dir)
    try:
        _, solve = check_functions(lab)
    except LabError as exc:
        raise CommandError(f"lab {lab.number}'s check.py cannot run: {exc}") from None
    testbed = _running_testbed(lab, root, "solution") if solve is not None else None
    saved = apply_solution(lab, folder)
    if saved is not None:
        print(f"your files are saved in {saved}/")
    print(f"lab {lab.number}'s solution copied to {folder}/: {', '.join(lab.student_files)}")
    if solve is not None:
        solve(Context(lab, folder, testbed))
        print(f"lab {lab.number}'s solution applied to testbed {testbed.prefix!r}")
    print(f"'testbed lab check {lab.number}'" + (f" --dir {folder}" if args.dir else "") + " should now pass")
    return 0
