"""The classroom labs (labs/): every code lab's check fails on its starter, saying where to look, and
passes on its solution; common mistakes get the finding meant for them; the framework's loading,
validation, check runner and `testbed lab` commands (testbed/lab.py, testbed/cmd_lab.py)."""
import json
import textwrap

import pytest

from testbed import cli, cmd_lab
from testbed import lab as labmod
from testbed.commands import COMMANDS
from testbed.lab import (
    Finding,
    LabError,
    LabFileError,
    apply_solution,
    check_functions,
    copy_starter,
    find,
    load_lab,
    load_labs,
    run_checks,
)
from testbed.labkit import script_commands

LABS = load_labs()
CODE_LABS = [lab for lab in LABS if not lab.check_uses_testbed]


def _failed(lab, folder):
    return {r.name: r.findings for r in run_checks(lab, folder) if not r.passed}


# ---------------------------------------------------------------- every code lab: starter fails, solution passes

def test_the_code_labs_exist():
    assert [lab.number for lab in CODE_LABS] == [3, 5, 6]


@pytest.mark.parametrize("lab", CODE_LABS, ids=lambda lab: lab.name)
def test_the_check_fails_on_the_starter_and_each_finding_says_where_to_look(lab):
    failed = _failed(lab, lab.path)
    assert failed, f"{lab.name}: every check passes on the starter"
    for name, findings in failed.items():
        for f in findings:
            assert f.where.startswith(lab.student_files), f"{lab.name} {name}: {f.message!r} points at {f.where!r}"
            assert "\n" not in f.message and "Traceback" not in f.message


@pytest.mark.parametrize("lab", CODE_LABS, ids=lambda lab: lab.name)
def test_the_check_passes_on_the_solution(lab):
    assert _failed(lab, lab.solution) == {}


def test_lab3_starter_fails_where_its_todos_are_and_runs_otherwise():
    failed = _failed(find(LABS, 3), find(LABS, 3).path)
    assert set(failed) == {"check_mirror", "check_reverse_entry", "check_slow_path_calls", "check_reverse_policy"}
    assert "TODO 1" in failed["check_mirror"][0].where
    assert "no reverse entry" in failed["check_reverse_entry"][0].message
    assert "cost 4 slow-path calls (srv1 2, srv2 2); expected 2" in failed["check_slow_path_calls"][0].message


def _variant(tmp_path, lab, name, old, new):
    """The solution with one mistake put in: ``old`` replaced by ``new`` in file ``name``."""
    text = (lab.solution / name).read_text()
    assert old in text
    (tmp_path / name).write_text(text.replace(old, new))
    return _failed(lab, tmp_path)


def test_lab3_a_reverse_entry_copied_from_the_forward_one_is_named_as_such(tmp_path):
    failed = _variant(tmp_path, find(LABS, 3), "decide.py", "evaluate(*mirror(key))", "dict(forward)")
    assert "is a copy of the forward one" in failed["check_reverse_entry"][0].message
    assert "check_reverse_policy" in failed


def test_lab3_a_mirror_that_forgets_the_ports(tmp_path):
    failed = _variant(tmp_path, find(LABS, 3), "decide.py", "[proto, dst, src, dport, sport]",
                      "[proto, dst, src, sport, dport]")
    assert "mirror([6, 3232235787, 3232235788, 40000, 80]) returned [6, 3232235788, 3232235787, 40000, 80]" in \
        failed["check_mirror"][0].message
    assert "which is what your mirror() gives" in failed["check_reverse_entry"][0].message
    assert "TODO 1" in failed["check_reverse_entry"][0].where


def test_lab5_a_rule_that_ignores_psh_fails_where_psh_is_handled(tmp_path):
    failed = _variant(tmp_path, find(LABS, 5), "rule.py", 'return True, "psh"', "return True, None")
    assert set(failed) == {"check_end_of_merge", "check_random_streams"}
    f = failed["check_end_of_merge"][0]
    assert f.message.startswith("8 segments, PSH on the 5th: your rule gives [8] segments per delivery")
    assert "Linux GRO gives [5, 3] segments per delivery" in f.message and "TODO 5" in f.where


def test_lab5_a_rule_without_the_size_limit_is_caught_before_the_core_breaks(tmp_path):
    failed = _variant(tmp_path, find(LABS, 5), "rule.py", "merge.size + seg.dlen > merge.limit", "False")
    assert "beyond 65,535 bytes" in failed["check_size"][0].message and "TODO 3" in failed["check_size"][0].where


def test_lab5_starter_merges_a_plain_stream_already():
    failed = _failed(find(LABS, 5), find(LABS, 5).path)
    assert "check_contiguous_stream" not in failed and "check_gaps" not in failed
    assert {"check_end_of_merge", "check_other_packets", "check_headers", "check_size"} <= set(failed)


def test_lab6_a_rebuild_from_scratch_is_told_how_many_buckets_must_move(tmp_path):
    lab = find(LABS, 6)
    text = (lab.solution / "table.py").read_text()
    body = text[text.index("def rebalance"):]
    (tmp_path / "table.py").write_text(text.replace(body, "def rebalance(buckets, quotas):\n"
                                                          "    return interleave(quotas)\n"))
    failed = _failed(lab, tmp_path)
    assert set(failed) == {"check_rebalance_examples", "check_rebalance_property", "check_real_steering"}
    assert "your rebalance moved 85 of 128 buckets; 25 must move" in failed["check_rebalance_examples"][0].message


def test_a_student_file_that_does_not_load_is_one_finding_per_check_with_its_line(tmp_path):
    lab = find(LABS, 6)
    (tmp_path / "table.py").write_text("def apportion(weights, size)\n    return {}\n")
    results = list(run_checks(lab, tmp_path))
    assert results and all(not r.passed for r in results)
    assert {r.findings[0].message for r in results} == {"table.py does not load: expected ':' (line 1)"}
    assert results[0].findings[0].where == "table.py, line 1"



# ---------------------------------------------------------------- testbed labs (their runs: tests/e2e/test_labs_*.py)

TESTBED_LABS = [lab for lab in LABS if lab.check_uses_testbed]


@pytest.mark.parametrize("lab", TESTBED_LABS, ids=lambda lab: lab.name)
def test_a_testbed_lab_solves_with_its_solution_scripts_commands_and_its_starter_runs_none(lab):
    _, solve = check_functions(lab)
    assert solve is not None, f"{lab.name}: a lab that grades its testbed applies its solution with solve(ctx)"
    for name in lab.student_files:
        if name.endswith(".sh"):
            assert script_commands(lab.path / name) == [], f"{lab.name}/{name}: the starter already changes the testbed"
            assert script_commands(lab.solution / name), f"{lab.name}/solution/{name} runs no testbed command"


def test_script_commands_split_a_commands_name_from_its_arguments(tmp_path):
    script = tmp_path / "s.sh"
    script.write_text("#!/bin/sh\nset -e\n# testbed fault clear\nsudo testbed fault link leaf1-spine1 up\n"
                      "testbed capture --link leaf1-spine1 --filter 'udp port 6635' -o x  # a comment\n\n")
    assert script_commands(script) == [("fault link", ["leaf1-spine1", "up"]),
                                       ("capture", ["--link", "leaf1-spine1", "--filter", "udp port 6635", "-o", "x"])]


def test_lab1_breaks_the_link_its_check_expects_drained():
    lab = find(LABS, 1)
    check = labmod.load_module(lab.check_file, "lab01_check_consts")
    assert f"fault impair {check.BROKEN} --loss 100% --from {check.BROKEN_FROM}" in lab.setup
    assert ("fault link", [check.BROKEN, "down"]) in script_commands(lab.solution / "repair.sh")


# ---------------------------------------------------------------- lab descriptions

def _lab(root, name="07-attack", yaml_text=None, files=("noisy.py",), solution=True, extra=()):
    d = root / name
    (d / "solution").mkdir(parents=True)
    (d / "README.md").write_text("# lab\n")
    (d / "check.py").write_text("def check_nothing(ctx):\n    '''nothing to check'''\n")
    for f in files:
        (d / f).write_text("x = 1\n")
        if solution:
            (d / "solution" / f).write_text("x = 2\n")
    for f in extra:
        (d / f).write_text("")
    (d / "lab.yaml").write_text(yaml_text if yaml_text is not None else textwrap.dedent("""\
        title: The flow table under attack
        minutes: 60
        summary: a noisy VM
        testbed: default
        student_files: [noisy.py]
    """))
    return d


def test_a_valid_lab_loads(tmp_path):
    lab = load_lab(_lab(tmp_path))
    assert (lab.number, lab.title, lab.minutes, lab.student_files) == (7, "The flow table under attack", 60,
                                                                       ("noisy.py",))
    assert lab.topology == labmod.TOPOLOGIES_DIR / "default.yaml" and not lab.check_uses_testbed and lab.setup == ()


def test_every_problem_of_a_lab_description_at_once(tmp_path):
    d = _lab(tmp_path, files=("noisy.py",), solution=False, yaml_text=textwrap.dedent("""\
        title: 7
        minutes: 500
        testbed: nowhere
        setup: ["net mode reactive"]
        student_files: [noisy.py, ../etc/passwd, gone.py]
        colour: red
    """))
    (d / "README.md").unlink()
    with pytest.raises(LabFileError) as exc:
        load_lab(d)
    problems = exc.value.problems
    where = "labs/07-attack/lab.yaml"
    assert problems == [
        f"{where}: unknown key 'colour' (known: title, minutes, summary, testbed, setup, student_files, "
        "check_uses_testbed)",
        f"{where}: summary is missing",
        f"{where}: title: 7 is not a str",
        f"{where}: minutes: 500 is not within 15-120",
        f"{where}: testbed: 'nowhere' is neither a file of the lab nor topologies/nowhere.yaml (or 'none' for a "
        "lab without a testbed)",
        f"{where}: student_files: no solution file labs/07-attack/solution/noisy.py",
        f"{where}: student_files: '../etc/passwd' is not a plain file name of the lab folder",
        f"{where}: student_files: no starter file labs/07-attack/gone.py",
        f"{where}: student_files: no solution file labs/07-attack/solution/gone.py",
        "labs/07-attack/README.md: missing",
    ]
    assert exc.value.code == 2 and str(exc.value).startswith("invalid lab description (10 problems): ")


def test_lab_folders_names_yaml_and_numbers(tmp_path):
    with pytest.raises(LabFileError, match="a lab folder is named NN-name"):
        load_lab(_lab(tmp_path, "7-attack"))
    with pytest.raises(LabFileError, match="lab.yaml: not YAML"):
        load_lab(_lab(tmp_path, "08-faults", yaml_text="title: [unclosed\n"))
    with pytest.raises(LabFileError, match="expected a mapping of title, minutes"):
        load_lab(_lab(tmp_path, "09-x", yaml_text="- a list\n"))
    root = tmp_path / "two"
    _lab(root, "07-attack")
    _lab(root, "07-noisy")
    with pytest.raises(LabFileError, match="labs/07-noisy: number 7 is taken by labs/07-attack"):
        load_labs(root)
    d = _lab(tmp_path, "10-state", yaml_text="title: t\nminutes: 60\nsummary: s\ntestbed: none\n"
                                              "student_files: [noisy.py]\ncheck_uses_testbed: true\n")
    with pytest.raises(LabFileError, match="check_uses_testbed: the check grades a testbed, but the lab has none"):
        load_lab(d)


def test_find_takes_3_or_03_and_names_the_labs_there_are():
    assert find(LABS, "03").number == 3 and find(LABS, 5).number == 5
    there = labmod.numbers(LABS)
    assert there == ", ".join(str(lab.number) for lab in sorted(LABS, key=lambda lab: lab.number))
    for bad, msg in (("9", f"there is no lab 9 (labs: {there}; 'testbed lab list')"),
                     ("three", f"'three' is not a lab number (labs: {there}; 'testbed lab list')")):
        with pytest.raises(LabError) as exc:
            find(LABS, bad)
        assert str(exc.value) == msg and exc.value.code == 2


# ---------------------------------------------------------------- work folders and the check runner

def test_starter_files_are_copied_once_and_the_solution_saves_the_students_files(tmp_path):
    lab = find(LABS, 6)
    assert copy_starter(lab, tmp_path) == (["table.py"], [])
    mine = tmp_path / "06-rps" / "table.py"
    mine.write_text("# my work\n")
    assert copy_starter(lab, tmp_path) == ([], ["table.py"]) and mine.read_text() == "# my work\n"
    saved = apply_solution(lab, mine.parent)
    assert (saved / "table.py").read_text() == "# my work\n"
    assert mine.read_text() == (lab.solution / "table.py").read_text()


def test_the_runner_turns_every_kind_of_failure_into_a_finding(tmp_path):
    d = _lab(tmp_path, "11-runner", files=("code.py",), yaml_text="title: t\nminutes: 60\nsummary: s\n"
                                                                  "student_files: [code.py]\n")
    (d / "code.py").write_text("def f(x):\n    return 1 / x\n")
    (d / "check.py").write_text(textwrap.dedent('''\
        from hypothesis import given, strategies as st
        from testbed.lab import Finding, Wrong
        from testbed.labkit import PROPERTY

        def check_passes(ctx):
            """passes"""

        def check_wrong(ctx):
            """raises Wrong"""
            raise Wrong("f is off by one", "code.py, f()")

        def check_returns(ctx):
            """returns findings"""
            return [Finding("first", "code.py"), "second"]

        def check_asserts(ctx):
            """asserts"""
            assert ctx.student().f(1) == 2, "f(1) should be 2"

        def check_student_raises(ctx):
            """the student's code raises"""
            ctx.student().f(0)

        def check_property(ctx):
            """a property"""
            @PROPERTY
            @given(st.integers(0, 10))
            def small(x):
                assert x < 5, "x too big"
            small()
    '''))
    results = {r.name: r for r in run_checks(load_lab(d), d)}
    assert list(results) == ["check_passes", "check_wrong", "check_returns", "check_asserts",
                             "check_student_raises", "check_property"]
    assert results["check_passes"].passed and results["check_passes"].title == "passes"
    assert results["check_wrong"].findings == [Finding("f is off by one", "code.py, f()")]
    assert results["check_returns"].findings == [Finding("first", "code.py"), Finding("second", "")]
    assert results["check_asserts"].findings == [Finding("f(1) should be 2")]
    assert results["check_student_raises"].findings == [
        Finding("your code raised ZeroDivisionError: division by zero", "code.py, line 2 in f")]
    (prop,) = results["check_property"].findings
    assert prop.message == "x too big (smallest failing case: small(x=5))"


# ---------------------------------------------------------------- the commands

@pytest.fixture
def work(tmp_path, monkeypatch):
    monkeypatch.setenv(labmod.WORK_ENV, str(tmp_path / "work"))
    return tmp_path / "work"


def _run(capsys, *argv):
    code = cli.main(["lab", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_the_lab_commands_are_those_the_module_documents():
    cli.build_parser()
    names = sorted(n for n in COMMANDS if n.startswith("lab "))
    assert names == ["lab check", "lab list", "lab measure", "lab solve", "lab start", "lab stop"]
    for name in names:
        assert f"testbed {name}" in cmd_lab.__doc__


def test_lab_list(capsys, work):
    code, out, _ = _run(capsys, "list")
    lines = out.splitlines()
    assert code == 0 and lines[0].split() == ["N", "min", "grades", "testbed", "title"]
    rows = lines[1:2 * len(LABS):2]
    assert [line.split()[0] for line in rows] == [str(lab.number) for lab in LABS]
    (three,) = [line for line in rows if line.split()[0] == "3"]
    assert three.split()[:4] == ["3", "75", "code", "default"]
    assert "The slow path and proactive reverse entries" in three
    code, out, _ = _run(capsys, "list", "--json")
    listed = [(d["number"], d["grades"], d["testbed"]) for d in json.loads(out)]
    assert {(1, "testbed", "default"), (3, "code", "default"), (5, "code", "default"), (6, "code", None)} <= \
        set(listed) and [n for n, _, _ in listed] == [lab.number for lab in LABS]


def test_errors_are_one_line_without_a_traceback(capsys, work):
    assert _run(capsys, "check", "9") == (2, "", f"error: there is no lab 9 (labs: {labmod.numbers(LABS)}; "
                                                 "'testbed lab list')\n")
    code, _, err = _run(capsys, "check", "3")
    assert code == 1 and err == (f"error: lab 3 has no work folder yet ({work}/03-proactive): 'testbed lab start 3' "
                                 "copies its starter files there (or check other files with --dir DIR)\n")
    assert _run(capsys, "check", "3", "--dir", "/nowhere") == (2, "", "error: --dir /nowhere: no such folder\n")
    assert _run(capsys, "stop") == (1, "", "error: no lab is started ('testbed lab start N')\n")


def test_a_lab_without_a_testbed_from_start_to_stop(capsys, work):
    code, out, _ = _run(capsys, "start", "6")
    assert code == 0 and f"starter files copied to {work}/06-rps/: table.py" in out
    assert json.loads((work / "current.json").read_text())["number"] == 6
    code, _, err = _run(capsys, "start", "6")
    assert code == 1 and err == "error: lab is already started (06-rps): 'testbed lab stop' first (your files stay)\n"
    code, _, err = _run(capsys, "start", "3")       # refused before anything is brought up
    assert code == 1 and err.startswith("error: lab 6 is started (06-rps)")
    code, out, _ = _run(capsys, "check", "6")
    assert code == 1 and "  FAIL  apportion()" in out and out.rstrip().endswith("checks pass: 5 to fix")
    code, out, _ = _run(capsys, "solve", "6")
    assert code == 0 and "your files are saved in" in out
    code, out, _ = _run(capsys, "check", "6")
    assert code == 0 and out.rstrip().endswith("all 5 checks pass")
    code, out, _ = _run(capsys, "stop")
    assert code == 0 and out == f"lab 6 stopped; your files stay in {work}/06-rps/\n"
    code, out, _ = _run(capsys, "start", "6")
    assert code == 0 and "kept your files" in out and "table.py" in out


def test_check_of_a_lab_that_grades_its_testbed_needs_it_running(capsys, work, tmp_path, monkeypatch):
    root = tmp_path / "labs"
    _lab(root, "08-faults", yaml_text="title: Faults\nminutes: 60\nsummary: s\ntestbed: default\n"
                                      "student_files: [noisy.py]\ncheck_uses_testbed: true\n")
    monkeypatch.setattr(labmod, "LABS_DIR", root)
    (work / "08-faults").mkdir(parents=True)
    code, _, err = _run(capsys, "check", "8")
    assert code == 1 and err == "error: lab 8's check works on its running testbed: 'sudo testbed lab start 8' first\n"
    labmod.write_current(work, {"number": 8, "name": "08-faults", "testbed": True, "prefix": "zz",
                                "run_root": str(tmp_path / "run")})
    code, _, err = _run(capsys, "check", "8")
    assert code == 1 and err == ("error: lab 8's testbed 'zz' is not running: 'testbed lab stop', then "
                                 "'sudo testbed lab start 8'\n")
    code, out, _ = _run(capsys, "stop")               # its testbed is gone: nothing to bring down
    assert code == 0 and not (work / "current.json").exists()
