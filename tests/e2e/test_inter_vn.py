"""Routing between networks by policy, end to end: topologies/inter-vn.yaml on a real testbed.

green reaches red on TCP port 80 only (green2 on srv2 -> red3 on srv3, green1 -> red1 both on srv1);
each vrouter takes one slow-path call per connection (the reply hits the proactive reverse entry,
which lives in red's routing instance); other ports are dropped as policy_deny; blue, which overlaps
red, stays isolated; `testbed net policy` disconnects and reconnects at run time, and refuses to
connect blue to red in one line.
"""
import subprocess
import sys
import time

import pytest
import yaml

from overlay_helpers import needs_root, ping, tcp_transfers
from testbed import REPO
from testbed.runner import Testbed
from testbed.topology import load
from vrouter.io import introspect

pytestmark = [pytest.mark.e2e, needs_root]
TOPOLOGY = REPO / "topologies" / "inter-vn.yaml"
RED_POLICY = yaml.safe_load(TOPOLOGY.read_text())["policies"][1]


@pytest.fixture(scope="module")
def tb(run_root, new_prefix):
    bed = Testbed(load(str(TOPOLOGY)), prefix=new_prefix("i"), run_root=str(run_root)).start()
    yield bed
    bed.stop()


def decisions(tb, server):
    return introspect.query(tb.path, server, "stats")["agent"].get("decisions", 0)


def net(tb, *args):
    return subprocess.run([sys.executable, "-m", "testbed.cli", "net", *args, "--prefix", tb.prefix,
                           "--run-root", str(tb.rundir.root)], capture_output=True, text=True, cwd=REPO)


def until(check, timeout=15.0):
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "the change did not reach the vrouters"
        time.sleep(0.2)


def test_green_reaches_red_on_port_80_and_each_reply_hits_its_reverse_entry(tb):
    for s in ("srv1", "srv2", "srv3"):
        introspect.query(tb.path, s, "reset")
    assert tcp_transfers(tb, "green2", "red3", "192.168.1.13", 80, connections=2) == ["100000"] * 2
    assert (decisions(tb, "srv2"), decisions(tb, "srv3")) == (2, 2)      # one per connection each
    assert tcp_transfers(tb, "green1", "red1", "192.168.1.11", 80) == ["100000"]
    assert decisions(tb, "srv1") == 1
    flows = introspect.query(tb.path, "srv2", "flows")
    pairs = {(f["vrf"], f["role"]) for f in flows if f["dport"] == 80 or f["sport"] == 80}
    assert pairs == {(300, "forward"), (100, "reverse")}


def test_other_ports_fail_with_the_policy_drop_reason(tb):
    before = introspect.query(tb.path, "srv2", "dropstats")["policy_deny"]
    assert tcp_transfers(tb, "green2", "red3", "192.168.1.13", 22) != ["100000"]
    assert introspect.query(tb.path, "srv2", "dropstats")["policy_deny"] > before
    assert ping(tb, "green2", "192.168.1.13", count=1) == 0


def test_blue_stays_isolated(tb):
    assert ping(tb, "blue1", "192.168.3.11", count=1) == 0
    assert ping(tb, "blue1", "192.168.1.13") == 3          # blue's own blue3, not red3


def test_net_policy_disconnects_reconnects_and_refuses_an_overlap(tb, tmp_path):
    r = net(tb, "policy", "red", "--clear")
    assert r.returncode == 0, r.stderr
    until(lambda: all(not r["prefix"].startswith("192.168.3.")
                      for r in introspect.query(tb.path, "srv3", "routes", vrf="red")["routes"]))
    assert tcp_transfers(tb, "green2", "red3", "192.168.1.13", 80) != ["100000"]
    rules = tmp_path / "red.yaml"
    rules.write_text(yaml.safe_dump({k: v for k, v in RED_POLICY.items() if k != "network"}))
    assert net(tb, "policy", "red", "--file", str(rules)).returncode == 0
    until(lambda: any(r.get("network") == "green"
                      for r in introspect.query(tb.path, "srv3", "routes", vrf="red")["routes"]))
    assert tcp_transfers(tb, "green2", "red3", "192.168.1.13", 80) == ["100000"]
    blue = tmp_path / "blue.yaml"
    blue.write_text(yaml.safe_dump({"rules": [{"action": "allow", "network": "red"}]}))
    red = tmp_path / "red-blue.yaml"
    red.write_text(yaml.safe_dump({"rules": [*RED_POLICY["rules"][:1], {"action": "allow", "network": "blue"}]}))
    assert net(tb, "policy", "blue", "--file", str(blue)).returncode == 0     # one-sided: connects nothing
    r = net(tb, "policy", "red", "--file", str(red))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "cannot connect networks 'blue' and 'red': their subnets overlap" in r.stderr
