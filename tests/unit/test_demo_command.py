"""`testbed demo`: the main experiment as a child process, its arguments passed through, its exit
code returned; `testbed` itself never imports `experiments` (tests/unit/test_measure.py checks the
imports, this checks the process)."""
import subprocess
import sys

import pytest

from testbed import REPO, cli, cmd_demo


def run_testbed(*argv):
    return subprocess.run([sys.executable, "-m", "testbed.cli", *argv], capture_output=True, text=True, cwd=REPO,
                          timeout=60)


def test_help_is_the_experiments_own():
    r = run_testbed("demo", "--help")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("usage: python -m experiments.proactive_flow") and "--connections" in r.stdout


def test_arguments_and_exit_code_pass_through():
    r = run_testbed("demo", "-n", "0", "--json")
    assert r.returncode == 2
    assert r.stderr == "error: --connections must be between 1 and 2500\n"


def test_the_experiment_runs_from_the_checkout_with_this_interpreter(monkeypatch):
    seen = {}

    class FakePopen:
        def __init__(self, argv, cwd):
            seen.update(argv=argv, cwd=cwd)

        def wait(self):
            return 7

    monkeypatch.setattr(cmd_demo.subprocess, "Popen", FakePopen)
    assert cli.main(["demo", "-n", "20", "--topology", "x.yaml"]) == 7
    assert seen == {"argv": [sys.executable, "-m", "experiments.proactive_flow", "-n", "20", "--topology", "x.yaml"],
                    "cwd": str(REPO)}


def test_other_commands_still_refuse_unknown_arguments(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["validate", str(REPO / "topologies" / "default.yaml"), "--bogus"])
    assert exc.value.code == 2
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err


def test_loading_every_command_imports_no_experiment():
    code = ("import sys; from testbed import cli; cli.build_parser(); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'experiments'))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"
