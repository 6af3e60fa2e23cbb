"""Receive coalescing of a vrouter loop: how long to wait after a round that moved bulk data.

A NIC coalesces interrupts so that one wake-up serves many packets; our loop pays ~100 us of CPU per
wake-up (vrouter/core/latency.py, docs/vrouter.md "Latency"), and a bulk TCP flow wakes it for every
few segments. After a round that read bulk data (a TSO super-frame from a VM, TCP data from the
fabric) and left no work behind, the loop sleeps `defer_us` before it polls again, so the kernel
queues more segments for the next read: UDP GRO and our GRO merge more per delivery and the VMs'
TCP acknowledges more per ACK. Rounds without bulk data (a ping, a request, a new flow's first
packets, decisions of the agent) never wait, so an idle overlay's round trip is unchanged; while a
bulk flow runs, other packets on the same vrouter may wait up to `defer_us` (the trade-off in
docs/vrouter.md "Latency"). Pure: the shell reports the round, this says how long to sleep.
"""
from __future__ import annotations

MAX_DEFER_US = 10_000   # --defer-us and `set defer_us` accept 0..this
DEFER_US = 1000.0        # the default: docs/vrouter.md "Latency" has the measurements behind it
BULK_FRAME = 1600       # a VM's frame longer than this is a TSO super-frame: bulk data


class Coalesce:
    __slots__ = ("delay", "enabled", "rounds", "deferred", "slept")

    def __init__(self, defer_us: float):
        if not 0 <= defer_us <= MAX_DEFER_US:
            raise ValueError(f"defer_us must be 0..{MAX_DEFER_US} microseconds, got {defer_us!r}")
        self.delay = defer_us / 1e6
        self.enabled = defer_us > 0     # read by the loop every round: an attribute, not a property
        self.rounds = self.deferred = 0
        self.slept = 0.0

    def after_round(self, bulk: bool, busy: bool) -> float:
        """Seconds to sleep after a round: `bulk` it moved bulk data, `busy` work is left over
        (then the next round starts at once: there is already something to coalesce)."""
        self.rounds += bulk
        if not bulk or busy or not self.enabled:
            return 0.0
        self.deferred += 1
        self.slept += self.delay
        return self.delay

    def stats(self) -> dict[str, float]:
        return {"defer_us": round(self.delay * 1e6), "bulk_rounds": self.rounds, "deferred": self.deferred,
                "deferred_s": round(self.slept, 3)}
