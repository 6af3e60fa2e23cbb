"""`testbed exec` and the daemon client without root: which namespace a host name picks, how the
command line is parsed (options before HOST), and that the daemon's socket failing is a one-line
CommandError, never a traceback. On real hosts: tests/e2e/test_exec.py."""
import socket
import threading
from pathlib import Path

import pytest

from testbed import cli, daemon
from testbed.cmd_fabric import exec_argv, exec_target
from testbed.commands import CommandError
from testbed.rundir import RunDir

FOUND = {"srv1": Path("/r/netns/srv1"), "red1": Path("/r/netns/red1"), "red9": Path("/run/netns/hx-red9")}


def test_a_server_or_a_vm_picks_its_namespace():
    assert exec_target("srv1", FOUND, ["srv1", "srv2"], "hx") == Path("/r/netns/srv1")
    assert exec_target("red9", FOUND, ["srv1", "srv2"], "hx") == Path("/run/netns/hx-red9")


def test_an_unknown_host_lists_the_servers_and_vms_there_are():
    with pytest.raises(CommandError) as exc:
        exec_target("srv7", FOUND, ["srv1", "srv2"], "hx")
    assert exc.value.code == 2
    assert str(exc.value) == "unknown host 'srv7' in testbed 'hx': servers srv1 srv2; VMs red1 red9"


def test_a_server_without_its_handle_says_so():
    with pytest.raises(CommandError) as exc:
        exec_target("srv2", FOUND, ["srv1", "srv2"], "hx")
    assert exc.value.code == 1 and "has no namespace handle" in str(exc.value)


def test_the_command_line_runs_in_bash_in_the_namespace():
    assert exec_argv(Path("/r/netns/srv1"), "srv1", "ping -c1 x") == [
        "nsenter", "--net=/r/netns/srv1", "--", "bash", "-c", "ping -c1 x", "srv1"]


@pytest.mark.parametrize("argv, host, cmd, prefix", [
    (["--prefix", "hx", "srv1", "ping", "-c1", "x"], "srv1", ["ping", "-c1", "x"], "hx"),
    (["srv1", "ping", "-c1", "x", "--prefix", "hx"], "srv1", ["ping", "-c1", "x", "--prefix", "hx"], "vt"),
    (["srv1", "ls", "-h"], "srv1", ["ls", "-h"], "vt"),
    (["srv1", "--", "echo", "--", "x"], "srv1", ["echo", "--", "x"], "vt"),
])
def test_everything_after_host_is_the_command(argv, host, cmd, prefix):
    args = cli.build_parser().parse_args(["exec", *argv])
    assert (args.host, args.cmd, args.prefix) == (host, cmd, prefix)


def test_help_says_which_hosts_and_where_options_go(capsys):
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["exec", "--help"])
    out = capsys.readouterr().out
    assert "HOST is a server (srv1) or a VM (red1)" in out and "go before HOST" in out


@pytest.fixture
def rundir(tmp_path):
    rd = RunDir(tmp_path, "hx")
    rd.create()
    return rd


def serve_once(rundir, answer):
    """A control socket that accepts one connection, reads the request and calls answer(conn)."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(rundir.control_socket))
    listener.listen(1)

    def run():
        conn, _ = listener.accept()
        conn.recv(4096)
        answer(conn)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return listener, t


def test_no_daemon_is_a_command_error(rundir):
    with pytest.raises(CommandError, match="the daemon of testbed 'hx' is not answering on"):
        daemon.request(rundir, "stop")


def test_a_daemon_that_does_not_answer_in_time_is_a_command_error(rundir):
    held = []
    listener, t = serve_once(rundir, held.append)  # keeps the connection open, says nothing
    try:
        with pytest.raises(CommandError, match="no answer to 'stop' from the daemon of testbed 'hx' within 0.2 s"):
            daemon.request(rundir, "stop", timeout=0.2)
    finally:
        t.join(5)
        for c in held:
            c.close()
        listener.close()


def test_a_daemon_that_goes_away_mid_request_is_a_command_error(rundir):
    listener, t = serve_once(rundir, lambda conn: conn.close())
    try:
        with pytest.raises(CommandError, match="ended the connection without answering 'controller-restart'"):
            daemon.request(rundir, "controller-restart")
    finally:
        t.join(5)
        listener.close()


def test_an_answer_is_returned(rundir):
    listener, t = serve_once(rundir, lambda conn: (conn.sendall(b'{"ok": true, "pid": 7}\n'), conn.close()))
    try:
        assert daemon.request(rundir, "controller-restart") == {"ok": True, "pid": 7}
    finally:
        t.join(5)
        listener.close()
