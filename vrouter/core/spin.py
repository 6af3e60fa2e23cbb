"""The bounded adaptive spin of a vrouter loop: how long to poll for more input before it sleeps.

After a loop round that had input, the shell may poll its fds without blocking for `spin_us` more
microseconds before it waits in epoll: a packet that comes within the window (a VM's answer to what
was just written to it, the next burst of a bulk flow) is read without a wake-up. Spinning takes a
core from whoever else needs it (on 2 cores: the userspace OVS, the other vrouters), so it is
bounded by a budget: at most `budget` of every second is spent spinning; once that is used up the
loop sleeps at once until the next second. Pure: the shell gives the clock's readings.
"""
from __future__ import annotations

WINDOW = 1.0        # seconds over which the budget is counted
SPIN_US = 0.0       # the default spin (off: docs/vrouter.md "Latency" says why)
SPIN_BUDGET = 0.1   # at most this share of each second spinning


class Spin:
    def __init__(self, spin_us: float, budget: float = 0.1):
        if spin_us < 0 or not 0 < budget <= 1:
            raise ValueError("spin_us must be >= 0 and budget in (0, 1]")
        self.spin = spin_us / 1e6
        self.enabled = spin_us > 0      # read by the loop every round: an attribute, not a property
        self.budget = budget
        self.window_start = 0.0
        self.used = 0.0
        self.spins = self.caught = self.exhausted = 0       # counters for `stats`

    def deadline(self, now: float) -> float | None:
        """Until when to spin from `now`, or None (off, or this second's budget is spent)."""
        if not self.spin:
            return None
        if now - self.window_start >= WINDOW:
            self.window_start, self.used = now, 0.0
        left = self.budget * WINDOW - self.used
        if left <= 0:
            self.exhausted += 1
            return None
        self.spins += 1
        return now + min(self.spin, left)

    def spent(self, seconds: float, caught: bool) -> None:
        """A spin took `seconds`; `caught`: input came within it."""
        self.used += seconds
        self.caught += caught

    def stats(self) -> dict[str, float]:
        return {"spin_us": round(self.spin * 1e6), "budget": self.budget, "spins": self.spins,
                "caught": self.caught, "budget_exhausted": self.exhausted}
