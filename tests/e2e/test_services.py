"""Load balancing in the overlay on a real testbed: a service address with members on two servers,
many TCP connections from a client VM spread over both, replies on the pinned reverse entries, and
a member's removal through the VNC moving only its flows (vrouter/core/ecmp.py)."""
import sys
import time

import pytest
import yaml

from overlay_helpers import TOPOLOGY, needs_root
from testbed.runner import Testbed
from testbed.topology import from_dict
from vrouter.io import introspect
from vrouter.io.control import AdminClient

pytestmark = [pytest.mark.e2e, needs_root]

SVC, PORT, CONNECTIONS = "192.168.1.100", 8080, 24
SERVER = ("import socket,sys\ns=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n"
          f"s.bind(('0.0.0.0',{PORT}));s.listen(64);keep=[]\n"
          "while True:\n c,_=s.accept();c.sendall(sys.argv[1].encode()+b'\\n');keep.append(c)\n")
CLIENT = ("import socket,sys,time\nkeep=[]\n"
          "for _ in range(int(sys.argv[1])):\n"
          f" c=socket.create_connection(('{SVC}',{PORT}),timeout=20);name=c.recv(64).decode().strip()\n"
          " print(c.getsockname()[1],name,flush=True);keep.append(c)\n"
          "print('done',flush=True);time.sleep(float(sys.argv[2]))\n")


@pytest.fixture(scope="module")
def tb(run_root, new_prefix):
    doc = yaml.safe_load(TOPOLOGY.read_text())
    doc["vms"].append({"name": "red4", "network": "red", "server": "srv2", "address": "192.168.1.14"})
    doc["services"] = [{"name": "web", "network": "red", "address": SVC, "members": ["red2", "red4"]}]
    bed = Testbed(from_dict(doc, source=str(TOPOLOGY)), prefix=new_prefix("b"), run_root=str(run_root)).start()
    servers = [bed.host(vm).popen([sys.executable, "-c", SERVER, vm]) for vm in ("red2", "red4")]
    yield bed
    for p in servers:
        p.kill()
        p.wait()
    bed.stop()


def connect(tb, n, hold=120.0):
    """``n`` connections from red1 to the service, held open: {client port: the member that answered}."""
    proc = tb.host("red1").popen([sys.executable, "-c", CLIENT, str(n), str(hold)], text=True)
    answered = {}
    for line in proc.stdout:
        if line.strip() == "done":
            return proc, answered
        port, member = line.split()
        answered[int(port)] = member
    proc.wait()
    raise AssertionError(f"the client ended after {len(answered)} connections: {proc.returncode}")


def service_flows(tb):
    """srv1's forward entries to the service by client port, and its reverse entries by client port."""
    flows = introspect.query(tb.path, "srv1", "flows")
    fwd = {f["sport"]: f for f in flows if f["dst"] == SVC and f["dport"] == PORT}
    rev = {f["dport"]: f for f in flows if f["src"] == SVC and f["sport"] == PORT}
    return fwd, rev


def wait_members(tb, count, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        nhs = introspect.query(tb.path, "srv1", "nexthops")
        comp = next(nh for nh in nhs if nh["type"] == "composite")
        if len(comp["members"]) == count:
            return comp
        time.sleep(0.2)
    raise AssertionError(f"srv1 still has members {comp['members']}")


def test_connections_spread_stick_and_move_only_with_their_member(tb):
    punts = introspect.query(tb.path, "srv1", "stats")["pipeline"]["punts"]
    proc, answered = connect(tb, CONNECTIONS)
    try:
        assert set(answered.values()) == {"red2", "red4"}, answered
        fwd, rev = service_flows(tb)
        for port, member in answered.items():
            assert fwd[port]["member"] == member and fwd[port]["role"] == "forward"
            r = rev[port]
            assert r["member"] == member and r["role"] == "reverse" and r["packets"] > 0
            assert r["pin"] == {"red2": "10.0.2.1", "red4": "10.0.1.2"}[member]
        # one slow-path call per connection at srv1: every reply hit its proactive reverse entry
        assert introspect.query(tb.path, "srv1", "stats")["pipeline"]["punts"] - punts == CONNECTIONS
        comp = wait_members(tb, 2)
        counts = {m["member"]: m["flows"] for m in comp["members"]}
        assert counts == {m: sum(v == m for v in answered.values()) for m in ("red2", "red4")}

        with AdminClient(str(tb.rundir.vnc_socket)) as vnc:
            vnc.remove_service_member("web", "red4")
        wait_members(tb, 1)
        fwd, rev = service_flows(tb)
        for port, member in answered.items():
            assert fwd[port]["member"] == "red2" and fwd[port]["nexthop"]["peer"] == "10.0.2.1"
            assert rev[port]["pin"] == "10.0.2.1"
            if member == "red2":        # untouched: the same entry, still with its packets
                assert fwd[port]["packets"] >= 3
    finally:
        proc.kill()
        proc.wait()
    proc, again = connect(tb, 6, hold=1.0)
    proc.wait()
    assert set(again.values()) == {"red2"}
