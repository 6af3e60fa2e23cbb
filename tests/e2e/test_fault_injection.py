"""`testbed fault ...` on a real testbed (`testbed up`, default topology with its overlay), every
command a fresh process as a user or an experiment runs it: cut links really cut (port status,
groups, pings), impairments show on both ends' qdiscs and drop what they should, paused processes
are in state T and come back, a killed agent gets a new PID from the supervisor, `list` and `clear`
work from a new process, one log line per action, and `testbed down` is not held up by faults left
active."""
import json
import re
import subprocess
import sys
import time
import uuid

import psutil
import pytest

from testbed import REPO, cleanup
from testbed.faults import Faults
from testbed.measure import ping_loss_from_output
from testbed.rundir import RunDir, live_process

pytestmark = pytest.mark.e2e

SERVERS = {"srv1": "10.0.1.1", "srv2": "10.0.1.2", "srv3": "10.0.2.1", "srv4": "10.0.2.2"}


def run_cli(*args, timeout=180):
    return subprocess.run([sys.executable, "-m", "testbed.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


class Bed:
    def __init__(self, run_root):
        self.prefix = "hf" + uuid.uuid4().hex[:4]
        self.opts = ["--prefix", self.prefix, "--run-root", str(run_root)]
        self.rundir = RunDir(run_root, self.prefix)

    def fault(self, *args):
        r = run_cli("fault", *args, *self.opts)
        assert "Traceback" not in r.stderr, r.stderr
        return r

    def ok(self, *args) -> str:
        r = self.fault(*args)
        assert r.returncode == 0, r.stdout + r.stderr
        return r.stdout

    def intf(self, switch, port) -> str:
        return f"{self.prefix}-{switch[0]}{switch[-1]}p{port}"

    def pid(self, name):
        rec = json.loads((self.rundir.pids / f"{name}.json").read_text())
        return rec["pid"] if live_process(rec) else None

    def ns(self, host, *argv):
        return subprocess.run(["nsenter", f"--net={self.rundir.path}/netns/{host}", *argv],
                              capture_output=True, text=True)

    def ping(self, host, ip, count=3, interval=0.2):
        """(sent, received) of a ping from a server or VM of the testbed."""
        out = self.ns(host, "ping", "-n", "-c", str(count), "-i", str(interval), "-W", "1", ip).stdout
        return ping_loss_from_output(out)

    def reaches(self, host, ip, timeout=15.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ping(host, ip, count=1)[1] == 1:
                return True
        return False

    def qdisc(self, intf, host=None) -> str:
        argv = ["tc", "-s", "qdisc", "show", "dev", intf]
        return (self.ns(host, *argv) if host else subprocess.run(argv, capture_output=True, text=True)).stdout


@pytest.fixture(scope="module")
def bed(run_root):
    b = Bed(run_root)
    r = run_cli("up", *b.opts)
    assert r.returncode == 0, r.stderr
    yield b
    if cleanup.is_running(b.rundir):
        run_cli("down", *b.opts)
    run_cli("clean", "--prefix", b.prefix, "--run-root", str(run_root))


@pytest.fixture(autouse=True)
def _faults_cleared(request):
    """Every test starts from a fabric without faults: one that failed half way (a link left down)
    must not fail the tests after it on the module's shared testbed."""
    yield
    if "bed" in request.fixturenames:
        request.getfixturevalue("bed").fault("clear")


def ports(bridge) -> dict:
    """{interface: (config, state)} from ovs-ofctl dump-ports-desc: what OVS reports."""
    text = subprocess.run(["ovs-ofctl", "-O", "OpenFlow13", "dump-ports-desc", bridge],
                          capture_output=True, text=True, check=True).stdout
    out, intf, config = {}, None, None
    for line in text.splitlines():
        m = re.match(r"\s*\d+\((\S+)\):", line)
        if m:
            intf = m.group(1)
        elif "config:" in line:
            config = line.split(":", 1)[1].strip()
        elif "state:" in line and intf:
            out[intf] = (config, line.split(":", 1)[1].strip())
    return out


def buckets(bridge) -> list:
    text = subprocess.run(["ovs-ofctl", "-O", "OpenFlow15", "dump-groups", bridge],
                          capture_output=True, text=True, check=True).stdout
    return [line.count("bucket=") for line in text.splitlines() if "group_id=" in line]


def wait_for(fn, want, timeout=15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if fn() == want:
            return want
        time.sleep(0.05)
    return fn()


def proc_state(pid, want: tuple[str, ...] = ("T",), within: float = 2.0) -> str:
    """The process's state once it is one of `want`, or the last one seen after `within` s: SIGSTOP
    and SIGCONT are delivered asynchronously (a forwarder running on the other CPU read 'R' at once)."""
    deadline = time.monotonic() + within
    while True:
        with open(f"/proc/{pid}/status") as f:
            state = next(line.split()[1] for line in f if line.startswith("State:"))
        if state in want or time.monotonic() > deadline:
            return state
        time.sleep(0.02)


def test_bad_input_is_one_line_naming_what_is_known(bed, run_root):
    r = bed.fault("link", "leaf1-spine3", "down")
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert "unknown link 'leaf1-spine3': the links are leaf1-spine1, leaf1-spine2" in r.stderr
    r = bed.fault("impair", "srv1-leaf1", "--loss", "120%")
    assert r.returncode == 2 and "loss '120%': not between 0% and 100%" in r.stderr
    r = bed.fault("agent", "srv9", "kill")
    assert r.returncode == 2 and "unknown server 'srv9': the servers are srv1, srv2, srv3, srv4" in r.stderr
    r = bed.fault("impair", "srv1-leaf1")
    assert r.returncode == 2 and "give --delay" in r.stderr
    r = run_cli("fault", "list", "--prefix", "hfnone", "--run-root", str(run_root))
    assert r.returncode == 1 and "no testbed with prefix 'hfnone' is running" in r.stderr
    assert "Traceback" not in r.stderr
    assert bed.ok("list").startswith("no faults active")


def test_cutting_a_leafs_uplinks_cuts_its_servers_off_and_up_restores(bed):
    leaf1, spine1 = f"{bed.prefix}-l1", f"{bed.prefix}-s1"
    assert bed.reaches("srv1", SERVERS["srv3"])
    assert bed.ok("link", "leaf1-spine1", "down").startswith("link leaf1-spine1 down")
    # Both ends report the cut to the controller, which drops spine1 from leaf1's group.
    assert ports(leaf1)[bed.intf("leaf1", 1)] == ("PORT_DOWN", "LINK_DOWN")
    assert ports(spine1)[bed.intf("spine1", 1)] == ("PORT_DOWN", "LINK_DOWN")
    assert wait_for(lambda: buckets(leaf1), [1]) == [1]
    assert bed.reaches("srv1", SERVERS["srv3"])  # spine2 still carries it

    bed.ok("link", "spine2-leaf1", "down")  # either order names the link
    assert wait_for(lambda: buckets(leaf1), [0]) == [0]
    assert bed.ping("srv1", SERVERS["srv3"]) == (3, 0)
    assert bed.ping("srv3", SERVERS["srv1"]) == (3, 0)
    assert bed.reaches("srv1", SERVERS["srv2"])  # under the same leaf: not cut (a loaded machine may lose one)
    listed = bed.ok("list")
    assert "link leaf1-spine1 down" in listed and "link leaf1-spine2 down" in listed

    bed.ok("link", "leaf1-spine2", "up")
    assert bed.reaches("srv1", SERVERS["srv3"])
    bed.ok("link", "leaf1-spine1", "up")
    assert ports(leaf1)[bed.intf("leaf1", 1)] == ("0", "LIVE")
    assert wait_for(lambda: buckets(leaf1), [2]) == [2]
    assert bed.ok("list").startswith("no faults active")


def test_an_access_link_cut_leaves_the_servers_nic_up_without_carrier(bed):
    bed.ok("link", "srv3-leaf2", "down")
    try:
        assert ports(f"{bed.prefix}-l2")[bed.intf("leaf2", 3)] == ("PORT_DOWN", "LINK_DOWN")
        link = bed.ns("srv3", "ip", "-o", "link", "show", f"{bed.prefix}-h3").stdout
        assert "NO-CARRIER" in link and ",UP" in link
        assert "linkdown" in bed.ns("srv3", "ip", "route").stdout  # the route stays, as with a cut cable
        assert bed.ping("srv1", SERVERS["srv3"]) == (3, 0)
        assert bed.ping("srv3", SERVERS["srv4"]) == (3, 0)
    finally:
        bed.ok("link", "leaf2-srv3", "up")
    assert bed.reaches("srv1", SERVERS["srv3"]) and bed.reaches("srv3", SERVERS["srv4"])


def test_total_loss_shows_on_both_ends_and_clear_removes_it(bed):
    leaf_end, srv_end = bed.intf("leaf1", 3), f"{bed.prefix}-h1"
    out = bed.ok("impair", "srv1-leaf1", "--loss", "100%", "--rate", "100mbit")
    assert "srv1->leaf1, leaf1->srv1: loss 100% rate 100mbit" in out
    assert "qdisc htb 1: root" in bed.qdisc(leaf_end) and "qdisc htb 1: root" in bed.qdisc(srv_end, "srv1")
    assert bed.ping("srv1", SERVERS["srv3"], count=10, interval=0.05) == (10, 0)
    assert bed.ping("srv3", SERVERS["srv1"], count=10, interval=0.05) == (10, 0)
    dropped = [int(re.search(r"dropped (\d+)", q).group(1)) for q in (bed.qdisc(leaf_end), bed.qdisc(srv_end, "srv1"))]
    assert all(d > 0 for d in dropped), dropped

    assert "removed (srv1->leaf1, leaf1->srv1)" in bed.ok("impair", "leaf1-srv1", "clear")
    assert "noqueue" in bed.qdisc(leaf_end) and "noqueue" in bed.qdisc(srv_end, "srv1")
    assert bed.reaches("srv1", SERVERS["srv3"])


def test_one_direction_loses_part_of_its_packets(bed):
    leaf_end, srv_end = bed.intf("leaf1", 3), f"{bed.prefix}-h1"
    assert bed.reaches("srv1", SERVERS["srv3"])
    bed.ok("impair", "srv1-leaf1", "--loss", "50%", "--from", "leaf1")  # the replies to srv1
    try:
        assert "htb" in bed.qdisc(leaf_end) and "noqueue" in bed.qdisc(srv_end, "srv1")
        sent, received = bed.ping("srv1", SERVERS["srv3"], count=100, interval=0.01)
        assert sent == 100 and 0 < received < 100  # all or nothing has odds of 2**-99
        dropped = int(re.search(r"dropped (\d+)", bed.qdisc(leaf_end)).group(1))
        assert dropped >= sent - received
    finally:
        bed.ok("impair", "srv1-leaf1", "clear", "--from", "leaf1")
    assert "noqueue" in bed.qdisc(leaf_end)


def test_a_delay_needs_netem_and_fails_cleanly_without_it(bed):
    has_netem = subprocess.run(["unshare", "--net", "tc", "qdisc", "add", "dev", "lo", "root", "netem",
                                "delay", "1ms"], capture_output=True).returncode == 0
    r = bed.fault("impair", "leaf1-spine1", "--delay", "10ms", "--jitter", "1ms")
    ends = (bed.intf("leaf1", 1), bed.intf("spine1", 1))
    if has_netem:
        assert r.returncode == 0, r.stderr
        assert all("netem" in bed.qdisc(i) for i in ends)
        bed.ok("impair", "leaf1-spine1", "clear")
    else:
        assert r.returncode == 1 and "no netem qdisc (sch_netem)" in r.stderr
    assert all("noqueue" in bed.qdisc(i) for i in ends)
    assert "impair" not in bed.ok("list")


def test_a_paused_controller_is_stopped_until_resumed_or_cleared(bed):
    pid = bed.pid("controller")
    # The leaves answer ARP themselves, so srv2 reaches srv4 with or without a neighbour entry
    # while the controller is paused (tests/e2e/test_controller_outage.py covers the outage).
    assert bed.reaches("srv2", SERVERS["srv4"])
    assert "controller paused" in bed.ok("controller", "pause")
    assert proc_state(pid) == "T"
    bed.ns("srv2", "ip", "neigh", "flush", "all")
    assert bed.ping("srv2", SERVERS["srv4"]) == (3, 3)  # the switches keep forwarding and answer ARP
    assert f"paused controller (pid {pid})" in bed.ok("list")
    bed.ok("controller", "resume")
    assert proc_state(pid, ("S", "R")) in ("S", "R") and bed.pid("controller") == pid
    bed.ok("controller", "pause")
    assert proc_state(pid) == "T"
    assert bed.ok("clear") == "cleared: resume controller\n"
    assert proc_state(pid, ("S", "R")) in ("S", "R")


def test_a_killed_agent_is_restarted_by_the_supervisor_with_a_new_pid(bed):
    name = "vr-srv1-agent"
    old = bed.pid(name)
    out = bed.ok("agent", "srv1", "kill")
    new = bed.pid(name)
    assert f"killed (pid {old}); the supervisor started it again: pid {new}" in out
    assert new != old
    assert not psutil.pid_exists(old) or psutil.Process(old).status() == psutil.STATUS_ZOMBIE
    out = bed.ok("agent", "srv1", "restart")
    again = bed.pid(name)
    assert f"restarted: pid {new} -> {again} (via daemon)" in out
    time.sleep(1.0)
    # A restart from one of the daemon's short-lived request threads would have ended with it
    # (the vrouter processes' PR_SET_PDEATHSIG): the same process still runs.
    assert bed.pid(name) == again
    assert bed.reaches("red1", "192.168.1.13")  # the overlay works through the new agent


def test_list_and_clear_from_new_processes_and_one_log_line_per_action(bed):
    f = Faults.open(bed.prefix, str(bed.rundir.root))  # this process: neither the daemon nor the CLI
    before = len(f.events())
    fwd = bed.pid("vr-srv2-fwd")
    f.link_down("leaf2-spine2")
    f.impair("srv4-leaf2", loss=100, sender="srv4")
    f.pause("forwarder", "srv2")
    assert proc_state(fwd) == "T"

    listed = json.loads(bed.ok("list", "--json"))
    assert list(listed["links"]) == ["leaf2-spine2"]
    assert list(listed["impairments"]) == ["srv4-leaf2:srv4"]
    assert [p["pid"] for p in listed["paused"]["vr-srv2-fwd"]["procs"]] == [fwd]
    out = bed.ok("clear")
    assert out == "cleared: resume vr-srv2-fwd, unimpair srv4-leaf2:srv4, link-up leaf2-spine2\n"
    assert proc_state(fwd, ("S", "R")) in ("S", "R")
    for intf in (bed.intf("leaf2", 2), bed.intf("spine2", 2)):
        assert ",UP," in subprocess.run(["ip", "-o", "link", "show", intf], capture_output=True, text=True).stdout
    assert "noqueue" in bed.qdisc(f"{bed.prefix}-h4", "srv4")
    assert bed.ok("list").startswith("no faults active")

    log = [json.loads(line) for line in bed.rundir.path.joinpath("faults.jsonl").read_text().splitlines()]
    new = log[before:]
    assert [(r["action"], r["target"]) for r in new] == [
        ("link-down", "leaf2-spine2"), ("impair", "srv4-leaf2"), ("pause", "vr-srv2-fwd"), ("clear", "all")]
    assert all(r["ok"] for r in new)
    monos = [r["monotonic"] for r in new]
    assert monos == sorted(monos) and monos[-1] <= time.monotonic()
    assert [r["wall"] for r in new] == sorted(r["wall"] for r in new)
    assert len(log) == len(f.events())


def test_down_is_not_held_up_by_faults_left_active(bed):
    ctl = bed.pid("controller")
    bed.ok("controller", "pause")
    bed.ok("link", "leaf1-spine1", "down")
    bed.ok("impair", "srv2-leaf1", "--loss", "100%")
    stops = bed.rundir.log("controller").read_text().count("signal 15: stopping")
    r = run_cli("down", *bed.opts)
    assert r.returncode == 0, r.stderr
    # The controller ended by its own SIGTERM handler (it was resumed first), not by SIGKILL.
    assert bed.rundir.log("controller").read_text().count("signal 15: stopping") == stops + 1
    last = json.loads(bed.rundir.path.joinpath("faults.jsonl").read_text().splitlines()[-1])
    assert last["action"] == "teardown" and last["resumed"] == [ctl] and len(last["active"]) == 4
    assert cleanup.bridges(bed.prefix) == [] and cleanup.links(bed.prefix) == []
