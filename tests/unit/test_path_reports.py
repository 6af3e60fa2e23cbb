"""Path repair in the shells, without root: the datapath's probe rounds and remaps, the events it hands
the agent, the agent's report to the VNC (queued while the VNC is away, recorded once), the tables."""
import collections
import socket
import time

import pytest

from controllers.vnc_rpc import start_vnc_server
from core_helpers import udp_frame
from offload_helpers import FakeTunnels
from test_vnc_rpc import topology, wait_until
from test_vrouter_shells import config  # noqa: I001  (the shells' one-VM config)
from testbed.net_cmd import format_path_reports
from vrouter.core import paths as P
from vrouter.core.codec import virtio
from vrouter.core.offload import Offloads
from vrouter.core.slowpath import SlowPath
from vrouter.io import ipc, vnc_client
from vrouter.io.control import AdminClient, VncError
from vrouter.io.vnc_client import VncClient
from vrouter.processes.agent import Agent
from vrouter.processes.datapath import AgentLink, Datapath
from vrouter.tools import tables

PEER, ENCAP = "10.0.2.1", "mplsoudp"


class Shard:
    """srv1's datapath with path repair, 16 UDP flows to PEER installed; the agent end of its channel."""

    def __init__(self):
        self.now = 0.0
        self.link = AgentLink(collections.Counter(), on_broken=lambda sock, exc: pytest.fail(f"broke: {exc}"))
        ours, self.agent = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        ours.setblocking(False)
        self.agent.setblocking(False)
        self.link.attach(ours)
        self.dp = Datapath(self.link, Offloads(), clock=lambda: self.now, path_slots=P.SLOTS, seed=lambda: 5)
        self.cfg = config()
        self.dp.configure(self.cfg)
        self.dp.sender = FakeTunnels()
        self.frames = {sp: virtio.PLAIN + udp_frame("192.168.1.11", "192.168.1.12", sp, 53,
                                                     src_mac="02:00:00:00:00:11") for sp in range(1000, 1016)}
        self.dp.from_tap("vt-t1", list(self.frames.values()))
        slow = SlowPath(self.cfg)
        for pid, request in self.messages("punts"):
            self.link.inbox.append([pid, slow.decide(request, 0.0)])
        self.dp.service()
        self.peer = P.Paths(seed=9)         # the other vrouter's path state, driven by hand

    def messages(self, kind):
        out = []
        while True:
            try:
                msg = ipc.unpack(self.agent.recv(ipc.SEQPACKET_MAX))
            except BlockingIOError:
                return out
            if msg["t"] == kind:
                out.extend(msg[kind] if kind == "punts" else msg["events"])

    def round(self, lost=lambda sport: False):
        """One round each way: the peer hears our probes except the `lost` ports, we hear all its answers."""
        self.now += P.INTERVAL
        assert self.dp.paths_wait() == 0.0
        sent = len(self.dp.sender.probes)
        self.dp.probe()
        for _peer, encap, sport, payload in self.dp.sender.probes[sent:]:
            if not lost(sport):
                self.peer.receive("10.0.1.1", encap, payload, self.now)
        reads = [("10.0.2.1", encap, payload, 0) for _peer, encap, _sport, payload in self.peer.round(self.now)]
        self.dp.from_reads(reads)

    def ports(self):
        """The source port each flow's next packet leaves from."""
        self.dp.sender.sent.clear()
        self.dp.from_tap("vt-t1", list(self.frames.values()))
        return [sport for _peer, _encap, sport, _payload in self.dp.sender.sent]


def test_the_datapath_probes_each_slot_and_moves_flows_off_a_dead_port_then_reports_it():
    s = Shard()
    assert s.dp.paths_wait() == 0.0 and s.peer.due() is None
    s.round()
    assert len(s.dp.sender.probes) == P.SLOTS
    assert {sport for _peer, _encap, sport, _payload in s.dp.sender.probes} == \
        {slot["probe_port"] for slot in s.dp.paths_view()["paths"][0]["slots"]}
    before = s.ports()
    victim = collections.Counter(before).most_common(1)[0][0]
    for _ in range(P.DEAD_AFTER + 1):
        s.round(lost=lambda sport: sport == victim)
    after = s.ports()
    assert victim not in after and len(after) == len(before) == 16
    assert [a for a, b in zip(after, before, strict=True) if b != victim] == [b for b in before if b != victim]
    view = s.dp.paths_view()
    (path,) = view["paths"]
    assert view["enabled"] and path["peer"] == PEER
    # moved off the dead port at once, then onto the slot's re-rolled port once a probe from it got through
    assert view["deaths"] == view["revivals"] == 1 and path["dead"] == 0
    assert path["flows_moved"] == 2 * before.count(victim)
    s.dp.expire(s.now)             # what the last answers decided goes out with the next round or ageing
    events = s.messages("paths")
    assert [(e["event"], e["peer"], e["flows"]) for e in events] == [("dead", PEER, before.count(victim)),
                                                                     ("alive", PEER, before.count(victim))]
    assert events[0]["port"] == victim and events[1]["port"] in after
    assert all("time" in e and "at" not in e and e["id"] for e in events)
    text = tables.format_paths(view)
    assert f"Peer {PEER} mplsoudp: probing (flows), 16 flows" in text and "flows moved" in text
    # a path message never reaches the VM, nor counts as a drop
    st = s.dp.pipeline.stats()
    assert st["path_messages"] >= P.SLOTS and st["drops"] == 0


def test_events_wait_for_an_agent_and_off_means_no_probes():
    s = Shard()
    s.link.detach()
    first = s.dp.paths_view()["paths"][0]["slots"][0]["probe_port"]
    for _ in range(P.DEAD_AFTER + 2):
        s.round(lost=lambda sport: sport == first)
    assert s.dp.paths_view()["reports_waiting"] >= 1
    ours, s.agent = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    ours.setblocking(False)
    s.agent.setblocking(False)
    s.link.attach(ours)
    s.dp.expire(s.now)
    assert s.messages("paths") and s.dp.paths_view()["reports_waiting"] == 0
    off = Datapath(AgentLink(collections.Counter(), on_broken=None), Offloads(), clock=lambda: 0.0)
    off.configure(config())
    assert off.paths_wait() is None and off.paths_view()["enabled"] is False


def test_the_agent_passes_path_events_on_or_counts_them():
    agent = Agent("/nonexistent", "srv1")
    agent._paths([{"id": "x-1"}])
    assert agent.counters["path_events_unreported"] == 1
    got = []
    agent.report_paths = got.extend
    agent._paths([{"id": "x-2"}, {"id": "x-3"}])
    assert [e["id"] for e in got] == ["x-2", "x-3"] and agent.counters["path_events"] == 3


def event(n, kind="dead", slot=0, port=50000):
    return {"id": f"abcd-{n}", "event": kind, "peer": "10.0.2.1", "encap": ENCAP, "slot": slot, "port": port,
            "flows": 3, "time": time.time()}


def test_reports_wait_while_the_vnc_is_away_and_are_recorded_once(tmp_path):
    sock = str(tmp_path / "vnc.sock")
    cli = VncClient(sock, "srv1", lambda g, c: None, backoff_max=0.3).start()
    srv = None
    try:
        cli.report_paths([event(1), event(2, slot=1, port=50001)])      # no VNC yet: queued, nothing blocks
        assert cli.reports_waiting == 2
        srv = start_vnc_server(topology(), sock)
        with AdminClient(sock) as adm:
            assert wait_until(lambda: adm.path_reports("srv1")["srv1"]["received"] == 2)
            assert cli.reports_waiting == 0
            cli.report_paths([event(2, slot=1, port=50001), event(3, "alive", slot=0, port=50555)])  # 2 again
            assert wait_until(lambda: adm.path_reports("srv1")["srv1"]["received"] == 3)
            rec = adm.path_reports()["srv1"]
            assert [e["id"] for e in rec["events"]] == ["abcd-1", "abcd-2", "abcd-3"]
            assert [(e["slot"], e["port"]) for e in rec["dead"]] == [(1, 50001)]     # slot 0 came back
            assert "dead: source port 50001 to 10.0.2.1" in format_path_reports({"srv1": rec})
            assert adm.path_reports("srv2") == {"srv2": {"events": [], "dead": [], "received": 0}}
            with pytest.raises(VncError, match="unknown server 'nope'"):
                adm.path_reports("nope")
            with pytest.raises(VncError, match="not registered"):
                adm.call("path_report", "srv1", [event(9)])
    finally:
        cli.stop()
        if srv is not None:
            srv.stop()


def test_the_report_queue_is_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr(vnc_client, "REPORT_QUEUE", 3)
    cli = VncClient(str(tmp_path / "none.sock"), "srv1", lambda g, c: None)
    cli.report_paths([event(n) for n in range(5)])
    assert cli.reports_waiting == 3 and cli.reports_dropped == 2
    cli.stop()

