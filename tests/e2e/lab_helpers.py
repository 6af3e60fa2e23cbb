"""What the end-to-end tests of the testbed labs share: the `testbed` command line as a class runs
it, in a work folder of the test's own (VNET_TESTBED_LAB_WORK), and `testbed lab start N` on a fresh
prefix with `lab stop` however the test ends."""
import contextlib
import os
import subprocess
import sys


def run_cli(*args, env, timeout=180):
    return subprocess.run([sys.executable, "-m", "testbed.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def lab_env(work):
    """The environment of a student whose lab-work folder is ``work``."""
    return {**os.environ, "VNET_TESTBED_LAB_WORK": str(work)}


@contextlib.contextmanager
def started_lab(number, run_root, prefix, work):
    """Lab ``number`` started on its own testbed; yields the environment its commands need."""
    env = lab_env(work)
    started = run_cli("lab", "start", str(number), "--prefix", prefix, "--run-root", str(run_root), env=env)
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        print(started.stdout)                               # the bring-up and setup, for the record
        yield env
    finally:
        stopped = run_cli("lab", "stop", env=env)
        assert stopped.returncode == 0, stopped.stderr


def check(env, number, timeout=120):
    """`testbed lab check N`: (exit status, {check title: the lines it printed})."""
    done = run_cli("lab", "check", str(number), env=env, timeout=timeout)
    results, title = {}, None
    for line in done.stdout.splitlines():
        if line.startswith(("  ok    ", "  FAIL  ")):
            title = line[8:]
            results[title] = [line[2:6].strip()]
        elif title and line.startswith("        "):
            results[title].append(line.strip())
    return done.returncode, results
