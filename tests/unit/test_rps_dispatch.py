"""Multi-core dispatch logic without root: channel framing, multi-core config, the dispatcher's and
relays' routing (both directions of a flow meet on one worker through RPS and extended RPS), per-flow
order through real socketpairs, the proactive reverse entry hit on sharded pipelines, and the agent's
per-worker channels."""
import random
import socket
from pathlib import Path

import pytest
import yaml

from vrouter.core import rps_channel
from vrouter.core.actions import ToTunnel, ToVif
from vrouter.core.codec import ethernet, ipv4, l4
from vrouter.core.config import VROUTER_MAC, ConfigError, VrouterConfig
from vrouter.core.multicore import MulticoreConfig
from vrouter.core.pipeline import Pipeline, encap_prefix
from vrouter.core.rps_route import Outbox, Router
from vrouter.core.slowpath import SlowPath
from vrouter.io import ipc
from vrouter.tools import bench_workers
from vrouter.tools.benchlib import established

CONFIG = yaml.safe_load((Path(__file__).parents[1] / "fixtures" / "replay-srv1.yaml").read_text())
VMS = {"tr-red1": ("red", 100, "mplsoudp", "02:00:00:00:01:0b"),
       "tr-blue1": ("blue", 200, "vxlan", "02:00:00:00:02:0b")}
LOCAL, REMOTE, PEER = ipv4.ip_to_int("192.168.1.11"), ipv4.ip_to_int("192.168.1.12"), "10.0.2.1"


def _ip(proto, src, dst, sport, dport, payload=b"x"):
    seg = (l4.build_tcp(src, dst, sport, dport, payload, flags=l4.TCP_SYN) if proto == 6
           else l4.build_udp(src, dst, sport, dport, payload))
    return ipv4.build(src, dst, proto, seg)


def _tap_frame(vif, ip):
    return ethernet.build(VROUTER_MAC, ethernet.mac_to_bytes(VMS[vif][3]), ethernet.ETH_P_IP) + ip


# ---------------------------------------------------------------- framing
def test_batches_round_trip_and_cut_datagrams_are_one_line_errors():
    recs = [("tap", "tr-red1", b"\x01" * 60, 0), ("mplsoudp", "10.0.2.1", b"", 0),
            ("mplsogre", "10.0.9.9", b"z" * 9000, 0), ("vxlan", "10.0.2.1", b"y" * 4500, 1500)]
    data = rps_channel.encode(recs)
    assert rps_channel.decode(data) == recs
    assert rps_channel.decode(b"") == []
    for cut in (1, rps_channel.HDR_LEN + 3, len(data) - 1):
        with pytest.raises(rps_channel.FramingError) as e:
            rps_channel.decode(data[:cut])
        assert "\n" not in str(e.value)
    with pytest.raises(rps_channel.FramingError):
        rps_channel.decode(b"\x09\x00\x00\x00\x00\x00\x00\x00")  # unknown NIC kind


def test_batch_counts_and_reports_full():
    b = rps_channel.Batch()
    while not b.full():
        b.add("vxlan", "10.0.2.1", b"p" * 1400)
    n = b.count
    assert n == -(-rps_channel.MAX_BATCH_BYTES // (rps_channel.HDR_LEN + 8 + 1400))
    assert len(rps_channel.decode(b"".join(b.take()))) == n and b.count == 0 and b.size == 0


# ---------------------------------------------------------------- config
@pytest.mark.parametrize("d, message", [
    ({"mode": "turbo"}, "steering.mode: 'turbo' is not one of rps, extended, kernel"),
    ({"mode": "rps", "workers": [0, 5]}, "steering: CPU 5 is not available here (available: 0, 1)"),
    ({"mode": "kernel", "workers": [0, 1], "interfaces": {"vxlan": "off"}},
     "steering.interfaces: per-interface modes need a dispatcher (mode rps or extended)"),
    ({"mode": "rps", "dispatcher_cpu": -1}, "steering.dispatcher_cpu: -1 is not a CPU number"),
    ({"mode": "rps", "workers": "0,1"}, "steering.workers: expected a list of worker ids"),
    ([0, 1], "steering: expected a mapping"),
])
def test_multicore_config_errors_are_one_line(d, message):
    with pytest.raises(ConfigError) as e:
        MulticoreConfig.from_dict(d, available_cpus={0, 1})
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_multicore_config_names_workers_and_second_cores():
    mc = MulticoreConfig.from_dict({"mode": "extended", "workers": {0: 1, 1: 3}, "second_cores": [1]},
                                   available_cpus={0, 1})
    assert mc.workers == [0, 1] and mc.second_cores == [1]
    assert MulticoreConfig.from_dict({"mode": "kernel", "workers": [0, 1]}).second_cores == []


# ---------------------------------------------------------------- routing and order
def _router(mode, workers=(0, 1)):
    mc = MulticoreConfig.from_dict({"mode": mode, "workers": list(workers)})
    return Router(mc.steering, "10.0.1.1")


def _worker_of(router, hop):
    kind, where = hop
    return where if kind == "worker" else None


@pytest.mark.parametrize("mode", ["rps", "extended"])
def test_both_directions_of_a_flow_reach_one_worker_and_flows_spread(mode):
    router = _router(mode)
    used = set()
    rnd = random.Random(5)
    for i in range(64):
        vif = rnd.choice(list(VMS))
        _net, vrf, encap, _mac = VMS[vif]
        proto, sp, dp = rnd.choice([6, 17]), rnd.randrange(1024, 65535), rnd.randrange(1, 65535)
        kind, w_out = router.from_tap(vif, vrf, _tap_frame(vif, _ip(proto, LOCAL, REMOTE, sp, dp)))
        assert kind == "worker"
        reply = encap_prefix(encap, vrf, b"\x02" * 6) + _ip(proto, REMOTE, LOCAL, dp, sp)
        hop = router.from_fabric(encap, PEER, 49152 + i, reply)
        if mode == "extended":
            assert hop[0] == "relay" and hop[1] in (0, 1)
            w_back = router.stage2(encap, reply)
        else:
            w_back = _worker_of(router, hop)
        assert w_back == w_out
        used.add(w_out)
    assert used == {0, 1}


def _datagrams(sock):
    """The datagrams waiting on `sock`, in order, read without blocking."""
    sock.setblocking(False)
    while True:
        try:
            yield sock.recv(1 << 22)
        except BlockingIOError:
            return


@pytest.mark.parametrize("mode", ["rps", "extended"])
def test_per_flow_order_through_socketpairs_and_relays(mode):
    """Dispatcher -> (relay ->) worker channels as the processes use them, drained in random order."""
    router = _router(mode)
    pairs = {("worker", w): socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET) for w in (0, 1)}
    relays = {("relay", c): socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET) for c in (0, 1)}
    for a, b in [*pairs.values(), *relays.values()]:
        ipc.tune_seqpacket(a)
        ipc.tune_seqpacket(b)
    rnd = random.Random(11)
    flows = [(rnd.randrange(1024, 65535), rnd.randrange(1, 65535), 49152 + rnd.randrange(16000)) for _ in range(40)]
    sent = {f: 0 for f in flows}
    outbox = Outbox(lambda dest, parts, _n: (pairs.get(dest) or relays[dest])[0].sendmsg(parts))
    for _read in range(30):                                    # NIC reads of random flows
        for _ in range(rnd.randrange(1, 40)):
            f = rnd.choice(flows)
            sp, dp, esport = f
            payload = encap_prefix("mplsoudp", 100, b"\x02" * 6) + \
                _ip(17, REMOTE, LOCAL, sp, dp, b"|%d %d %d %d" % (sp, dp, esport, sent[f]))
            sent[f] += 1
            outbox.add(router.from_fabric("mplsoudp", PEER, esport, payload), "mplsoudp", PEER, payload)
        outbox.flush()
    relay_box = Outbox(lambda dest, parts, _n: pairs[dest][0].sendmsg(parts))
    for _a, b in relays.values():                             # relays: stage 2 in their own order
        for data in _datagrams(b):
            for kind, tag, payload, seg in rps_channel.decode(data):
                relay_box.add(("worker", router.stage2(kind, payload)), kind, tag, payload, seg)
            relay_box.flush()
    seen, owner = {}, {}
    for dest, (_a, b) in pairs.items():
        for data in _datagrams(b):
            for _kind, _tag, payload, _seg in rps_channel.decode(data):
                sp, dp, esport, seq = (int(x) for x in bytes(payload).rsplit(b"|", 1)[1].split())
                f = (sp, dp, esport)
                seen.setdefault(f, []).append(seq)
                assert owner.setdefault(f, dest) == dest          # one flow, one worker
    assert seen == {f: list(range(n)) for f, n in sent.items() if n}
    assert {d for d in owner.values()} == set(pairs)
    for a, b in [*pairs.values(), *relays.values()]:
        a.close()
        b.close()


@pytest.mark.parametrize("mode", ["rps", "extended"])
def test_proactive_reverse_entry_is_hit_on_the_punting_worker(mode):
    """Shards as the worker processes hold them: the worker the first packet is steered to punts,
    installs forward + reverse, and the reply's first packet (through stage 1 and 2) hits there."""
    router = _router(mode)
    config = VrouterConfig.from_dict(CONFIG)
    shards = {w: Pipeline(config) for w in (0, 1)}
    slow = SlowPath(config)
    rnd = random.Random(3)
    punts = {0: 0, 1: 0}
    for _ in range(48):
        vif = rnd.choice(list(VMS))
        _net, vrf, encap, _mac = VMS[vif]
        proto, sp, dp = rnd.choice([6, 17]), rnd.randrange(1024, 65535), rnd.choice([53, 80, 443, 8080])
        frame = _tap_frame(vif, _ip(proto, LOCAL, REMOTE, sp, dp))
        (_kind, w), = [router.from_tap(vif, vrf, frame)]
        assert shards[w].from_vif(vif, frame, 0.0) == []
        (request,) = shards[w].take_punts(0.0)
        punts[w] += 1
        (out,) = shards[w].install(slow.decide(request, 0.0), 0.0)
        assert isinstance(out, ToTunnel)
        reply = encap_prefix(encap, vrf, b"\x02" * 6) + _ip(proto, REMOTE, LOCAL, dp, sp)
        hop = router.from_fabric(encap, PEER, out.sport, reply)
        w_back = router.stage2(encap, reply) if hop[0] == "relay" else hop[1]
        (tag_kind, tag, payload, _seg), = rps_channel.decode(rps_channel.encode([(encap, PEER, reply)]))
        actions = shards[w_back].from_fabric(tag, tag_kind, payload, 0.1)
        assert [type(a) for a in actions] == [ToVif], (w, w_back, actions)
    assert all(punts.values())
    assert sum(p.stats()["misses"] for p in shards.values()) == 48


# ---------------------------------------------------------------- agent channels
def test_agent_answers_each_worker_on_its_own_channel(agent_channel):
    agent, main_fwd = agent_channel(CONFIG)
    workers = {w: socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET) for w in (0, 1)}
    socket.send_fds(main_fwd, [ipc.pack({"t": "channels", "workers": [0, 1]})],
                    [b.fileno() for _a, b in workers.values()])
    pipe = Pipeline(VrouterConfig.from_dict(CONFIG))
    for w, (a, _b) in workers.items():
        frame = _tap_frame("tr-red1", _ip(17, LOCAL, REMOTE, 4000 + w, 53))
        assert pipe.from_vif("tr-red1", frame, 0.0) == []
        (request,) = pipe.take_punts(0.0)
        a.settimeout(5)
        a.send(ipc.pack({"t": "punts", "punts": [[w, request]]}))
        msg = ipc.unpack(a.recv(1 << 20))
        assert msg["t"] == "decisions" and [pid for pid, _ in msg["decisions"]] == [w]
        (_pid, decision), = msg["decisions"]
        assert decision["forward"]["key"][3] == 4000 + w and decision["reverse"] is not None
    assert agent.counters["decisions"] == 2
    main_fwd.settimeout(0.2)
    with pytest.raises(socket.timeout):      # nothing for the workers went to the main channel
        while True:
            assert ipc.unpack(main_fwd.recv(1 << 22))["t"] == "config"


# ---------------------------------------------------------------- benchmark
def test_worker_benchmark_delivers_every_packet_to_its_owner():
    pipe, _out, to_vm = established("mplsoudp", 200, 64)
    for fn in (bench_workers.run_dispatch, bench_workers.run_presteered):
        one, two = fn(1, to_vm, pipe, 2), fn(2, to_vm, pipe, 2)
        assert one["per_worker"] == [400]
        assert sum(two["per_worker"]) == 400 and min(two["per_worker"]) > 0
        assert one["pps"] > 0 and two["pps"] > 0
