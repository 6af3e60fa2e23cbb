"""The vrouter shells' logic that needs no root: argument checks, introspection tables, capture targets."""
import collections
import io
import json
import socket
import types

import pytest
from scapy.layers.inet import ICMP, IP

from core_helpers import udp_frame
from offload_helpers import FakeTunnels, prefix, tcp_ip
from testbed import fabric
from testbed.capture import fabric_interfaces
from testbed.commands import CommandError
from testbed.topology import load
from testbed.vr import run
from vrouter.core.codec import virtio
from vrouter.core.config import VrouterConfig
from vrouter.core.offload import Offloads
from vrouter.core.slowpath import SlowPath
from vrouter.io import ipc
from vrouter.processes.datapath import AgentLink, Datapath
from vrouter.processes.forwarder import Forwarder
from vrouter.processes.inprocess import InProcess
from vrouter.processes.introspect import Introspector
from vrouter.tools import tables

DEFAULT = "topologies/default.yaml"


@pytest.fixture
def desc():
    return fabric.describe(load(DEFAULT), "vt")


@pytest.fixture
def rundir(tmp_path, desc):
    (tmp_path / "fabric.json").write_text(json.dumps(desc))
    return tmp_path


def config():
    return VrouterConfig.from_dict({
        "server": "srv1", "underlay_ip": "10.0.1.1", "encapsulation": "mplsoudp",
        "networks": [{"name": "red", "id": 100, "subnets": ["192.168.1.0/24"], "gateway": "192.168.1.1"}],
        "vifs": [{"name": "vt-t1", "network": "red", "mac": "02:00:00:00:00:11", "ip": "192.168.1.11"}],
        "routes": [{"network": "red", "prefix": "192.168.1.12/32",
                    "nexthop": {"type": "tunnel", "peer": "10.0.2.1", "label": 100, "encap": "mplsoudp"}}],
        "peers": ["10.0.2.1"], "policies": [],
    })


def fake_forwarder(cfg=None):
    engine = types.SimpleNamespace(configured=False, vif_counters=dict)    # no pipeline yet
    return types.SimpleNamespace(server="srv1", config=cfg, engine=engine, vifs={},
                                 pending={"vt-t1": "waiting for the VM's namespace"}, clock=lambda: 0.0)


def test_vr_unknown_server_lists_the_known_ones(rundir):
    with pytest.raises(CommandError) as exc:
        run(["srv9", "flow", "-l"], rundir)
    assert str(exc.value) == "unknown server 'srv9' (known: srv1, srv2, srv3, srv4)"
    assert exc.value.code == 2


def test_vr_unknown_tool_and_missing_vrouter(rundir):
    with pytest.raises(CommandError, match="unknown vr tool 'flow -x'"):
        run(["srv1", "flow", "-x"], rundir)
    with pytest.raises(CommandError, match="srv1: no vrouter is listening on .*introspect.sock"):
        run(["srv1", "stats"], rundir, out=io.StringIO())


def test_capture_targets(desc):
    assert fabric_interfaces(desc, server="srv1") == {"srv1-leaf1": "vt-l1p3"}
    assert fabric_interfaces(desc, link="spine2-leaf2") == {"spine2-leaf2": desc["switches"][1]["ports"]["2"]["intf"]}
    assert len(fabric_interfaces(desc)) == 4
    with pytest.raises(CommandError, match="no link 'leaf1-leaf2'"):
        fabric_interfaces(desc, link="leaf1-leaf2")
    with pytest.raises(CommandError, match=r"unknown server 'x' \(known: srv1, srv2, srv3, srv4\)"):
        fabric_interfaces(desc, server="x")


def test_introspector_answers_from_config_and_refuses_clearly():
    intro = Introspector(fake_forwarder(config()))
    vifs = intro.handle({"op": "vifs"})["result"]
    assert vifs[0]["name"] == "vt-t1" and vifs[0]["state"] == "waiting for the VM's namespace"
    assert vifs[0]["vrf"] == 100 and vifs[0]["mac"] == "02:00:00:00:00:11"
    routes = intro.handle({"op": "routes", "vrf": "red"})["result"]
    assert [r["prefix"] for r in routes["routes"]] == ["192.168.1.1/32", "192.168.1.11/32", "192.168.1.12/32"]
    assert intro.handle({"op": "routes", "vrf": "100"})["result"] == routes
    bad = intro.handle({"op": "routes", "vrf": "blue"})
    assert bad == {"ok": False, "error": "no routing instance 'blue' on srv1 (known: 100 (red))"}
    nhs = intro.handle({"op": "nexthops"})["result"]
    assert sorted(n["type"] for n in nhs) == ["receive", "tunnel", "vif"]
    assert [n["id"] for n in nhs] == [1, 2, 3]
    assert intro.handle({"op": "bogus"})["error"].startswith("unknown request 'bogus'")
    assert "no configuration yet" in Introspector(fake_forwarder()).handle({"op": "flows"})["error"]


def test_tables_render_the_tungsten_columns():
    intro = Introspector(fake_forwarder(config()))
    assert "LP      100     mplsoudp 10.0.2.1 label 100" in tables.format_routes(
        intro.handle({"op": "routes", "vrf": "red"})["result"])
    assert "Tunnel     AF_INET  MPLSOUDP Dip:10.0.2.1 Label:100" in tables.format_nexthops(
        intro.handle({"op": "nexthops"})["result"])
    composite = {"id": 7, "type": "composite", "service": "web", "vrfs": [100], "members": [
        {"member": "red2", "type": "tunnel", "peer": "10.0.2.1", "label": 100, "encap": "mplsoudp", "flows": 3,
         "packets_to": 9, "bytes_to": 900, "packets_from": 6, "bytes_from": 600}]}
    text = tables.format_nexthops([composite])
    assert "Composite  AF_INET  Service:web Members:1" in text
    assert "member red2" in text and "Flows:3 To:9/900 From:6/600" in text
    flows = [{"index": 0, "reverse_index": 1, "vrf": 100, "proto": "tcp", "src": "192.168.1.11", "dst": "192.168.1.12",
              "sport": 40000, "dport": 80, "role": "forward", "action": "forward", "reason": None,
              "nexthop": {"type": "tunnel", "peer": "10.0.2.1", "label": 100, "encap": "mplsoudp"},
              "packets": 3, "bytes": 180, "tcp_state": "established", "idle": 0.5, "entropy_sport": 51000}]
    text = tables.format_flows(flows)
    assert "0<=>1" in text and "tcp (100)" in text and "UdpSrcPort 51000" in text and "Stats:3/180" in text
    drops = tables.format_dropstats({"invalid_source": 4, "no_route": 0})
    assert "invalid_source" in drops and "not a known peer" in drops


def test_vm_namespace_file_round_trip(tmp_path):
    assert ipc.read_vm_namespaces(tmp_path) == {}
    ipc.update_vm_namespaces(tmp_path, {"vt-t1": {"vm": "red1", "netns": 123}})
    ipc.update_vm_namespaces(tmp_path, {"vt-t2": {"vm": "red2", "netns": "/run/netns/vt-red2"}}, remove=("vt-t1",))
    assert ipc.read_vm_namespaces(tmp_path) == {"vt-t2": {"vm": "red2", "netns": "/run/netns/vt-red2"}}


def test_long_run_directory_is_a_clear_error():
    with pytest.raises(ipc.IpcError, match="longer than 107 bytes"):
        ipc.introspect_socket("/tmp/" + "x" * 120, "srv1")


def agent_end(link):
    """A real AgentLink on one end of a SEQPACKET pair; returns a reader of the punts the other end got."""
    ours, agent = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    ours.setblocking(False)
    agent.setblocking(False)
    link.attach(ours)

    def punted():
        out = []
        while True:
            try:
                msg = ipc.unpack(agent.recv(ipc.SEQPACKET_MAX))
            except BlockingIOError:
                return out
            out.extend(msg["punts"])
    return punted


def test_datapath_sends_the_setup_queues_punts_after_batches_decisions_and_ageing():
    d = config().to_dict()
    cfg = VrouterConfig.from_dict({**d, "flow": {"setup_rate": 1.0, "burst_tokens": 2, "hold_timeout": 10.0}})
    link = AgentLink(collections.Counter(), on_broken=lambda sock, exc: pytest.fail(f"channel broke: {exc}"))
    read = agent_end(link)
    now = [0.0]
    dp = Datapath(link, Offloads(), clock=lambda: now[0])
    dp.configure(cfg)
    dp.sender = FakeTunnels()
    frames = [virtio.PLAIN + udp_frame("192.168.1.11", "192.168.1.12", sport, 53, src_mac="02:00:00:00:00:11")
              for sport in range(4)]
    dp.from_tap("vt-t1", frames)
    first = read()                      # one batch, as many as the bucket's two tokens allow
    assert [r["sport"] for _, r in first] == [0, 1] and {r["owner"] for _, r in first} == {"vt-t1"}
    assert link.counters["punt_batches"] == 1
    pid, request = first[0]
    link.inbox.append([pid, SlowPath(cfg).decide(request, 0.0)])
    dp.service()
    assert len(dp.sender.sent) == 1 and pid not in link.sent and read() == []
    assert dp.punt_wait() == pytest.approx(1.0)     # the holder sleeps until the next token
    link.window = len(link.sent)        # a full window: decisions coming back wake the holder, no timer
    assert dp.punt_wait() is None
    link.window = 1024
    now[0] = 1.5
    dp.expire(now[0])                   # the bucket refilled: the next punt goes out without new input
    assert [r["sport"] for _, r in read()] == [2]


class ReadsOnce:
    """A fabric socket's reads as `Tunnels.receive_gro` hands them out: each call takes the next batch."""

    def __init__(self, *batches):
        self.batches = list(batches)
        self.calls = []     # max_reads of each call

    def receive_gro(self, sock, max_reads, stamps=None):
        self.calls.append(max_reads)
        return self.batches.pop(0) if self.batches else []


def engine_with(events, writes_to, answered=True, idle=False):
    """An InProcess engine whose datapath records what it is handed and 'writes' to the VM
    interface `writes_to` (what Datapath._execute notes in wrote_vif after a TAP write); the shell's
    answer read finds a frame if `answered`; `idle`: the round woke from an idle wait."""
    eng = InProcess.__new__(InProcess)
    dp = types.SimpleNamespace(stamps=None, wrote_vif=None, pipeline=object(), counters=collections.Counter())

    def from_reads(reads, kernel_ns):
        events.append(("deliver", len(reads)))
        dp.wrote_vif = writes_to

    def from_lone_icmp(src, encap, data):
        events.append(("icmp", encap))
        dp.wrote_vif = writes_to
    dp.from_reads, dp.from_lone_icmp = from_reads, from_lone_icmp
    eng.datapath = dp
    def read_answer(name):
        events.append(("answer", name))
        return answered
    eng.shell = types.SimpleNamespace(read_answer=read_answer, from_idle=idle)
    return eng


def test_a_lone_packet_written_to_a_vm_has_its_answer_read_before_the_drain():
    ping = ("10.0.2.1", "mplsoudp", prefix("mplsoudp") + bytes(IP(src="192.168.1.12", dst="192.168.1.11") / ICMP()), 0)
    bulk = ("10.0.2.1", "mplsoudp", prefix("mplsoudp") + tcp_ip(b"x" * 1000), 0)
    events = []
    eng = engine_with(events, "vt-t1")
    eng.on_fabric(ReadsOnce([ping], [ping, ping]), None)
    assert events == [("icmp", "mplsoudp"), ("answer", "vt-t1"), ("deliver", 2)]
    assert eng.datapath.counters["answers_read"] == 1
    eng = engine_with([], "vt-t1", answered=False)   # the read found the queue empty: not counted
    eng.on_fabric(ReadsOnce([ping]), None)
    assert eng.datapath.counters["answers_read"] == 0
    events = []     # nothing written to a VM (sent on to a tunnel, dropped, punted): no read
    engine_with(events, None).on_fabric(ReadsOnce([ping]), None)
    assert events == [("icmp", "mplsoudp")]
    events = []     # TCP is drained first so GRO merges across the drain, and nobody waits for an answer
    fabric = ReadsOnce([bulk], [bulk, bulk])
    engine_with(events, "vt-t1").on_fabric(fabric, None)
    assert events == [("deliver", 3)] and fabric.calls == [1, 63]
    events = []     # an echo reply written to the pinging VM gets no answer: no read for one
    pong = ("10.0.2.1", "mplsoudp",
            prefix("mplsoudp") + bytes(IP(src="192.168.1.12", dst="192.168.1.11") / ICMP(type=0)), 0)
    engine_with(events, "vt-t1").on_fabric(ReadsOnce([pong]), None)
    assert events == [("icmp", "mplsoudp")]
    events = []     # a coalesced read (segment size set) is not a lone ping: the GRO path
    engine_with(events, None).on_fabric(ReadsOnce([ping[:3] + (40,)]), None)
    assert events == [("deliver", 1)]


def test_after_an_idle_wait_a_lone_fabric_read_is_not_followed_by_a_drain():
    ping = ("10.0.2.1", "mplsoudp", prefix("mplsoudp") + bytes(IP(src="192.168.1.12", dst="192.168.1.11") / ICMP()), 0)
    bulk = ("10.0.2.1", "mplsoudp", prefix("mplsoudp") + tcp_ip(b"x" * 1000), 0)
    events = []
    fabric = ReadsOnce([ping], [ping])
    engine_with(events, "vt-t1", idle=True).on_fabric(fabric, None)
    # the second ping stays queued: epoll (level-triggered) reports the socket again next round
    assert events == [("icmp", "mplsoudp"), ("answer", "vt-t1")] and fabric.calls == [1]
    events = []     # bulk data is drained even after an idle wait: its reads merge
    fabric = ReadsOnce([bulk], [bulk])
    engine_with(events, "vt-t1", idle=True).on_fabric(fabric, None)
    assert events == [("deliver", 2)] and fabric.calls == [1, 63]


def test_after_an_idle_wait_a_small_tap_frame_is_not_followed_by_a_drain():
    vm, tap_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    tap_end.setblocking(False)
    handed = []
    engine = types.SimpleNamespace(bulk=False, on_tap=lambda name, frames: handed.append(len(frames)))
    shell = types.SimpleNamespace(vifs={"vt-t1": None}, engine=engine, from_idle=True)
    try:
        for frame in (b"a" * 100, b"b" * 100, b"c" * 3000, b"d" * 100):
            vm.send(frame)
        assert Forwarder._on_tap(shell, tap_end.fileno(), "vt-t1") is True
        assert handed == [1]                # idle: the first small frame alone, the rest left queued
        shell.from_idle = False
        assert Forwarder._on_tap(shell, tap_end.fileno(), "vt-t1") is True
        assert handed == [1, 1, 2]          # a busy round drains behind its first frame
        vm.send(b"e" * 3000)
        vm.send(b"f" * 100)
        shell.from_idle = True
        assert Forwarder._on_tap(shell, tap_end.fileno(), "vt-t1") is True
        assert handed == [1, 1, 2, 1, 1] and engine.bulk    # a TSO super-frame: drained even when idle
        assert Forwarder._on_tap(shell, tap_end.fileno(), "vt-t1") is False
    finally:
        vm.close()
        tap_end.close()


def test_the_answer_read_says_what_it_found():
    found = []
    shell = types.SimpleNamespace(vifs={"vt-t1": types.SimpleNamespace(fd=7)},
                                  _on_tap=lambda fd, name: found.pop(0), _lost_vif=pytest.fail)
    found += [True, False]
    assert Forwarder.read_answer(shell, "vt-t1") is True
    assert Forwarder.read_answer(shell, "vt-t1") is False
    assert Forwarder.read_answer(shell, "gone") is False     # detached meanwhile: nothing read
    assert found == []


class TimerEngine:
    """An engine that only has timers: a punt waiting for the setup-rate bucket until `punt_at`, a
    probe round due at `probe_at`; it records when each timer's work is done."""

    tap_queues, reads_taps, reads_fabric, bulk, stamping = 1, True, True, False, False

    def __init__(self, shell):
        self.clock = shell.clock
        self.punt_at, self.probe_at = 0.35, 0.6
        self.done = []

    def punt_wait(self):
        return None if self.punt_at is None else max(0.0, self.punt_at - self.clock())

    def probe_wait(self):
        return max(0.0, self.probe_at - self.clock())

    def flush_punts(self):
        self.done.append(("flush", self.clock()))
        if self.punt_at is not None and self.clock() >= self.punt_at:
            self.punt_at = None

    def probe(self):
        self.done.append(("probe", self.clock()))
        self.probe_at += 0.5

    def tick(self, now):
        self.done.append(("tick", now))
        return True

    def close(self):
        pass


def test_the_loop_runs_each_timer_when_it_is_due_and_not_in_the_rounds_between(tmp_path):
    t = [0.0]
    fwd = Forwarder(str(tmp_path), "srv1", engine=TimerEngine, clock=lambda: t[0], rt_priority=0)
    waits = []

    def poll(timeout):      # every round: a packet after 0.1 s, or the timer if that comes first
        waits.append(round(timeout, 3))
        t[0] += min(0.1, timeout)
        fwd.running = t[0] < 1.25
        return False
    fwd.poll = poll
    try:
        fwd.run()
    finally:
        fwd.close()
    done = [(what, round(at, 3)) for what, at in fwd.engine.done]
    # Rounds woken by a packet before a timer is due do none of its work (the punt's bucket is
    # looked at once, when its token is due, not after each of the three packets before it).
    assert done == [("flush", 0.0), ("tick", 0.0), ("flush", 0.35), ("probe", 0.6), ("tick", 1.0), ("probe", 1.1)]
    # Each wait ends at the next timer: the punt at 0.35, the attach retry at 0.5, the probe at 0.6.
    assert waits[:8] == [0.0, 0.35, 0.25, 0.15, 0.05, 0.15, 0.05, 0.1]
