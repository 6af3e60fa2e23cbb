"""Path repair next to the failure: the vrouter finds outer source ports whose fabric path is dead and
moves their flows to ports that get through, without waiting for the controller (issue 12).

Why it exists. A leaf sends traffic for a remote leaf through a select group hashed over the outer
5-tuple, UDP source port included (controllers/fabric_logic.py): the tunnel's source port picks the
spine. A leaf's own uplink going down is handled by the switch (the bucket's watch_port); the remote
half (spine -> destination leaf) only by the controller rewriting groups. With the controller down
every flow hashed over that spine is stranded. As in Tungsten Fabric, the vrouter next to the failure
changes the encapsulation to steer around it, then tells the controller (the shell reports the
events this module emits).

What a vrouter can know. It cannot see which spine a port hashes to, nor compute the switch's hash;
it only learns whether packets sent from a port get through. Per-flow entropy ports (one port per
flow) cannot be repaired one by one: knowing that one port is dead says nothing about another. So a
flow's outer source port is the port of one of K *path slots* of its (peer, encapsulation) path:
``slot = inner flow hash % K``, and each slot's port is probed. K = 8 keeps the ECMP spread over the
spines (8 independent hashes per pair of vrouters, the flows spread evenly over them by their hash)
at a probe cost of K small packets per round. Flows of one slot share an outer 4-tuple, so the
kernel's UDP GRO may coalesce datagrams of several inner flows into one read; the core's GRO merges
per inner flow (gro.py) and a single forwarder is unaffected (multi-core receivers: docs/vrouter.md).

Probes and answers (one message kind). Every round (``INTERVAL``) a vrouter sends one message from
each slot port of each active path. A message names its slot and round (``seq``) and carries the
sender's acknowledgement of everything it received from the peer: per peer slot, the highest round
received (``acks``), plus ``quiet``: the sender's rounds since it last heard the peer at all. A path
is active while flow entries use it (``want``, flagged in its messages) or while the peer wants
answers (a message with ``want`` in the last ``ANSWER_FOR`` s): one-way traffic is answered, and
probing ends when the traffic's flows age out. The answer to a probe is therefore not one packet on
one return port but the acknowledgement in every message the answerer sends, from every one of its
own slot ports: a dead return path costs the answerer some of its messages, each of which carries
the whole acknowledgement, so a live forward port never looks dead because of it (a failure toward
the SENDER's leaf: the answerer repairs its own dead slots as the sender's acknowledgements tell it).
An acknowledgement names slot and round, not the port: the prober knows which port each round of a
slot left from (a dead slot's re-rolled ports are kept by round), so it identifies the probe exactly;
each vrouter's random ``nonce`` tags what it sends and what it acknowledges, so answers meant for a
restarted forwarder's earlier self are ignored.
A message is a tunnel packet the receiving vrouter recognises before any routing instance
(``PREFIX``): MPLSoUDP with the reserved label 13 (GAL, RFC 5586) and an associated-channel header of
experimental channel type 0xFFF8; VXLAN with the I and O (OAM, as in VXLAN-GPE) flags and VNI 0,
which no network uses (vrouter/core/schema.py). It is never delivered to a VM.

Deadness from evidence, not timers. Rounds are numbered per path and sent from all slots at once, so
when an acknowledgement says the peer got round H on some slot, every slot whose last acknowledged
round is H - N or older lost its last N probes while another slot's got through: that slot is dead
(``DEAD_AFTER`` = N = 3 consecutive misses). No timeout on our side is involved, so a stalled
forwarder reading a backlog of old answers declares nothing. When no slot gets through, the peer's
``quiet`` says so: quiet >= N means it heard none of our slots for N of its rounds, and every slot not
acknowledged for N of our rounds is dead. Never every slot: if the evidence would leave none alive,
the slot acknowledged most recently stays alive, and one lost burst (every slot missing one round)
is one miss, not three. A path whose peer says nothing at all (down, or a vrouter that does not run
path repair) gives no evidence, and nothing is declared: its flows keep their ports.

Repair (decisions on the slots themselves, no I/O). A dead slot's flows use a live slot's port at
once (the next live slot after it, so several dead slots spread over the live ones): every flow
entry points at its slot (`FlowEntry.path`), and the hit path reads ``slot.port``, so moving a slot's
flows is one assignment whatever their number. Meanwhile the dead slot is probed from a fresh random
port every round (never a port of another slot or one found dead recently); the first such port that
is acknowledged becomes the slot's, and its flows move back to it (the spread over the spines comes
back). A slot away from the port it was made with (its home: dead, or alive on a re-rolled port)
also probes its home every round, as slot K + index, and goes back once home is answered N rounds in
a row: when the link returns the flows hash as before the failure, instead of staying piled on the
spines that survived it. Each vrouter repairs the direction it sends: entries toward a VM have no slot.

MPLSoGRE has no UDP header: its outer 5-tuple is the same for every flow between two vrouters, the
fabric sends all of them over one spine, and nothing the vrouter can change moves them; only the
controller can repair those paths. Such entries get a fixed port (unused on the wire) and no probes.

Costs: nothing per packet beyond the hit path's ``e.path.port`` (one attribute); per round K messages
of 8 + 19 + 5K bytes (67 B for K = 8) per active path and direction, one more per slot away from
home (the acknowledgement then grows by 5 B per such slot); a remap touches the slots only.
Pure: the shell gives the clock (``now`` arguments) and the random seed, sends what ``round`` returns
and hands over what arrives (``receive``); ``take_events`` gives the deaths and revivals to report.
"""
from __future__ import annotations

import struct
from typing import Any, Final, Protocol

from .flowkey import ENTROPY_BASE, ENTROPY_SPAN

SLOTS: Final = 8            # path slots per (peer, encapsulation): K
MIN_SLOTS: Final = 2        # one slot could never die (never every slot): nothing to move its flows to
MAX_SLOTS: Final = 64       # more would cost probes for no spread (slot numbers and home probes fit a byte)
INTERVAL: Final = 0.1       # seconds between two probe rounds
DEAD_AFTER: Final = 3       # consecutive unanswered probes that make a slot dead: N
ANSWER_FOR: Final = 1.0     # seconds a peer's wanting message keeps us answering it
TRIED_KEEP: Final = 16      # rounds of a dead slot's re-rolled ports remembered (an answer names its round)
BAD_KEEP: Final = 64        # ports found dead, not tried again while remembered
PROBED: Final = ("mplsoudp", "vxlan")     # encapsulations with an outer UDP source port to steer

GAL: Final = 13                            # MPLS Generic Associated channel Label (RFC 5586)
ACH_EXPERIMENTAL: Final = 0x1000_FFF8      # associated channel header: version 0, channel type 0xFFF8
VXLAN_I_O: Final = 0x09                    # VXLAN flags I (VNI valid) + O (OAM, VXLAN-GPE's bit)
PREFIX: Final = {"mplsoudp": struct.pack("!II", GAL << 12 | 0x100 | 1, ACH_EXPERIMENTAL),
                 "vxlan": struct.pack("!II", VXLAN_I_O << 24, 0)}
PREFIX_LEN: Final = 8
VERSION: Final = 1
WANT: Final = 0x01          # message flag: the sender has flows on this path and wants answers
# version, flags, sender's slot count, slot of this message, sender's nonce, round, nonce of the peer
# the acknowledgements refer to, quiet (rounds without hearing the peer), number of acknowledgements
_HEAD = struct.Struct("!BBBBIIIHB")
_ACK = struct.Struct("!BI")                # peer's slot, highest round received on it
_MASK64 = (1 << 64) - 1


class PortCell(Protocol):
    """What a tunnel flow entry points at: the outer source port its packets use, and how many
    entries point here (a path is active while its slots have flows)."""
    port: int
    flows: int


class Fixed:
    """A port nothing repairs: per-flow entropy (path repair off) or MPLSoGRE (no UDP port)."""
    __slots__ = ("port", "flows")

    def __init__(self, port: int) -> None:
        self.port = port
        self.flows = 0


class Slot:
    """One path slot. ``port`` is what its flows use (its own port while alive, a live slot's while
    dead); ``own`` is the port it is probed from (re-rolled every round while dead); ``home`` the
    port it was made with, probed as well (as slot K + index) while the slot is away from it."""
    __slots__ = ("index", "port", "flows", "own", "home", "alive", "since", "acked", "tried", "hsince",
                 "hfirst", "hacked", "sent", "answered", "died", "revived")

    def __init__(self, index: int, port: int) -> None:
        self.index = index
        self.port = self.own = self.home = port
        self.flows = 0
        self.alive = True
        self.since = 1              # first round probed from ``own`` (acknowledgements before it are not its)
        self.acked = 0              # highest round acknowledged on ``own``
        self.tried: dict[int, int] = {}     # dead: round -> the port it was probed from
        self.hsince = self.hfirst = self.hacked = 0     # away: first round home was probed, acknowledged, last
        self.sent = self.answered = self.died = self.revived = 0

    def away(self) -> bool:
        return not self.alive or self.own != self.home

    def base(self) -> int:
        """The last round that counts as answered for the current port."""
        return self.acked if self.acked >= self.since else self.since - 1


class Path:
    """One (peer, encapsulation): our slots and round counter, and what we heard from the peer."""
    __slots__ = ("peer", "encap", "slots", "seq", "quiet", "heard", "heard_at", "peer_nonce", "rx",
                 "peer_want_until", "horizon", "bad", "received", "moved")

    def __init__(self, peer: str, encap: str, slots: list[Slot]) -> None:
        self.peer, self.encap, self.slots = peer, encap, slots
        self.seq = 0                # our last round on this path
        self.quiet = 0              # our rounds since we last heard the peer
        self.heard = False          # heard the peer since our last round
        self.heard_at: float | None = None
        self.peer_nonce = 0
        self.rx: dict[int, int] = {}        # the peer's slot -> highest round received (our acknowledgements)
        self.peer_want_until = float("-inf")
        self.horizon = 0            # highest round of ours the peer acknowledged on any slot
        self.bad: dict[int, None] = {}      # ports found dead, oldest first
        self.received = self.moved = 0

    def flows(self) -> int:
        return sum(s.flows for s in self.slots)


Message = tuple[int, int, int, int, int, int, int, list[tuple[int, int]]]


def is_message(encap: str, payload: Any) -> bool:
    """A path message (not a packet for a routing instance)? ``payload``: the tunnel payload."""
    prefix = PREFIX.get(encap)
    return prefix is not None and payload[:PREFIX_LEN] == prefix


def encode(encap: str, flags: int, slots: int, slot: int, nonce: int, seq: int, echo: int, quiet: int,
           acks: list[tuple[int, int]] | bytes, n_acks: int | None = None) -> bytes:
    """A path message's tunnel payload (what goes after the outer UDP header). ``acks``: (peer slot,
    highest round) pairs, or their encoding by ``encode_acks`` with their number in ``n_acks``."""
    if not isinstance(acks, bytes):
        n_acks, acks = len(acks), encode_acks(acks)
    return PREFIX[encap] + _HEAD.pack(VERSION, flags, slots, slot, nonce, seq, echo, min(quiet, 0xFFFF),
                                      n_acks or 0) + acks


def encode_acks(acks: list[tuple[int, int]]) -> bytes:
    return b"".join(_ACK.pack(i, a) for i, a in acks)


def decode(payload: Any) -> Message | None:
    """(flags, slots, slot, nonce, seq, echo, quiet, acks) of a path message, None if malformed."""
    off = PREFIX_LEN + _HEAD.size
    if len(payload) < off:
        return None
    version, flags, slots, slot, nonce, seq, echo, quiet, n = _HEAD.unpack_from(payload, PREFIX_LEN)
    if version != VERSION or not nonce or len(payload) < off + n * _ACK.size:
        return None
    acks = [_ACK.unpack_from(payload, off + i * _ACK.size) for i in range(n)]
    return flags, slots, slot, nonce, seq, echo, quiet, acks


class Paths:
    """The path slots of one vrouter and their health (see the module docstring)."""

    def __init__(self, slots: int = SLOTS, seed: int = 0, *, interval: float = INTERVAL,
                 dead_after: int = DEAD_AFTER, answer_for: float = ANSWER_FOR) -> None:
        if not MIN_SLOTS <= slots <= MAX_SLOTS:
            raise ValueError(f"path slots must be {MIN_SLOTS}..{MAX_SLOTS}, got {slots}")
        self.k = slots
        self.interval, self.dead_after, self.answer_for = interval, dead_after, answer_for
        self._rng = seed & _MASK64
        self.nonce = self._random() & 0xFFFFFFFF or 1   # this incarnation: answers to an earlier one are not ours
        self.paths: dict[tuple[str, str], Path] = {}
        self._events: list[dict[str, Any]] = []
        self._event_n = 0
        self._last_round = float("-inf")
        self._busy = False          # some path may be active: rounds are due
        self.counters = dict.fromkeys(("rounds", "probes_sent", "messages_received", "malformed", "deaths",
                                       "revivals", "homecomings", "rerolls", "flows_moved", "events"), 0)

    # ---------------------------------------------------------------- flows
    def acquire(self, peer: str, encap: str, flow_hash: int) -> Slot:
        """The slot a new tunnel entry uses (its ``flows`` counts it; the flow table releases it)."""
        s = self._path(peer, encap).slots[flow_hash % self.k]
        s.flows += 1
        self._busy = True
        return s

    def peek(self, peer: str, encap: str, flow_hash: int) -> Slot | None:
        """The slot ``acquire`` would give, without taking it (None: no path to the peer yet, whose
        slots get random ports when its first flow is set up); for ``testbed trace``."""
        p = self.paths.get((peer, encap))
        return p.slots[flow_hash % self.k] if p is not None else None

    def _path(self, peer: str, encap: str) -> Path:
        p = self.paths.get((peer, encap))
        if p is None:
            p = self.paths[(peer, encap)] = Path(peer, encap, [])
            for i in range(self.k):
                p.slots.append(Slot(i, self._fresh(p)))
        return p

    def _random(self) -> int:
        """splitmix64: the shell seeds it (the core imports no `random`), tests give a fixed seed."""
        self._rng = z = (self._rng + 0x9E3779B97F4A7C15) & _MASK64
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
        return z ^ (z >> 31)

    def _fresh(self, p: Path) -> int:
        """A random entropy port that no slot of ``p`` probes and that was not found dead lately."""
        taken = {s.own for s in p.slots}
        while True:
            port = ENTROPY_BASE + self._random() % ENTROPY_SPAN
            if port not in taken and port not in p.bad:
                return port

    # ---------------------------------------------------------------- rounds
    def due(self) -> float | None:
        """When the next round is due (the shell's clock), None while no path is active."""
        return self._last_round + self.interval if self._busy else None

    def round(self, now: float) -> list[tuple[str, str, int, bytes]]:
        """One probe round: (peer, encap, source port, payload) to send, one per slot of every active path."""
        self._last_round = now
        out: list[tuple[str, str, int, bytes]] = []
        busy = False
        for p in self.paths.values():
            wants = p.flows() > 0
            if not wants and now >= p.peer_want_until:
                continue
            busy = True
            p.seq = seq = p.seq + 1
            p.quiet = 0 if p.heard else p.quiet + 1
            p.heard = False
            acks = sorted(p.rx.items())
            tail, n = encode_acks(acks), len(acks)      # the same acknowledgement in every slot's message
            flags = WANT if wants else 0
            for s in p.slots:
                if not s.alive:
                    self._reroll(p, s, seq)
                s.sent += 1
                out.append((p.peer, p.encap, s.own, encode(p.encap, flags, self.k, s.index, self.nonce, seq,
                                                           p.peer_nonce, p.quiet, tail, n)))
                if s.away():        # is the way home back? (the peer acknowledges it like any slot)
                    s.hsince = s.hsince or seq
                    out.append((p.peer, p.encap, s.home, encode(p.encap, flags, self.k, self.k + s.index,
                                                                 self.nonce, seq, p.peer_nonce, p.quiet, tail, n)))
        self._busy = busy
        self.counters["rounds"] += 1
        self.counters["probes_sent"] += len(out)
        return out

    def _reroll(self, p: Path, s: Slot, seq: int) -> None:
        s.own = self._fresh(p)
        s.tried[seq] = s.own
        if len(s.tried) > TRIED_KEEP:
            del s.tried[min(s.tried)]
        self.counters["rerolls"] += 1

    # ---------------------------------------------------------------- messages in
    def receive(self, peer: str, encap: str, payload: Any, now: float) -> None:
        """A path message from ``peer`` (a fabric peer: the pipeline checked the outer source)."""
        m = decode(payload)
        if m is None:
            self.counters["malformed"] += 1
            return
        flags, _slots, slot, nonce, seq, echo, quiet, acks = m
        self.counters["messages_received"] += 1
        p = self._path(peer, encap)
        if nonce != p.peer_nonce:       # the peer (re)started: what we acknowledged was its earlier self's
            p.peer_nonce, p.rx = nonce, {}
        if seq > p.rx.get(slot, 0):
            p.rx[slot] = seq
        p.heard, p.heard_at = True, now
        p.received += 1
        if flags & WANT:
            p.peer_want_until = now + self.answer_for
            self._busy = True
        if echo == self.nonce:
            self._evidence(p, acks, quiet, now)

    def _evidence(self, p: Path, acks: list[tuple[int, int]], quiet: int, now: float) -> None:
        """What the peer's acknowledgements say about our slots: answered, revived, home again, dead."""
        changed = self._acknowledged(p, acks, now)
        changed = self._homecomings(p, now) or changed
        if self._deaths(p, quiet, now) or changed:
            self._remap(p)

    def _acknowledged(self, p: Path, acks: list[tuple[int, int]], now: float) -> bool:
        """Answered rounds per slot and home port; a dead slot whose re-rolled port got through revives."""
        horizon, revived = p.horizon, False
        k = self.k
        for i, a in acks:
            if i >= 2 * k or a > p.seq:
                continue            # not a slot or a round of ours
            horizon = max(horizon, a)
            if i >= k:              # a slot's home port, probed while the slot is away
                s = p.slots[i - k]
                if s.hsince and a >= s.hsince and a > s.hacked:
                    s.hfirst = s.hfirst or a
                    s.hacked = a
                continue
            s = p.slots[i]
            if s.alive:
                base = s.base()
                if a > base:
                    s.answered += a - base
                    s.acked = a
            elif a in s.tried:
                self._revive(p, s, s.tried[a], now)
                revived = True
        p.horizon = horizon
        return revived

    def _homecomings(self, p: Path, now: float) -> bool:
        """Slots away from home go back once their home port is answered for N rounds in a row."""
        n, moved = self.dead_after, False
        for s in p.slots:
            if s.hfirst:
                if p.horizon - s.hacked >= n:
                    s.hfirst = 0                    # home lost again: its good streak starts over
                elif s.hacked - s.hfirst >= n - 1:
                    self._home(p, s, now)
                    moved = True
        return moved

    def _deaths(self, p: Path, quiet: int, now: float) -> bool:
        """Slots N rounds behind the horizon, or all unanswered while the peer heard nothing: dead."""
        n = self.dead_after
        dying = [s for s in p.slots if s.alive and
                 (p.horizon - s.base() >= n or (quiet >= n and p.seq - s.base() >= n))]
        if not dying:
            return False
        if len(dying) == sum(s.alive for s in p.slots):
            # Never every slot: the one answered last stays (it may be all there is).
            dying.remove(max(dying, key=lambda s: (s.base(), -s.index)))
        for s in dying:
            self._kill(p, s, now)
        return bool(dying)

    def _kill(self, p: Path, s: Slot, now: float) -> None:
        s.alive = False
        s.died += 1
        s.tried = {}
        p.bad[s.own] = None
        if len(p.bad) > BAD_KEEP:
            del p.bad[next(iter(p.bad))]
        self.counters["deaths"] += 1
        self._event("dead", p, s, s.own, now)

    def _revive(self, p: Path, s: Slot, port: int, now: float) -> None:
        s.alive = True
        s.revived += 1
        s.answered += 1
        s.own = port
        s.since, s.acked = p.seq + 1, p.seq     # the rounds in between went from other ports
        s.tried = {}
        self.counters["revivals"] += 1
        self._event("alive", p, s, port, now)

    def _home(self, p: Path, s: Slot, now: float) -> None:
        if not s.alive:
            s.revived += 1
            self.counters["revivals"] += 1
        s.alive = True
        s.own = s.home
        s.since, s.acked = p.seq + 1, p.seq
        s.tried = {}
        s.hsince = s.hfirst = s.hacked = 0
        p.bad.pop(s.home, None)
        self.counters["homecomings"] += 1
        self._event("alive", p, s, s.home, now)

    def _remap(self, p: Path) -> None:
        """Every slot's flows onto a port that gets through: their own if alive, else the next live slot's."""
        k = len(p.slots)
        for s in p.slots:
            target = s.own if s.alive else next(
                (p.slots[(s.index + d) % k].own for d in range(1, k) if p.slots[(s.index + d) % k].alive), s.port)
            if target != s.port:
                s.port = target
                p.moved += s.flows
                self.counters["flows_moved"] += s.flows

    def _event(self, kind: str, p: Path, s: Slot, port: int, now: float) -> None:
        self._event_n += 1
        self.counters["events"] += 1
        self._events.append({"id": f"{self.nonce:08x}-{self._event_n}", "event": kind, "peer": p.peer,
                             "encap": p.encap, "slot": s.index, "port": port, "flows": s.flows, "at": now})

    def take_events(self) -> list[dict[str, Any]]:
        """Deaths and revivals since the last call, oldest first (the shell reports them to the VNC)."""
        out, self._events = self._events, []
        return out

    # ---------------------------------------------------------------- introspection
    def describe(self, now: float) -> dict[str, Any]:
        """Plain values: every path with its slots (the `paths` introspection op)."""
        out = []
        for p in self.paths.values():
            wants = p.flows() > 0
            out.append({
                "peer": p.peer, "encap": p.encap, "wants": wants, "answering": now < p.peer_want_until,
                "round": p.seq, "quiet": p.quiet, "acknowledged": p.horizon,
                "heard_ago": None if p.heard_at is None else round(now - p.heard_at, 3),
                "messages_received": p.received, "flows": p.flows(), "flows_moved": p.moved,
                "dead": sum(not s.alive for s in p.slots),
                "slots": [{"slot": s.index, "port": s.port, "probe_port": s.own, "home": s.home, "alive": s.alive,
                           "flows": s.flows,
                           "sent": s.sent, "answered": s.answered,
                           "misses": max(0, p.horizon - s.base()) if s.alive else None,
                           "died": s.died, "revived": s.revived} for s in p.slots]})
        out.sort(key=lambda d: (d["peer"], d["encap"]))
        return {"slots": self.k, "interval": self.interval, "dead_after": self.dead_after,
                "nonce": f"{self.nonce:08x}", **self.counters, "paths": out}
