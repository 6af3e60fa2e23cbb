"""What the labs' end-to-end tests share: the `testbed` command line as a class runs it, in a work
folder of the test's own (VNET_TESTBED_LAB_WORK)."""
import os
import subprocess
import sys


def run_cli(*args, env, timeout=180):
    return subprocess.run([sys.executable, "-m", "testbed.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def lab_env(work):
    """The environment of a student whose lab-work folder is ``work``."""
    return {**os.environ, "VNET_TESTBED_LAB_WORK": str(work)}
