"""`testbed demo [ARGS]`: the main experiment, proactive vs reactive flow setup.

Runs `python -m experiments.proactive_flow ARGS` as a child process in the checkout, so `testbed`
never imports `experiments` (testbed/ sits below them): every argument is passed through unparsed
(`testbed demo --help` is the experiment's help), its output streams as it comes, its exit code is
the command's. Results go to results/proactive_flow/<timestamp>/.
"""
from __future__ import annotations

import argparse
import subprocess
import sys

from testbed import REPO
from testbed.commands import command

EXPERIMENT = "experiments.proactive_flow"


def experiment_argv(args: list[str]) -> list[str]:
    return [sys.executable, "-m", EXPERIMENT, *args]


def run_experiment(args: list[str]) -> int:
    """Run the experiment with `args`, inheriting stdin/stdout/stderr; its exit code.

    Ctrl-C reaches the child too (same process group): we keep waiting while it tears its testbed
    down, rather than leave it half-stopped."""
    proc = subprocess.Popen(experiment_argv(args), cwd=str(REPO))
    while True:
        try:
            return proc.wait()
        except KeyboardInterrupt:
            continue


# Not root=True: the experiment checks root and Open vSwitch itself, and `--help` needs neither.
@command("demo", help=f"run the main experiment (proactive vs reactive flow setup; python -m {EXPERIMENT} "
                      "with these arguments) -> results/proactive_flow/", passthrough=True)
def demo(args: argparse.Namespace) -> int:
    return run_experiment(args.passthrough)
