"""Receive coalescing of a vrouter loop: how long to wait after a round that moved bulk data.

A NIC coalesces interrupts so that one wake-up serves many packets; our loop pays ~100 us of CPU per
wake-up (vrouter/core/latency.py, docs/vrouter.md "Latency"), and a bulk TCP flow wakes it for every
few segments. After a round that read bulk data (a TSO super-frame from a VM, TCP data from the
fabric) and left no work behind, the loop sleeps `defer_us` before it polls again, so the kernel
queues more segments for the next read: UDP GRO and our GRO merge more per delivery and the VMs'
TCP acknowledges more per ACK. Rounds without bulk data (a ping, a request, a new flow's first
packets, decisions of the agent) never wait, so an idle overlay's round trip is unchanged; while a
bulk flow runs, other packets on the same vrouter may wait up to `defer_us` (the trade-off in
docs/vrouter.md "Latency").

On a contended CPU a sleep lasts longer than asked: others run meanwhile, the fabric socket's queue
fills and overflows, and TCP backs off (measured here with a loaded machine: 8 streams merged 3
segments instead of 10). So the shell reports how long each sleep really took, and a sleep that
overshot by more than the delay itself suspends coalescing for `BACKOFF` seconds.
Pure: the shell reports the round and the clock's readings, this says how long to sleep.
"""
from __future__ import annotations

MAX_DEFER_US = 10_000   # --defer-us and `set defer_us` accept 0..this
DEFER_US = 0.0          # the default, off: docs/vrouter.md "Latency" has the measurements behind it
BULK_FRAME = 1600       # a VM's frame longer than this is a TSO super-frame: bulk data
BACKOFF = 1.0           # seconds without coalescing after a sleep that overshot


class Coalesce:
    __slots__ = ("delay", "enabled", "rounds", "deferred", "slept", "until", "overshoots")

    def __init__(self, defer_us: float):
        if not 0 <= defer_us <= MAX_DEFER_US:
            raise ValueError(f"defer_us must be 0..{MAX_DEFER_US} microseconds, got {defer_us!r}")
        self.delay = defer_us / 1e6
        self.enabled = defer_us > 0     # read by the loop every round: an attribute, not a property
        self.rounds = self.deferred = self.overshoots = 0
        self.slept = self.until = 0.0

    def after_round(self, bulk: bool, busy: bool, now: float) -> float:
        """Seconds to sleep after a round: `bulk` it moved bulk data, `busy` work is left over
        (then the next round starts at once: there is already something to coalesce)."""
        self.rounds += bulk
        if not bulk or busy or not self.enabled or now < self.until:
            return 0.0
        self.deferred += 1
        return self.delay

    def woke(self, asked: float, took: float, now: float) -> None:
        """A sleep of `asked` seconds took `took`: past twice the delay the CPU is contended."""
        self.slept += took
        if took > 2 * asked:
            self.overshoots += 1
            self.until = now + BACKOFF

    def stats(self) -> dict[str, float]:
        return {"defer_us": round(self.delay * 1e6), "bulk_rounds": self.rounds, "deferred": self.deferred,
                "deferred_s": round(self.slept, 3), "overshoots": self.overshoots}
