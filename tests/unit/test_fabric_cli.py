"""The testbed command line without root: preconditions, validation, generator, command registry."""
import subprocess

import pytest
import yaml

from testbed import checks, cli, commands


def run(capsys, *argv):
    rc = cli.main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize("argv", [["up"], ["down"], ["clean"], ["cli"], ["bench", "fabric"],
                                  ["server", "restart", "srv1"]])
def test_commands_that_build_namespaces_refuse_non_root_in_one_line(monkeypatch, capsys, argv):
    monkeypatch.setattr(checks.os, "geteuid", lambda: 1000)
    rc, out, err = run(capsys, *argv)
    assert rc == 1
    assert err == "error: testbed needs root: run it with sudo\n"


def test_missing_ovs_says_what_to_run(monkeypatch, capsys):
    monkeypatch.setattr(checks.os, "geteuid", lambda: 0)
    monkeypatch.setattr(checks.shutil, "which", lambda name: None)
    rc, out, err = run(capsys, "up")
    assert rc == 1 and err == "error: Open vSwitch is not installed: run 'sudo make setup'\n"


def test_stopped_ovs_says_how_to_start_it(monkeypatch, capsys):
    monkeypatch.setattr(checks.os, "geteuid", lambda: 0)
    monkeypatch.setattr(checks.shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(checks.subprocess, "run",
                        lambda *a, **k: subprocess.CompletedProcess(a, 1, "", "database connection failed"))
    rc, out, err = run(capsys, "up")
    assert rc == 1 and err.count("\n") == 1
    assert "Open vSwitch is not running: run 'sudo make ovs'" in err and "ovs-ctl start" in err


def test_validate_lists_every_problem_and_exits_2(tmp_path, capsys):
    f = tmp_path / "bad.yaml"
    f.write_text("underlay: 10.0.0.0/16\nswitches: [{name: leaf1, role: leaf}]\n"
                 "servers: [{name: srv1, address: 10.0.1.300}, {name: srv1, address: 10.0.1.2}]\n"
                 "links: [[srv1, leaf9]]\n")
    rc, out, err = run(capsys, "validate", str(f))
    assert rc == 2
    lines = err.splitlines()
    assert lines[0].startswith("error: invalid topology (")
    assert f"{f}: servers[0].address: '10.0.1.300' is not an IPv4 address" in lines
    assert any(line.startswith(f"{f}: servers[1].name: duplicate name") for line in lines)
    assert any(line.startswith(f"{f}: links[0][1]: 'leaf9'") for line in lines)
    assert "Traceback" not in err


def test_validate_good_file(capsys):
    rc, out, err = run(capsys, "validate", "topologies/default.yaml")
    assert rc == 0 and "ok (2 spines, 2 leaves, 4 servers" in out


def test_gen_writes_a_valid_2x8x4_fabric(tmp_path, capsys):
    f = tmp_path / "big.yaml"
    rc, out, err = run(capsys, "gen", "--spines", "2", "--leaves", "8", "--servers-per-leaf", "4", "-o", str(f))
    assert rc == 0
    doc = yaml.safe_load(f.read_text())
    assert len(doc["servers"]) == 32 and len(doc["links"]) == 16 + 32
    rc, out, err = run(capsys, "validate", str(f))
    assert rc == 0


def test_gen_bad_parameters_is_a_one_line_error(capsys):
    rc, out, err = run(capsys, "gen", "--leaves", "0")
    assert rc == 2 and err == "error: leaves must be an integer in 1..255, got 0\n"


def test_status_without_runs(tmp_path, capsys):
    rc, out, err = run(capsys, "status", "--run-root", str(tmp_path))
    assert rc == 3 and "no testbed run dirs" in out


def test_other_modules_add_subcommands_through_the_registry(capsys):
    seen = {}

    def run_it(args):
        seen["n"] = args.n
        return 7

    commands.command("zzgroup thing", help="test command",
                     arguments=lambda p: p.add_argument("--n", type=int, default=1))(run_it)
    try:
        rc, out, err = run(capsys, "zzgroup", "thing", "--n", "5")
        assert rc == 7 and seen == {"n": 5}
    finally:
        del commands.COMMANDS["zzgroup thing"]


def test_registering_a_name_twice_is_refused():
    cli.load_command_modules()  # registers "validate" (passed only after another test had done it)
    with pytest.raises(ValueError, match="registered twice"):
        commands.command("validate", help="again")(lambda args: 0)


@pytest.mark.parametrize("argv", [["bench", "throughput", "--prefix", "bB1"], ["bench", "flowsetup", "--prefix", "x_y"],
                                  ["status", "--prefix", "Way-Too-Long"], ["clean", "--prefix", "toolong1"],
                                  ["lab", "start", "3", "--prefix", "Q"]])
def test_a_bad_prefix_is_a_usage_error_not_a_traceback(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "argument --prefix: prefix" in err and "Traceback" not in err
