"""The slow-path channel between a forwarder (or a multi-core worker) and its agent, without root:
punts and decisions in batches (split when a batch would not fit one message), sends that would
block queue instead, the window that leaves what waits in the core's queue, decisions installed a
weight per loop round, what the agent counts, and fair TAP reads (socketpairs stand in for TAPs)."""
import collections
import selectors
import socket
from pathlib import Path

import pytest
import yaml

from offload_helpers import FakeTunnels
from vrouter.core.codec import ethernet, ipv4, l4, virtio
from vrouter.core.config import VROUTER_MAC, VrouterConfig
from vrouter.core.offload import Offloads
from vrouter.io import ipc, tap
from vrouter.processes.agent import Agent, Peer
from vrouter.processes.datapath import DECISION_WEIGHT, AgentLink, Datapath, VifPort
from vrouter.processes.forwarder import Forwarder

CONFIG = yaml.safe_load((Path(__file__).parents[1] / "fixtures" / "replay-srv1.yaml").read_text())
RED, BLUE = "tr-red1", "tr-blue1"        # red's flows go out MPLSoUDP, blue's VXLAN (the fixture's routes)
MAC = {RED: "02:00:00:00:01:0b", BLUE: "02:00:00:00:02:0b"}
VM, REMOTE = ipv4.ip_to_int("192.168.1.11"), ipv4.ip_to_int("192.168.1.12")


def tap_read(vif: str, sport: int, dport: int = 53) -> bytes:
    """A TAP read: virtio_net_hdr + a UDP datagram from the VM on `vif` to 192.168.1.12."""
    ip = ipv4.build(VM, REMOTE, 17, l4.build_udp(VM, REMOTE, sport, dport, b"x"))
    return virtio.PLAIN + ethernet.build(VROUTER_MAC, ethernet.mac_to_bytes(MAC[vif]), ethernet.ETH_P_IP) + ip


def new_flows(n: int, first: int = 10000, vif: str = RED) -> list[bytes]:
    return [tap_read(vif, first + i) for i in range(n)]


class Shard:
    """A datapath whose agent link is one end of a socketpair; an Agent serves the other end when
    the test says so (`answer`), so every step is the test's."""

    def __init__(self, tmp_path, configured: bool = True):
        self.fwd_end, self.agent_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.fwd_end.setblocking(False)
        self.interest: list[bool] = []
        self.broken: list = []
        self.link = AgentLink(collections.Counter(), lambda s, why: self.broken.append(why), self.interest.append)
        self.link.attach(self.fwd_end)
        self.dp = Datapath(self.link, Offloads())
        self.dp.configure(VrouterConfig.from_dict(CONFIG))
        self.dp.sender = FakeTunnels()
        self.agent = Agent(str(tmp_path), "srv1")
        if configured:
            self.agent.on_config(1, CONFIG)
        self.peer = Peer(self.agent_end, "forwarder")

    def agent_reads(self) -> list[dict]:
        """What reached the agent, unanswered."""
        out = []
        while True:
            try:
                msg, _ = ipc.recv_message(self.agent_end, bytearray(1 << 20))
            except BlockingIOError:
                return out
            out.append(msg)

    def answer(self) -> None:
        self.agent._on_channel(None, self.peer)

    def close(self):
        self.fwd_end.close()
        self.agent_end.close()


@pytest.fixture
def shard(tmp_path):
    s = Shard(tmp_path)
    yield s
    s.close()


# ---------------------------------------------------------------- batching
def test_a_lone_punt_leaves_at_once_and_one_batch_of_input_is_one_message(shard):
    """No timer: the punt of a single new flow is on the channel when from_tap returns; 40 new flows
    read in one batch are one message of 40 numbered punts."""
    shard.dp.from_tap(RED, new_flows(1))
    (msg,) = shard.agent_reads()
    assert msg["t"] == "punts" and [pid for pid, _ in msg["punts"]] == [1]
    assert msg["punts"][0][1]["sport"] == 10000 and msg["punts"][0][1]["ingress"] == "vif"
    shard.dp.from_tap(RED, new_flows(40, first=20000))
    (msg,) = shard.agent_reads()
    assert [pid for pid, _ in msg["punts"]] == list(range(2, 42))
    st = shard.link.stats()
    assert (st["punt_batches"], st["punts_sent"], st["largest_batch"], st["in_flight"]) == (2, 41, 40, 41)


def test_decisions_come_back_as_one_batch_installed_and_timed_per_punt(shard):
    shard.dp.from_tap(RED, new_flows(40))
    shard.answer()
    assert shard.link.receive() == []        # decisions are not returned: they wait for service()
    assert len(shard.link.inbox) == 40 and shard.link.stats()["decision_batches"] == 1
    assert shard.dp.service() is False
    assert len(shard.dp.sender.sent) == 40   # every held packet released through its new entry
    assert len(shard.link.rtt_us) == 40 and shard.link.stats()["in_flight"] == 0
    assert shard.link.agent_stats["decisions"] == 40 and shard.dp.counters["decisions"] == 40
    assert shard.dp.pipeline.stats()["installs"] == 40


def test_the_agents_counters_are_taken_in_the_order_they_were_sent(shard):
    """A reset's answer (zeroed counters) and the next decision read in one go: the decision's
    counters are the current ones. (They were applied out of order: the experiment then read 0
    slow-path calls for an exchange that made one.)"""
    shard.link.send_message({"t": "reset"})
    shard.dp.from_tap(RED, new_flows(1))
    msgs = shard.agent_reads()
    assert [m["t"] for m in msgs] == ["reset", "punts"]
    shard.peer.send(ipc.pack({"t": "agent_stats", "agent": {}}))       # the agent's answer to the reset
    shard.agent._answer(msgs[1]["punts"], shard.peer)
    assert shard.link.receive() == []
    assert shard.link.agent_stats["decisions"] == 1


def test_batches_that_would_not_fit_one_message_are_split_both_ways(shard):
    shard.link.message_max = shard.agent.message_max = 2000
    shard.dp.from_tap(RED, new_flows(60))
    msgs = shard.agent_reads()
    assert len(msgs) > 1 and all(len(ipc.pack(m)) <= 2000 for m in msgs)
    assert [pid for m in msgs for pid, _ in m["punts"]] == list(range(1, 61))     # each once, in order
    shard.agent._answer([p for m in msgs for p in m["punts"]], shard.peer)
    sizes = []
    while True:
        try:
            sizes.append(len(shard.fwd_end.recv(1 << 20, socket.MSG_PEEK)))
        except BlockingIOError:
            break
        shard.link.receive(max_messages=1)
    assert len(sizes) > 1 and max(sizes) <= 2000
    assert [pid for pid, _ in shard.link.inbox] == list(range(1, 61))


def test_pack_batches_keeps_order_and_refuses_an_item_larger_than_a_message():
    items = [[i, "x" * i] for i in range(200)]
    parts = ipc.pack_batches({"t": "punts"}, "punts", items, 1500)
    assert all(len(data) <= 1500 for data, _ in parts)
    assert [it for data, _ in parts for it in ipc.unpack(data)["punts"]] == items
    assert [n for _, n in parts] == [len(ipc.unpack(d)["punts"]) for d, _ in parts]
    assert ipc.pack_batches({"t": "punts"}, "punts", items[:3]) == [(ipc.pack({"t": "punts", "punts": items[:3]}), 3)]
    with pytest.raises(ipc.IpcError):
        ipc.pack_batches({"t": "punts"}, "punts", [[1, "x" * 3000]], 1500)


# ---------------------------------------------------------------- never blocking, the window
def test_a_send_that_would_block_queues_and_nothing_new_is_taken_until_writable(shard):
    shard.fwd_end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    sport = 10000
    while not shard.link.writer.pending:                 # the agent reads nothing meanwhile
        shard.dp.from_tap(RED, new_flows(8, first=sport))
        sport += 8
        assert sport < 30000, "the channel never filled"
    assert shard.interest == [True] and shard.link.stats()["sends_blocked"] >= 1
    queued = shard.link.stats()["queued"]
    assert queued > 0
    shard.dp.from_tap(RED, new_flows(5, first=40000))    # the channel is blocked: these stay in the core
    assert shard.dp.pipeline.punts_waiting() == 5 and shard.link.stats()["queued"] == queued
    sent = shard.link.stats()["punts_sent"]
    shard.answer()                                       # the agent reads everything waiting ...
    assert shard.link.drain() is True                    # ... so the socket takes the rest
    assert shard.interest == [True, False]
    shard.dp.flush_punts()
    assert shard.dp.pipeline.punts_waiting() == 0 and shard.link.stats()["punts_sent"] == sent + 5
    got = [pid for m in shard.agent_reads() for pid, _ in m["punts"]]
    assert got == sorted(got) and got[-1] == shard.link.seq and shard.broken == []


def test_the_window_leaves_what_waits_in_the_cores_queue(shard):
    shard.link.window = 8
    shard.dp.from_tap(RED, new_flows(20))
    (msg,) = shard.agent_reads()
    assert len(msg["punts"]) == 8 and shard.dp.pipeline.punts_waiting() == 12
    shard.agent._answer(msg["punts"], shard.peer)
    shard.link.receive()
    shard.dp.service()                       # 8 installed: room for 8 more, taken at once
    (msg,) = shard.agent_reads()
    assert [pid for pid, _ in msg["punts"]] == list(range(9, 17)) and shard.dp.pipeline.punts_waiting() == 4


def test_decisions_are_installed_a_weight_per_round(shard):
    for i in range(3):
        shard.dp.from_tap(RED, new_flows(64, first=10000 + 100 * i))
    shard.answer()
    shard.link.receive()
    assert len(shard.link.inbox) == 3 * 64
    done = []
    while True:
        more = shard.dp.service()
        done.append(shard.dp.counters["decisions"])
        if not more:
            break
    assert DECISION_WEIGHT == 64 and done == [64, 128, 192]


def test_an_agent_without_configuration_answers_undecided_and_counts_no_decision(tmp_path):
    """`decisions` counts SlowPath.decide calls (what the experiments compare); a punt that arrives
    before the first configuration is not one. The ids come back so the window does not fill."""
    s = Shard(tmp_path, configured=False)
    s.dp.from_tap(RED, new_flows(3))
    s.answer()
    assert s.agent.counters["decisions"] == 0 and s.agent.counters["punts_unconfigured"] == 3
    s.link.receive()
    assert s.link.stats()["in_flight"] == 0 and s.link.stats()["punts_undecided"] == 3 and not s.link.inbox
    s.close()


def test_the_agent_never_blocks_its_answers_wait_until_the_forwarder_reads(shard):
    shard.agent_end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    ids = []
    for i in range(40):
        shard.dp.from_tap(RED, new_flows(4, first=10000 + 10 * i))
        shard.answer()                        # the forwarder reads nothing meanwhile
        ids += [pid for pid in range(4 * i + 1, 4 * i + 5)]
    assert shard.peer.writer.pending and shard.peer.writer.blocked >= 1
    for _ in range(1000):
        shard.link.receive()                  # the forwarder reads: the agent's socket has room again
        if not shard.peer.writer.pending:
            break
        shard.peer.drain()
    assert [pid for pid, _ in shard.link.inbox] == ids


def test_the_agent_loop_answers_a_batch_on_the_forwarders_channel(tmp_path, agent_channel):
    _agent, conn = agent_channel(CONFIG)
    assert ipc.unpack(conn.recv(1 << 22))["t"] == "config"
    link = Shard(tmp_path)        # a pipeline to make real requests with
    link.dp.from_tap(RED, new_flows(10))
    (msg,) = link.agent_reads()
    conn.send(ipc.pack(msg))
    reply = ipc.unpack(conn.recv(1 << 22))
    assert reply["t"] == "decisions" and [pid for pid, _ in reply["decisions"]] == list(range(1, 11))
    assert reply["agent"]["decisions"] == 10 and reply["agent"]["decision_batches"] == 1
    conn.send(ipc.pack({"t": "reset"}))
    assert ipc.unpack(conn.recv(1 << 22)) == {"t": "agent_stats", "agent": {}}
    link.close()


# ---------------------------------------------------------------- fair TAP reads
@pytest.fixture
def server(tmp_path):
    """A single forwarder whose VMs red and blue are socketpairs (the test holds the VM ends), whose
    agent channel is a socketpair served by an Agent when the test calls `answer`."""
    fwd = Forwarder(str(tmp_path), "srv1")
    config = VrouterConfig.from_dict(CONFIG)
    fwd.config = config
    fwd.engine.datapath.sender = FakeTunnels()
    fwd.engine.datapath.configure(config)
    fwd.vms = {}
    for spec in config.vifs:
        if spec.name in (RED, BLUE):
            vm, tap_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)     # a TAP keeps frame boundaries
            vm.setblocking(False)
            tap_end.setblocking(False)
            port = fwd.vifs[spec.name] = VifPort(spec, [tap_end.detach()], None)
            fwd.sel.register(port.fd, selectors.EVENT_READ, ("tap", spec.name))
            fwd.engine.vif_up(spec.name, port, {"vm": spec.name})
            fwd.vms[spec.name] = vm
    fwd_end, agent_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    fwd_end.setblocking(False)
    fwd.agent.attach(fwd_end)
    fwd.sel.register(fwd_end, selectors.EVENT_READ, ("agent", None))
    agent = Agent(str(tmp_path), "srv1")
    agent.on_config(1, CONFIG)
    peer = Peer(agent_end, "forwarder")
    fwd.answer = lambda: agent._on_channel(None, peer)
    yield fwd
    for vm in fwd.vms.values():
        vm.close()
    agent_end.close()
    fwd.close()


def test_a_flooding_vm_cannot_starve_another(server):
    """Red floods new flows (its TAP always holds more than a round's weight), blue sends 8 packets
    of an established flow per round: every round forwards all of blue's, reads exactly VIF_WEIGHT
    of red's and installs at most DECISION_WEIGHT decisions, and red's flows still get set up."""
    dp, vms = server.engine.datapath, server.vms

    def blue_sent():
        return sum(1 for s in dp.sender.sent if s[1] == "vxlan")

    vms[BLUE].send(tap_read(BLUE, 7000))         # blue's flow: set up before the flood
    server.poll(0)
    server.answer()
    server.poll(0)
    assert blue_sent() == 1
    red_rx, sport = 0, 10000
    for _ in range(12):
        try:
            while True:                          # red's TAP full: a flood at any rate looks like this
                vms[RED].send(tap_read(RED, sport))
                sport += 1
        except BlockingIOError:
            pass
        assert sport - 10000 - red_rx > tap.VIF_WEIGHT
        for _ in range(8):
            vms[BLUE].send(tap_read(BLUE, 7000))
        decisions, blue = dp.counters["decisions"], blue_sent()
        server.poll(0)
        server.answer()
        assert blue_sent() - blue == 8           # all of blue's packets, this round
        assert dp.vifs[RED].counters["rx_packets"] - red_rx == tap.VIF_WEIGHT
        red_rx = dp.vifs[RED].counters["rx_packets"]
        assert dp.counters["decisions"] - decisions <= DECISION_WEIGHT
    assert dp.pipeline.stats()["installs"] >= 5 * DECISION_WEIGHT     # the flood is served too


def test_pressure_has_the_table_the_channel_and_the_uptime(server):
    server.vms[RED].send(tap_read(RED, 9000))
    server.poll(0)
    reply = server.introspector.handle({"op": "pressure"})
    assert reply["ok"], reply
    p = reply["result"]
    assert p["uptime"] >= 0 and p["entries"] == 1 and p["capacity"] == 65536
    assert p["channel"]["punts_sent"] == 1 and p["channel"]["in_flight"] == 1 and p["channel"]["agent_connected"]
