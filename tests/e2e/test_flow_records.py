"""Flow records on a real testbed: a TCP exchange torn down, a UDP exchange that ages out and a denied
flow each leave one record per vrouter, with both directions' packets and bytes equal to what the
VMs' own IP counters say was sent and received; `testbed flows` filters and summarises them, and the
pairs still in the tables at shutdown are written too (vrouter/core/flowrecords.py). The topology has
records off: `testbed net records on` switches them on through the VNC first, and `off` later stops
them (a flow that ends while off leaves no record)."""
import json
import os
import re
import subprocess
import sys
import time
import uuid

import pytest
import yaml

from overlay_helpers import TOPOLOGY, needs_root, wait_ping
from testbed.runner import Testbed
from testbed.topology import from_dict
from vrouter.io import introspect

pytestmark = [pytest.mark.e2e, needs_root]

RED2 = "192.168.1.12"
TCP_PORT, UDP_PORT, DENIED_PORT, LATE_PORT, ON_PORT, OFF_PORT = 5001, 7000, 9999, 7001, 7002, 7003
MESSAGES, UDP_COUNT, UDP_SIZE, DENIED_COUNT = 10, 5, 50, 3
TCP_SERVER = ("import socket\ns=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n"
              f"s.bind(('0.0.0.0',{TCP_PORT}));s.listen(4)\n"
              "while True:\n c,_=s.accept()\n while True:\n  d=c.recv(4096)\n  if not d: break\n"
              "  c.sendall(b'r'*200)\n c.close()\n")
TCP_CLIENT = (f"import socket\nc=socket.create_connection(('{RED2}',{TCP_PORT}),timeout=10)\n"
              "c.setsockopt(socket.IPPROTO_TCP,socket.TCP_NODELAY,1)\n"
              f"for _ in range({MESSAGES}):\n c.sendall(b'q'*100);n=0\n while n<200: n+=len(c.recv(4096))\n"
              "c.shutdown(socket.SHUT_WR);c.recv(1);c.close();print('ok')\n")
UDP_ECHO = ("import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
            f"s.bind(('0.0.0.0',{UDP_PORT}))\n"
            "while True:\n d,a=s.recvfrom(4096);s.sendto(d,a)\n")
UDP_CLIENT = ("import socket,sys\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);s.settimeout(5)\n"
              "port,count,echo=int(sys.argv[1]),int(sys.argv[2]),sys.argv[3]=='1'\n"
              f"s.bind(('0.0.0.0',port+10000))\n"
              "for _ in range(count):\n"
              f" s.sendto(b'u'*{UDP_SIZE},('{RED2}',port))\n"
              " if echo: s.recvfrom(4096)\nprint('ok')\n")


@pytest.fixture(scope="module")
def tb(run_root):
    doc = yaml.safe_load(TOPOLOGY.read_text())
    doc["flow"] = {"idle_timeout": 3.0, "unreplied_timeout": 3.0, "closed_linger": 0.5, "records": False}
    doc["policies"] = [{"network": "red", "rules": [{"action": "deny", "protocol": "udp", "dst_port": DENIED_PORT}]}]
    prefix = "fs" + uuid.uuid4().hex[:4]        # this helper's prefix, unique per run
    bed = Testbed(from_dict(doc, source=str(TOPOLOGY)), prefix=prefix, run_root=str(run_root)).start()
    servers = [bed.host("red2").popen([sys.executable, "-c", code]) for code in (TCP_SERVER, UDP_ECHO)]
    wait_ping(bed, "red1", RED2)
    yield bed
    for p in servers:
        p.kill()
        p.wait()
    bed.stop()


def ip_counters(tb, vm):
    """The VM's own IPv4 counters: packets and bytes (IP total lengths) sent and received."""
    snmp = tb.host(vm).cmd("cat /proc/net/snmp /proc/net/netstat")
    def row(prefix):
        heads, values = [line.split()[1:] for line in snmp.splitlines() if line.startswith(prefix + ":")][:2]
        return dict(zip(heads, map(int, values), strict=True))
    ip, ext = row("Ip"), row("IpExt")
    return {"out_packets": ip["OutRequests"], "in_packets": ip["InReceives"],
            "out_bytes": ext["OutOctets"], "in_bytes": ext["InOctets"]}


def run_in(tb, vm, code, *args):
    """A Python snippet run in ``vm``: its output."""
    proc = tb.host(vm).popen([sys.executable, "-c", code, *map(str, args)], text=True)
    out, _ = proc.communicate(timeout=30)
    return out


def flows_cli(tb, *args):
    proc = subprocess.run([sys.executable, "-m", "testbed.cli", "flows", "--prefix", tb.prefix,
                           "--run-root", str(tb.rundir.root), *args], capture_output=True, text=True,
                          env=os.environ, timeout=30)
    return proc


def wait_records(tb, want, *args, timeout=10.0):
    """`testbed flows --json ARGS` once it lists ``want`` records (ageing runs once a second)."""
    deadline = time.monotonic() + timeout
    while True:
        proc = flows_cli(tb, "--json", *args)
        assert proc.returncode == 0, proc.stderr
        records = json.loads(proc.stdout)
        if len(records) >= want or time.monotonic() > deadline:
            return records
        time.sleep(0.5)


def cli(tb, *args):
    return subprocess.run([sys.executable, "-m", "testbed.cli", *args, "--prefix", tb.prefix, "--run-root",
                           str(tb.rundir.root)], capture_output=True, text=True, env=os.environ, timeout=30)


def switch_records(tb, state):
    """`testbed net records STATE`, then until every vrouter has taken its new config."""
    proc = cli(tb, "net", "records", state)
    assert proc.returncode == 0 and proc.stdout.startswith(f"flow records {state} (generation"), proc
    deadline = time.monotonic() + 5.0
    while {introspect.query(tb.path, s, "records")["enabled"] for s in ("srv1", "srv3")} != {state == "on"}:
        assert time.monotonic() < deadline, f"the vrouters did not switch records {state}"
        time.sleep(0.1)


def gone(tb, dport, timeout=10.0):
    """Until no flow entry to ``dport`` is left at srv1 (the pair aged)."""
    deadline = time.monotonic() + timeout
    while any(f["dport"] == dport for f in introspect.query(tb.path, "srv1", "flows")):
        assert time.monotonic() < deadline, f"the flow to port {dport} did not age"
        time.sleep(0.25)


def test_records_switched_on_at_run_time_through_the_vnc(tb):
    assert cli(tb, "net", "records").stdout.strip() == "flow records off"
    assert not introspect.query(tb.path, "srv1", "records")["enabled"]
    bad = cli(tb, "net", "records", "maybe")
    assert bad.returncode == 2 and "invalid choice: 'maybe'" in bad.stderr, bad
    switch_records(tb, "on")
    assert cli(tb, "net", "records").stdout.strip() == "flow records on"
    assert run_in(tb, "red1", UDP_CLIENT, ON_PORT, 2, 0).strip() == "ok"      # no server there: unreplied
    recs = wait_records(tb, 2, "--port", str(ON_PORT), timeout=15.0)
    assert sorted((r["server"], r["packets"], r["end_reason"]) for r in recs) == [
        ("srv1", 2, "unreplied_timeout"), ("srv3", 2, "unreplied_timeout")], recs


def test_tcp_teardown_and_udp_idle_records_count_both_directions(tb):
    before = ip_counters(tb, "red1")
    assert run_in(tb, "red1", TCP_CLIENT).strip() == "ok"
    after = ip_counters(tb, "red1")
    tcp = wait_records(tb, 2, "--proto", "tcp", "--port", str(TCP_PORT))
    assert {r["server"] for r in tcp} == {"srv1", "srv3"}, tcp
    for r in tcp:
        assert (r["network"], r["src"], r["dst"], r["dport"]) == ("red", "192.168.1.11", RED2, TCP_PORT)
        assert (r["decision"], r["end_reason"], r["tcp_state"]) == ("allow", "tcp_closed", "closed")
        assert (r["packets"], r["bytes"]) == (after["out_packets"] - before["out_packets"],
                                              after["out_bytes"] - before["out_bytes"]), (r, before, after)
        assert (r["rpackets"], r["rbytes"]) == (after["in_packets"] - before["in_packets"],
                                                after["in_bytes"] - before["in_bytes"]), (r, before, after)
        assert r["bytes"] >= MESSAGES * (100 + 40) and r["rbytes"] >= MESSAGES * (200 + 40)
        assert r["end"] >= r["start"] > time.time() - 60
    srv1 = next(r for r in tcp if r["server"] == "srv1")
    assert (srv1["vm"], srv1["vif"]) == ("red1", srv1["vif"])

    out = run_in(tb, "red1", UDP_CLIENT, UDP_PORT, UDP_COUNT, 1)
    assert out.strip() == "ok", out
    udp = wait_records(tb, 2, "--proto", "udp", "--port", str(UDP_PORT), timeout=15.0)
    assert len(udp) == 2, udp
    for r in udp:
        assert (r["packets"], r["rpackets"]) == (UDP_COUNT, UDP_COUNT), r
        assert (r["bytes"], r["rbytes"]) == (UDP_COUNT * (UDP_SIZE + 28),) * 2, r
        assert (r["decision"], r["end_reason"]) == ("allow", "idle_timeout"), r


def test_a_denied_flow_is_recorded_with_its_rule(tb):
    out = run_in(tb, "red1", UDP_CLIENT, DENIED_PORT, DENIED_COUNT, 0)
    assert out.strip() == "ok", out
    (r,) = wait_records(tb, 1, "--decision", "deny", timeout=15.0)
    assert (r["server"], r["dport"], r["rule"], r["reason"]) == ("srv1", DENIED_PORT, 0, "policy_deny")
    assert (r["packets"], r["bytes"], r["rpackets"]) == (DENIED_COUNT, DENIED_COUNT * (UDP_SIZE + 28), 0)
    assert r["end_reason"] == "unreplied_timeout"
    listing = flows_cli(tb, "--decision", "deny")
    assert re.search(r"deny\(rule 0\).*unreplied_timeout\s+red1", listing.stdout), listing.stdout
    summary = json.loads(flows_cli(tb, "--summary", "--json", "--network", "red").stdout)
    assert summary["by_decision"]["deny"]["flows"] == 1
    assert summary["by_end_reason"]["tcp_closed"]["flows"] == 2
    assert summary["top_talkers"][0]["src"] == "192.168.1.11"


def test_bad_filters_and_counters(tb):
    bad = flows_cli(tb, "--reason", "sunset")
    assert bad.returncode == 2 and bad.stderr.startswith("error: --reason 'sunset'"), bad.stderr
    assert flows_cli(tb, "--since", "soon").returncode == 2
    vr = subprocess.run([sys.executable, "-m", "testbed.cli", "vr", "srv1", "records", "--json", "--prefix",
                         tb.prefix, "--run-root", str(tb.rundir.root)], capture_output=True, text=True, timeout=30)
    counters = json.loads(vr.stdout)
    assert counters["enabled"] and counters["records"] >= 3 and counters["lost"] == 0, counters
    assert counters["written"] >= 3 and counters["file"].endswith("flows/srv1.jsonl")


def test_records_switched_off_record_nothing_more(tb):
    switch_records(tb, "off")
    assert run_in(tb, "red1", UDP_CLIENT, OFF_PORT, 2, 0).strip() == "ok"
    gone(tb, OFF_PORT)
    assert wait_records(tb, 1, "--port", str(OFF_PORT), timeout=1.0) == []
    switch_records(tb, "on")                                       # for the shutdown test


def test_pairs_still_live_at_shutdown_are_written(tb):
    out = run_in(tb, "red1", UDP_CLIENT, LATE_PORT, 1, 0)
    assert out.strip() == "ok", out
    tb.stop()
    records = [json.loads(line) for line in (tb.path / "flows" / "srv1.jsonl").read_text().splitlines()]
    late = [r for r in records if r.get("dport") == LATE_PORT]
    assert [(r["end_reason"], r["packets"]) for r in late] == [("shutdown", 1)], late
