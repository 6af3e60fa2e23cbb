"""Fault injection without root: link names from a fabric description, value parsing, the tc
commands and their loss filter, the recorded state and what `clear` undoes (testbed/fault_logic.py);
and testbed/faults.py with its shell faked and a real `sleep` as the paused process: the state file
and the log as a new process reads them."""
import json
import os
import subprocess
import time

import psutil
import pytest

from testbed import cli, generator
from testbed import fault_logic as fl
from testbed.fabric import describe
from testbed.faults import Faults
from testbed.rundir import RunDir, process_record
from testbed.topology import from_dict


@pytest.fixture(scope="module")
def desc():
    return describe(from_dict(generator.leaf_spine(2, 2, 2, "default"), source="test"), "hf")


# --- links ----------------------------------------------------------------------------------------

def test_links_are_named_by_their_ends_and_resolve_in_either_order(desc):
    names = list(fl.links(desc))
    assert names == ["leaf1-spine1", "leaf1-spine2", "leaf2-spine1", "leaf2-spine2",
                     "srv1-leaf1", "srv2-leaf1", "srv3-leaf2", "srv4-leaf2"]
    assert fl.resolve_link(desc, "spine2-leaf1").name == "leaf1-spine2"
    assert fl.resolve_link(desc, "leaf1-srv1").name == "srv1-leaf1"


def test_a_fabric_cut_downs_both_switch_ends_an_access_cut_only_the_leafs(desc):
    fabric_link = fl.resolve_link(desc, "leaf1-spine2")
    assert [(e.node, e.intf, e.server) for e in fabric_link.ends] == [("leaf1", "hf-l1p2", None),
                                                                      ("spine2", "hf-s2p1", None)]
    assert [e.intf for e in fabric_link.cut_ends] == ["hf-l1p2", "hf-s2p1"]
    access = fl.resolve_link(desc, "srv3-leaf2")
    assert [(e.node, e.intf, e.server) for e in access.ends] == [("srv3", "hf-h3", "srv3"), ("leaf2", "hf-l2p3", None)]
    assert [e.intf for e in access.cut_ends] == ["hf-l2p3"]


@pytest.mark.parametrize("text", ["leaf1-spine3", "leaf1-leaf2", "srv1-leaf2", "leaf1", "srv1-leaf1-spine1", ""])
def test_an_unknown_link_is_one_line_listing_the_known_ones(desc, text):
    with pytest.raises(fl.FaultInputError) as exc:
        fl.resolve_link(desc, text)
    msg = str(exc.value)
    assert "\n" not in msg and f"unknown link {text!r}" in msg and "leaf1-spine1" in msg and "srv4-leaf2" in msg


def test_servers_and_processes(desc):
    assert fl.resolve_server(desc, "srv2") == "srv2"
    with pytest.raises(fl.FaultInputError, match="unknown server 'srv9': the servers are srv1, srv2, srv3, srv4"):
        fl.resolve_server(desc, "srv9")
    assert fl.check_process(desc, "controller") == ("controller", None)
    assert fl.check_process(desc, "agent", "srv1") == ("agent", "srv1")
    for role, server, msg in (("controller", "srv1", "name no server"), ("agent", None, "which server"),
                              ("forwarder", "srv9", "unknown server"), ("vnc", None, "unknown process")):
        with pytest.raises(fl.FaultInputError, match=msg):
            fl.check_process(desc, role, server)


# --- values ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, us", [("10ms", 10_000), ("500us", 500), ("1.5s", 1_500_000), ("2", 2000),
                                      (2.5, 2500), ("0", 0), (" 3 ms ", 3000), (".5ms", 500)])
def test_times(text, us):
    assert fl.parse_time(text) == us


@pytest.mark.parametrize("text", ["10 minutes", "ms", "-1ms", "61s", "1e3ms", True])
def test_bad_times(text):
    with pytest.raises(fl.FaultInputError):
        fl.parse_time(text)


@pytest.mark.parametrize("text, pct", [("1%", 1.0), ("0.5%", 0.5), ("100%", 100.0), ("0", 0.0), (12, 12.0)])
def test_percentages(text, pct):
    assert fl.parse_percent(text) == pct


@pytest.mark.parametrize("text", ["120%", "-1%", "lots", "1%%", 100.5])
def test_bad_percentages_say_the_range(text):
    with pytest.raises(fl.FaultInputError) as exc:
        fl.parse_percent(text)
    assert f"loss {text!r}" in str(exc.value)


@pytest.mark.parametrize("text, bps", [("100mbit", 10**8), ("1gbit", 10**9), ("500kbit", 5 * 10**5),
                                       ("1.5Mbit", 15 * 10**5), ("64000", 64000), (10**6, 10**6)])
def test_rates(text, bps):
    assert fl.parse_rate(text) == bps


def test_byte_rates_are_refused_rather_than_taken_for_bits():
    with pytest.raises(fl.FaultInputError, match="bytes per second"):
        fl.parse_rate("10mbps")
    for bad in ("1kbit", "200gbit", "fast", "0"):
        with pytest.raises(fl.FaultInputError):
            fl.parse_rate(bad)


def test_an_impairment_needs_something_and_jitter_needs_a_delay():
    with pytest.raises(fl.FaultInputError, match="nothing to impair"):
        fl.impairment()
    with pytest.raises(fl.FaultInputError, match="nothing to impair"):
        fl.impairment(loss="0%")
    with pytest.raises(fl.FaultInputError, match="give --delay"):
        fl.impairment(jitter="2ms", loss="1%")
    with pytest.raises(fl.FaultInputError, match="limit"):
        fl.impairment(loss=1, limit="0")
    spec = fl.impairment(delay="10ms", jitter="2ms", loss="1%", rate="100mbit", limit=5000)
    assert str(spec) == "delay 10ms jitter 2ms loss 1% rate 100mbit limit 5000"
    assert fl.Impairment.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec


# --- tc commands ----------------------------------------------------------------------------------

def run_cbpf(bytecode: str, random: int) -> int:
    """Interpret the classic BPF that loss_bytecode writes (ld rand, jge k, ret k)."""
    count, *insns = bytecode.split(",")
    prog = [tuple(int(x) for x in i.split()) for i in insns]
    assert int(count) == len(prog)
    pc, acc = 0, None
    while True:
        code, jt, jf, k = prog[pc]
        if code == 0x20:
            assert k == (-0x1000 + 56) & 0xFFFFFFFF  # SKF_AD_RANDOM
            acc, pc = random, pc + 1
        elif code == 0x35:
            pc = pc + 1 + (jt if acc >= k else jf)
        elif code == 0x06:
            return k
        else:
            raise AssertionError(f"unexpected instruction {code:#x}")


@pytest.mark.parametrize("pct", [0.001, 1, 25, 50, 99.999])
def test_the_loss_filter_drops_exactly_below_its_threshold(pct):
    code = fl.loss_bytecode(pct)
    threshold = fl.loss_threshold(pct)
    assert abs(threshold / 2**32 - pct / 100) < 1e-9
    assert run_cbpf(code, 0) == fl.TC_ACT_SHOT
    assert run_cbpf(code, threshold - 1) == fl.TC_ACT_SHOT
    assert run_cbpf(code, threshold) == fl.TC_ACT_UNSPEC
    assert run_cbpf(code, 2**32 - 1) == fl.TC_ACT_UNSPEC


def test_total_loss_drops_every_packet():
    assert fl.loss_bytecode(100) == "1,6 0 0 2"
    assert all(run_cbpf(fl.loss_bytecode(100), r) == fl.TC_ACT_SHOT for r in (0, 2**31, 2**32 - 1))


def test_tc_commands_of_loss_and_rate_need_no_netem():
    cmds = fl.tc_apply("hf-l1p3", fl.impairment(loss="1%", rate="100mbit"))
    text = [" ".join(c) for c in cmds]
    assert text[0] == "tc qdisc add dev hf-l1p3 root handle 1: htb default 1"
    assert text[1].startswith("tc class add dev hf-l1p3 parent 1: classid 1:1 htb rate 100000000bit "
                              "ceil 100000000bit burst 12500 cburst 12500")
    assert text[2].startswith("tc filter add dev hf-l1p3 parent 1: protocol all prio 1 bpf da bytecode 4,")
    assert not any("netem" in c for c in cmds) and not fl.needs_netem(fl.impairment(loss=1))
    assert fl.tc_clear("hf-l1p3") == ["tc", "qdisc", "del", "dev", "hf-l1p3", "root"]


def test_tc_commands_of_a_delay_put_netem_under_the_unlimited_class():
    cmds = fl.tc_apply("hf-h1", fl.impairment(delay="10ms", jitter="2ms", limit=3000))
    assert f"rate {fl.UNLIMITED_BPS}bit" in " ".join(cmds[1])
    assert cmds[2] == ["tc", "qdisc", "add", "dev", "hf-h1", "parent", "1:1", "handle", "10:", "netem",
                       "delay", "10000us", "2000us", "limit", "3000"]
    assert len(cmds) == 3  # no loss: no filter


def test_htb_bursts_last_a_millisecond_and_hold_two_frames():
    assert fl.htb_burst(10**9) == 125_000
    assert fl.htb_burst(fl.MIN_RATE_BPS) == 2 * fl.MTU_FRAME


def test_directions(desc):
    link = fl.resolve_link(desc, "srv1-leaf1")
    assert [(s.intf, d.node) for s, d in fl.directions(link, None)] == [("hf-h1", "leaf1"), ("hf-l1p3", "srv1")]
    assert [(s.intf, d.node) for s, d in fl.directions(link, "leaf1")] == [("hf-l1p3", "srv1")]
    with pytest.raises(fl.FaultInputError, match="not an end of link srv1-leaf1"):
        fl.directions(link, "spine1")


# --- state ----------------------------------------------------------------------------------------

def test_state_of_an_earlier_run_counts_for_nothing(desc):
    state = fl.with_link(fl.empty_state(1.0), fl.resolve_link(desc, "leaf1-spine1"), True, 5.0)
    assert fl.current(state, 1.0)["links"]
    assert fl.is_empty(fl.current(state, 2.0))
    assert fl.is_empty(fl.current(None, 2.0))


def test_clear_undoes_processes_then_impairments_then_links(desc):
    s = fl.empty_state(1.0)
    s = fl.with_link(s, fl.resolve_link(desc, "leaf1-spine2"), True, 2.0)
    s = fl.with_link(s, fl.resolve_link(desc, "srv3-leaf2"), True, 2.0)
    s = fl.with_impairment(s, fl.resolve_link(desc, "srv1-leaf1"), None, fl.impairment(loss=5), 3.0)
    s = fl.with_impairment(s, fl.resolve_link(desc, "leaf2-spine1"), "spine1", fl.impairment(rate="1mbit"), 3.0)
    s = fl.with_paused(s, "controller", [{"pid": 10, "create_time": 1.5}], 4.0)
    s = fl.with_paused(s, "vr-srv1-agent", [{"pid": 11, "create_time": 1.5}], 4.0)
    s = json.loads(json.dumps(s))  # as the state file holds it
    plan = fl.undo_plan(s)
    assert [(u.kind, u.target) for u in plan] == [
        ("resume", "controller"), ("resume", "vr-srv1-agent"),
        ("unimpair", "leaf2-spine1:spine1"), ("unimpair", "srv1-leaf1:leaf1"), ("unimpair", "srv1-leaf1:srv1"),
        ("link-up", "leaf1-spine2"), ("link-up", "srv3-leaf2")]
    assert plan[0].detail == {"procs": [{"pid": 10, "create_time": 1.5}]}
    assert plan[4].detail == {"intf": "hf-h1", "server": "srv1", "link": "srv1-leaf1", "sender": "srv1"}
    assert plan[6].detail == {"ends": [["leaf2", "hf-l2p3"]]}


def test_undoing_one_fault_leaves_the_others(desc):
    s = fl.with_impairment(fl.empty_state(1.0), fl.resolve_link(desc, "srv1-leaf1"), None, fl.impairment(loss=5), 1)
    s = fl.with_impairment(s, fl.resolve_link(desc, "srv1-leaf1"), "srv1", None, 2)
    assert list(s["impairments"]) == ["srv1-leaf1:leaf1"]
    s = fl.with_link(fl.with_link(s, fl.resolve_link(desc, "leaf1-spine1"), True, 3),
                     fl.resolve_link(desc, "spine1-leaf1"), False, 4)
    assert s["links"] == {}
    assert fl.summary_lines(s) == ["impair srv1-leaf1 leaf1->srv1: loss 5% (egress of hf-l1p3)"]


# --- the API, with its shell faked ---------------------------------------------------------------

class FakeShell:
    def __init__(self, fail_on: str | None = None, stderr: str = ""):
        self.calls, self.fail_on, self.stderr = [], fail_on, stderr

    def run(self, argv, server=None, check=True):
        self.calls.append((server, " ".join(argv)))
        rc = 2 if self.fail_on and self.fail_on in argv else 0
        if rc and check:
            raise fl.FaultError(self.stderr)
        return subprocess.CompletedProcess(argv, rc, "", self.stderr if rc else "")


@pytest.fixture
def bed(tmp_path, desc):
    """A run dir like a running testbed's: fabric.json, state.json, the controller's PID record (a
    real `sleep`)."""
    rundir = RunDir(tmp_path, "hf")
    rundir.create()
    rundir.fabric_file.write_text(json.dumps(desc))
    rundir.write_state(state="up", started=123.0)
    sleeper = subprocess.Popen(["sleep", "600"])
    rundir.record_pid("controller", sleeper.pid)
    yield rundir, sleeper
    sleeper.kill()
    sleeper.wait()


def status(pid, want, timeout=5.0):
    deadline = time.monotonic() + timeout
    while psutil.Process(pid).status() != want and time.monotonic() < deadline:
        time.sleep(0.01)  # signals are delivered asynchronously
    return psutil.Process(pid).status()


def test_faults_are_recorded_for_a_new_process_and_cleared_in_order(bed):
    rundir, sleeper = bed
    shell = FakeShell()
    f = Faults(rundir, shell=shell)
    down = f.link_down("spine2-leaf1")
    assert down["target"] == "leaf1-spine2" and down["ok"] and down["interfaces"] == ["hf-l1p2", "hf-s2p1"]
    assert shell.calls == [(None, "ip link set dev hf-l1p2 down"), (None, "ip link set dev hf-s2p1 down")]
    f.impair("srv1-leaf1", loss="100%", sender="srv1")
    assert shell.calls[2] == ("srv1", "tc qdisc del dev hf-h1 root")
    assert shell.calls[-1][1].endswith("bpf da bytecode 1,6 0 0 2")
    f.pause("controller")
    assert status(sleeper.pid, psutil.STATUS_STOPPED) == psutil.STATUS_STOPPED

    other = Faults(rundir, shell=FakeShell())  # what another process sees
    assert other.summary() == ["link leaf1-spine2 down (hf-l1p2, hf-s2p1 down)",
                               "impair srv1-leaf1 srv1->leaf1: loss 100% (egress of hf-h1 in srv1)",
                               f"paused controller (pid {sleeper.pid})"]
    rec = other.clear()
    assert rec["undone"] == ["resume controller", "unimpair srv1-leaf1:srv1", "link-up leaf1-spine2"]
    assert other.shell.calls == [("srv1", "tc qdisc del dev hf-h1 root"), (None, "ip link set dev hf-l1p2 up"),
                                 (None, "ip link set dev hf-s2p1 up")]
    assert status(sleeper.pid, psutil.STATUS_SLEEPING) == psutil.STATUS_SLEEPING
    assert Faults(rundir).summary() == []
    assert Faults(rundir).clear()["undone"] == []

    log = [json.loads(line) for line in (rundir.path / "faults.jsonl").read_text().splitlines()]
    assert [r["action"] for r in log] == ["link-down", "impair", "pause", "clear", "clear"]
    assert all(r["ok"] and r["wall"] > 1e9 and 0 < r["monotonic"] <= time.monotonic() and r["elapsed"] >= 0
               and r["run"] == 123.0 for r in log)
    assert log == Faults(rundir).events()


def test_a_failed_impairment_is_logged_undone_and_not_recorded(bed):
    rundir, _ = bed
    Faults(rundir, shell=FakeShell()).impair("leaf1-spine1", loss="5%")
    shell = FakeShell(fail_on="netem", stderr="Error: Specified qdisc kind is unknown.")
    f = Faults(rundir, shell=shell)
    with pytest.raises(fl.FaultError, match="no netem qdisc"):
        f.impair("leaf1-spine1", delay="10ms")
    # The first end failed: its root qdisc is removed again; the other end, never reached, keeps
    # the loss it had.
    assert [c for _, c in shell.calls if c.startswith("tc qdisc del")] == ["tc qdisc del dev hf-l1p1 root"] * 3
    assert not any("hf-s1p1" in c for _, c in shell.calls)
    assert f.summary() == ["impair leaf1-spine1 spine1->leaf1: loss 5% (egress of hf-s1p1)"]
    ok, failed = f.events()
    assert ok["ok"] and failed["action"] == "impair" and not failed["ok"] and "no netem" in failed["error"]


def test_a_process_without_a_live_record_is_a_one_line_error(bed):
    rundir, sleeper = bed
    f = Faults(rundir, shell=FakeShell())
    with pytest.raises(fl.FaultError, match="vr-srv1-agent is not running in testbed 'hf' .no PID record"):
        f.pause("agent", "srv1")
    sleeper.kill()
    sleeper.wait()
    with pytest.raises(fl.FaultError, match="controller is not running"):
        f.kill("controller")
    assert f.events() == []


def test_a_paused_process_that_died_is_no_longer_listed(bed):
    rundir, sleeper = bed
    f = Faults(rundir, shell=FakeShell())
    f.pause("controller")
    sleeper.kill()
    sleeper.wait()
    assert f.active()["paused"] == {}


# --- the command line -----------------------------------------------------------------------------

@pytest.fixture
def fake_up(tmp_path, desc, monkeypatch):
    """A run dir that looks like a running testbed (owned by this process), no root needed."""
    monkeypatch.setattr(cli, "require_testbed_host", lambda: None)
    rundir = RunDir(tmp_path, "hf")
    rundir.create()
    rundir.fabric_file.write_text(json.dumps(desc))
    rundir.write_state(state="up", owner=process_record(os.getpid()), started=1.0, mode="inprocess")
    return ["--prefix", "hf", "--run-root", str(tmp_path)]


def run_cli(capsys, *argv):
    rc = cli.main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize("argv, code, message", [
    (["link", "leaf1-spine9", "down"], 2, "error: unknown link 'leaf1-spine9': the links are leaf1-spine1, "),
    (["impair", "srv1-leaf1", "--loss", "120%"], 2, "error: loss '120%': not between 0% and 100%"),
    (["impair", "srv1-leaf1", "--delay", "ten"], 2, "error: delay 'ten': give a time such as 10ms"),
    (["impair", "srv1-leaf1"], 2, "error: give --delay, --jitter, --loss, --rate"),
    (["impair", "srv1-leaf1", "clear", "--loss", "1%"], 2, "error: 'clear' takes no values (--loss)"),
    (["impair", "srv1-leaf1", "--loss", "1%", "--from", "spine1"], 2, "error: 'spine1' is not an end of link"),
    (["agent", "srv9", "kill"], 2, "error: unknown server 'srv9': the servers are srv1, srv2, srv3, srv4"),
    (["controller", "pause"], 1, "error: controller is not running in testbed 'hf'"),
])
def test_command_line_errors_are_one_line(fake_up, capsys, argv, code, message):
    rc, out, err = run_cli(capsys, "fault", *argv, *fake_up)
    assert rc == code and err.startswith(message) and err.count("\n") == 1, err
    assert out == ""


def test_list_and_clear_on_a_quiet_testbed(fake_up, capsys):
    rc, out, _ = run_cli(capsys, "fault", "list", *fake_up)
    assert rc == 0 and out.startswith("no faults active in testbed 'hf'")
    rc, out, _ = run_cli(capsys, "fault", "list", "--json", *fake_up)
    assert rc == 0 and json.loads(out) == {"run": 1.0, "links": {}, "impairments": {}, "paused": {}}
    rc, out, _ = run_cli(capsys, "fault", "clear", *fake_up)
    assert rc == 0 and out == "nothing to clear\n"


def test_no_testbed_running_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(cli, "require_testbed_host", lambda: None)
    rc, out, err = run_cli(capsys, "fault", "list", "--prefix", "zz", "--run-root", str(tmp_path))
    assert rc == 1 and err == (f"error: no testbed with prefix 'zz' is running (run dirs under {tmp_path}); "
                               f"start one with 'sudo testbed up'\n")


@pytest.mark.parametrize("sub, words", [("link", ["down", "up", "either order"]),
                                        ("impair", ["--delay", "--jitter", "--loss", "--rate", "--limit", "--from",
                                                    "clear"]),
                                        ("controller", ["pause", "resume", "kill", "restart"]),
                                        ("agent", ["server", "pause"]), ("forwarder", ["server", "restart"]),
                                        ("list", ["--json"]), ("clear", ["--prefix"])])
def test_help_shows_what_each_command_takes(capsys, sub, words):
    with pytest.raises(SystemExit) as exc:
        cli.main(["fault", sub, "--help"])
    out = capsys.readouterr().out
    assert exc.value.code == 0 and all(w in out for w in words), out
