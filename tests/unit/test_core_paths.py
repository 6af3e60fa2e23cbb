"""Path repair's state machine (vrouter/core/paths.py), driven by a fake clock and a fake two-spine
fabric whose spine is a hash of the outer source port, with spine links that can die per direction."""
import zlib

import pytest

from core_helpers import SRV1, SRV2, VM1, VM2, server, udp_frame
from vrouter.core import paths as P
from vrouter.core.actions import ToTunnel
from vrouter.core.paths import DEAD_AFTER, SLOTS, Paths
from vrouter.core.pipeline import Pipeline
from vrouter.core.slowpath import SlowPath

A, B = SRV1, SRV2
ENCAP = "mplsoudp"


def spine(src, dst, sport):
    """The spine a packet takes: what the vrouter cannot see, but the fabric decides by."""
    return zlib.crc32(f"{src}>{dst}:{sport}".encode()) % 2


class Bed:
    """Two vrouters' path state, A with flows toward B; `dead` holds (src, dst, spine) links that drop."""

    def __init__(self, flows=64, a_runs=True, b_runs=True):
        self.a = Paths(seed=11)
        self.b = Paths(seed=22) if b_runs else None
        self.now = 0.0
        self.dead = set()
        self.slots = [self.a.acquire(B, ENCAP, h) for h in range(flows)]
        self.lost = 0

    def passes(self, src, dst, sport):
        return (src, dst, spine(src, dst, sport)) not in self.dead

    def step(self, rounds=1, drop_a=False, drop_b=False):
        for _ in range(rounds):
            self.now += P.INTERVAL
            for peer, encap, sport, payload in self.a.round(self.now):
                assert peer == B and encap == ENCAP
                if self.b is not None and self.passes(A, B, sport) and not drop_a:
                    self.b.receive(A, encap, payload, self.now)
                else:
                    self.lost += 1
            if self.b is not None:
                for peer, encap, sport, payload in self.b.round(self.now + 0.001):
                    assert peer == A
                    if self.passes(B, A, sport) and not drop_b:
                        self.a.receive(B, encap, payload, self.now + 0.001)

    def path(self, side="a"):
        paths = self.a if side == "a" else self.b
        return paths.paths[(B if side == "a" else A, ENCAP)]

    def on(self, spine_no, side="a"):
        src, dst = (A, B) if side == "a" else (B, A)
        return [s for s in self.path(side).slots if spine(src, dst, s.own) == spine_no]

    def every_flow_passes(self):
        return all(self.passes(A, B, s.port) for s in self.slots)


def test_healthy_paths_stay_alive_and_every_probe_is_answered():
    bed = Bed()
    bed.step(20)
    p = bed.path()
    assert all(s.alive for s in p.slots)
    assert all(s.sent == 20 and s.answered >= 19 for s in p.slots)
    assert bed.a.counters["deaths"] == 0 and bed.a.take_events() == []
    # B has no flows of its own: it answers because A wants answers, and learns its own slots too
    assert not bed.path("b").flows() and all(s.alive for s in bed.path("b").slots)
    assert bed.a.counters["probes_sent"] == 20 * SLOTS


def test_a_slot_is_dead_after_n_unanswered_probes_and_its_flows_move_at_once():
    bed = Bed()
    bed.step(5)
    hit = bed.on(1)
    assert hit and len(hit) < SLOTS, "the seed should put slots on both spines"
    bed.dead.add((A, B, 1))
    bed.step(DEAD_AFTER - 1)
    assert all(s.alive for s in bed.path().slots), "dead before N misses"
    bed.step()      # the N-th miss, and the peer's acknowledgement of the other slots that shows it
    p = bed.path()
    assert {s.index for s in p.slots if not s.alive} == {s.index for s in hit}
    assert bed.every_flow_passes()
    for s in hit:                # its flows use a live slot's port meanwhile
        assert s.port != s.own and any(o.alive and o.own == s.port for o in p.slots)
    events = bed.a.take_events()
    assert {(e["event"], e["slot"]) for e in events} == {("dead", s.index) for s in hit}
    assert all(e["peer"] == B and e["encap"] == ENCAP for e in events)
    assert p.moved == sum(s.flows for s in hit) > 0 and bed.a.counters["flows_moved"] == p.moved


def test_a_dead_slot_is_re_rolled_until_a_port_gets_through_then_its_flows_come_back():
    bed = Bed()
    bed.step(5)
    bed.dead.add((A, B, 1))
    bed.step(DEAD_AFTER)
    dead = [s for s in bed.path().slots if not s.alive]
    assert dead
    bed.step(10)
    p = bed.path()
    assert all(s.alive for s in p.slots), "re-rolled ports on the live spine should have been found"
    assert all(spine(A, B, s.own) == 0 and s.port == s.own for s in p.slots)
    assert len({s.own for s in p.slots}) == SLOTS          # distinct ports again: the spread comes back
    events = bed.a.take_events()
    assert {e["slot"] for e in events if e["event"] == "alive"} == {s.index for s in dead}
    assert bed.a.counters["rerolls"] >= len(dead)
    assert all(s.revived == 1 for s in dead) and bed.every_flow_passes()


def test_while_dead_a_slot_probes_a_fresh_port_every_round():
    bed = Bed()
    bed.step(3)
    bed.dead.add((A, B, 0))
    bed.dead.add((A, B, 1))          # nothing gets through from A: the slots cannot revive
    bed.step(6)
    p = bed.path()
    s = next(s for s in p.slots if not s.alive)
    seen = set()
    for _ in range(4):
        bed.step()
        seen.add(s.own)
    assert len(seen) == 4 and not seen & {o.own for o in p.slots if o.alive}


@pytest.mark.parametrize("lost_rounds", [1, DEAD_AFTER - 1])
def test_a_lost_burst_on_every_slot_kills_nothing(lost_rounds):
    bed = Bed()
    bed.step(5)
    bed.step(lost_rounds, drop_a=True)
    bed.step(5)
    assert all(s.alive for s in bed.path().slots)
    assert bed.a.counters["deaths"] == 0


def test_never_every_slot_dead_and_back_when_a_spine_returns():
    bed = Bed()
    bed.step(5)
    bed.dead |= {(A, B, 0), (A, B, 1)}      # A reaches B over no spine; B's answers still arrive
    bed.step(10)
    p = bed.path()
    alive = [s for s in p.slots if s.alive]
    assert len(alive) == 1, "the peer's quiet says every slot is dead, but one must stay"
    assert all(s.port == alive[0].own for s in p.slots)
    bed.dead.discard((A, B, 0))
    bed.step(5)
    assert all(s.alive for s in p.slots) and bed.every_flow_passes()


def test_a_dead_return_path_does_not_make_a_live_forward_port_look_dead():
    # A spine link toward the SENDER's leaf: B's answers over spine 1 are lost, A -> B works.
    bed = Bed()
    bed.step(5)
    b_hit = bed.on(1, side="b")
    assert b_hit
    bed.dead.add((B, A, 1))
    bed.step(20)
    assert all(s.alive for s in bed.path().slots), "A's slots all get through: none may die"
    assert bed.a.counters["deaths"] == 0
    # B's own messages over spine 1 were the ones lost: B repaired its direction from A's answers
    pb = bed.path("b")
    assert bed.b.counters["deaths"] >= len(b_hit)
    assert all(spine(B, A, s.own) == 0 for s in pb.slots if s.alive)


def test_every_answer_carries_the_whole_acknowledgement():
    bed = Bed()
    bed.step(3)
    msgs = bed.b.round(bed.now + 0.05)
    decoded = [P.decode(m[3]) for m in msgs]
    assert len(msgs) == SLOTS and len({m[2] for m in msgs}) == SLOTS    # one per B slot port
    acks = {tuple(d[7]) for d in decoded}
    assert len(acks) == 1 and {i for i, _ in next(iter(acks))} == set(range(SLOTS))


def test_a_peer_that_never_answers_gives_no_evidence():
    bed = Bed(b_runs=False)
    bed.step(30)
    assert all(s.alive for s in bed.path().slots)
    assert bed.a.counters["deaths"] == 0 and bed.path().heard_at is None


def test_answers_to_an_earlier_incarnation_are_ignored():
    bed = Bed()
    bed.step(5)
    old = bed.a
    bed.a = Paths(seed=99)          # A's forwarder restarted: new nonce, round numbers from 1
    bed.slots = [bed.a.acquire(B, ENCAP, h) for h in range(64)]
    assert bed.a.nonce != old.nonce
    bed.step(10)
    assert bed.a.counters["deaths"] == 0 and all(s.alive for s in bed.path().slots)
    assert all(s.answered >= 8 for s in bed.path().slots)


def test_probing_stops_when_the_flows_go_and_the_answers_after_answer_for():
    bed = Bed()
    bed.step(3)
    for s in bed.slots:
        s.flows -= 1                # what the flow table does when the entries go
    assert bed.a.round(bed.now + 0.1) == [] and bed.a.due() is None     # B's answers do not want any
    assert len(bed.b.round(bed.now + 0.2)) == SLOTS         # B answers A's last wanting message a while
    assert bed.b.due() is not None
    assert bed.b.round(bed.now + P.ANSWER_FOR + 0.1) == [] and bed.b.due() is None


def test_messages_round_trip_and_bad_ones_are_counted():
    payload = P.encode("vxlan", P.WANT, 8, 3, 0xABCD, 42, 0x1234, 7, [(0, 41), (5, 40)])
    assert P.is_message("vxlan", payload) and not P.is_message("mplsoudp", payload)
    assert P.decode(payload) == (P.WANT, 8, 3, 0xABCD, 42, 0x1234, 7, [(0, 41), (5, 40)])
    assert len(P.encode(ENCAP, 0, 8, 0, 1, 1, 1, 0, [(i, 1) for i in range(8)])) == 8 + 19 + 5 * 8
    paths = Paths(seed=1)
    paths.receive(B, ENCAP, payload[:20], 0.0)
    paths.receive(B, ENCAP, payload[:-1], 0.0)
    assert paths.counters["malformed"] == 2 and paths.counters["messages_received"] == 0
    for k in (0, 1, 65):
        with pytest.raises(ValueError):
            Paths(k)


# ---------------------------------------------------------------- in the pipeline
def _pair_with_paths():
    cfg = {n: server(n) for n in ("srv1", "srv2")}
    paths = {n: Paths(seed=i + 1) for i, n in enumerate(cfg)}
    pipe = {n: Pipeline(c, paths[n]) for n, c in cfg.items()}
    return pipe, {n: SlowPath(c) for n, c in cfg.items()}, paths


def _send(pipe, slow, frame):
    p = pipe["srv1"]
    assert p.from_vif("tr-red1", frame, 0.0) == []
    out = []
    for req in p.take_punts(0.0):
        out += p.install(slow["srv1"].decide(req, 0.0), 0.0)
    return out


def test_tunnel_entries_send_from_their_slot_port_and_follow_its_repair():
    pipe, slow, paths = _pair_with_paths()
    ports = {}
    for sport in range(1000, 1032):
        (a,) = _send(pipe, slow, udp_frame(VM1, VM2, sport, 53))
        assert isinstance(a, ToTunnel)
        ports[sport] = a.sport
    path = paths["srv1"].paths[(SRV2, ENCAP)]
    assert set(ports.values()) <= {s.own for s in path.slots}
    assert path.flows() == 32
    victim = next(s for s in path.slots if s.flows)
    other = next(s for s in path.slots if s is not victim)
    paths["srv1"]._kill(path, victim, 1.0)         # what the evidence decides, applied to the slot
    paths["srv1"]._remap(path)
    moved = [sp for sp, port in ports.items() if port == victim.own]
    for sp in moved:
        (a,) = pipe["srv1"].from_vif("tr-red1", udp_frame(VM1, VM2, sp, 53, payload=b"next"), 1.0)
        assert a.sport == victim.port != victim.own and a.sport == next(
            o.own for o in path.slots[victim.index + 1:] + path.slots[:victim.index] if o.alive)
    assert other.alive
    # flows of a pair are released with it
    pipe["srv1"].table.remove_pair(next(iter(pipe["srv1"].table.entries.values())))
    assert path.flows() == 31


def test_path_messages_are_taken_before_any_routing_instance():
    pipe, _slow, paths = _pair_with_paths()
    msg = P.encode(ENCAP, P.WANT, 8, 0, 77, 1, 0, 0, [])
    assert pipe["srv2"].from_fabric(SRV1, ENCAP, msg, 0.0) == []
    st = pipe["srv2"].stats()
    assert st["path_messages"] == 1 and st["drops"] == 0 and st["misses"] == 0
    assert paths["srv2"].paths[(SRV1, ENCAP)].peer_nonce == 77       # srv2 now answers srv1
    assert paths["srv2"].due() is not None
    # from a host that is no peer: dropped like any tunnel packet
    assert pipe["srv2"].from_fabric("10.0.9.9", ENCAP, msg, 0.0)[0].reason == "invalid_source"
    plain = Pipeline(server("srv2"))
    assert plain.from_fabric(SRV1, ENCAP, msg, 0.0) == []
    assert plain.stats()["path_messages_ignored"] == 1 and plain.stats()["drops"] == 0


def test_without_paths_or_udp_every_flow_keeps_its_own_entropy_port():
    for encap, with_paths in (("mplsoudp", False), ("mplsogre", True)):
        cfg = server("srv1", encap=encap)
        paths = Paths(seed=1) if with_paths else None
        p = Pipeline(cfg, paths)
        slow = SlowPath(cfg)
        seen = set()
        for sport in range(1000, 1040):
            p.from_vif("tr-red1", udp_frame(VM1, VM2, sport, 53), 0.0)
            for req in p.take_punts(0.0):
                (a,) = p.install(slow.decide(req, 0.0), 0.0)
                seen.add(a.sport)
        assert len(seen) > 30
        if paths is not None:
            assert paths.paths == {} and paths.due() is None      # MPLSoGRE: nothing to probe


def test_a_slot_goes_home_once_its_own_port_is_answered_again_and_the_spread_comes_back():
    bed = Bed()
    bed.step(3)
    homes = [s.own for s in bed.path().slots]
    bed.dead.add((A, B, 1))
    bed.step(10)
    p = bed.path()
    away = [s for s in p.slots if s.own != s.home]
    assert away and all(s.alive for s in p.slots) and all(spine(A, B, s.home) == 1 for s in away)
    sent = bed.a.counters["probes_sent"]
    bed.step()
    assert bed.a.counters["probes_sent"] - sent == SLOTS + len(away)    # each away slot also probes home
    bed.a.take_events()
    bed.dead.clear()
    bed.step(DEAD_AFTER - 1)
    assert [s.own for s in p.slots] != homes, "home after fewer than N answered rounds"
    bed.step(2)
    assert [s.own for s in p.slots] == homes and [s.port for s in p.slots] == homes
    assert {(e["event"], e["port"]) for e in bed.a.take_events()} == {("alive", s.home) for s in away}
    assert bed.a.counters["homecomings"] == len(away)
    sent = bed.a.counters["probes_sent"]
    bed.step()
    assert bed.a.counters["probes_sent"] - sent == SLOTS                # nobody away: no extra probes


def test_a_home_that_answers_once_and_dies_again_is_not_taken():
    bed = Bed()
    bed.step(3)
    bed.dead.add((A, B, 1))
    bed.step(10)
    p = bed.path()
    away = [s for s in p.slots if s.own != s.home]
    assert away
    bed.dead.clear()
    bed.step()              # one answered round of the homes...
    bed.dead.add((A, B, 1))
    bed.step(10)            # ...then dead again: the slots stay where they get through
    assert all(s.own != s.home and s.alive for s in away) and bed.every_flow_passes()
    assert bed.a.counters["homecomings"] == 0
