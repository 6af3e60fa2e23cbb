"""`testbed lab start|solve|check|stop` as a class runs them: lab 3 brings up its testbed (the
default topology) for a fresh work folder, a second start is refused, the solution checks out, the
testbed forwards, and stop brings it down and keeps the student's files."""
import json

import pytest

from lab_helpers import lab_env, run_cli

pytestmark = pytest.mark.e2e


def test_lab_3_from_start_to_stop(run_root, new_prefix, tmp_path):
    prefix, work = new_prefix("l"), tmp_path / "work"
    env = lab_env(work)
    opts = ["--prefix", prefix, "--run-root", str(run_root)]
    r = run_cli("lab", "start", "3", *opts, env=env)
    try:
        assert r.returncode == 0, r.stderr
        print(r.stdout)                                  # the bring-up time, for the record
        assert (work / "03-proactive" / "decide.py").is_file()
        (entry,) = json.loads(run_cli("status", "--json", *opts, env=env).stdout)
        assert entry["running"] and entry["state"] == "up"
        again = run_cli("lab", "start", "5", *opts, env=env)
        assert again.returncode == 1 and again.stderr.startswith("error: lab 3 is started (03-proactive, testbed")
        assert run_cli("lab", "check", "3", env=env).returncode == 1       # the starter
        assert run_cli("lab", "solve", "3", env=env).returncode == 0
        checked = run_cli("lab", "check", "3", env=env)
        assert checked.returncode == 0 and checked.stdout.rstrip().endswith("all 6 checks pass"), checked.stdout
        ping = run_cli("exec", *opts, "red1", "ping", "-n", "-c1", "-W2", "192.168.1.13", env=env)
        assert ping.returncode == 0, ping.stdout + ping.stderr
    finally:
        stop = run_cli("lab", "stop", env=env)
    assert stop.returncode == 0, stop.stderr
    assert run_cli("status", *opts, env=env).returncode == 3
    assert (work / "03-proactive" / "decide.py").is_file() and not (work / "current.json").exists()
