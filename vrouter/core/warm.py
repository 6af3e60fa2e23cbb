"""Keep-warm wake-ups of a vrouter loop (off by default): while its flows are active, it never
sleeps longer than `warm_us`, so the wake-up a packet pays is that of a loop that ran a moment ago.

Why it exists: on this VM, a forwarder that slept 20 ms (a ping's spacing) runs its first tens of
microseconds of Python and system calls 10-20x slower than a warm one, four times per round trip.
With the two forwarders of a ping waking every 2 ms without work (a trial, one testbed, 8 rounds,
the underlay measured with the wake-ups off), the overlay's RTT fell by 114 us (paired median).
Why it is off: in three bench runs alternated with it off, the overlay's RTT did not fall (890 us
median against 881) while the underlay's rose by 90 us (509-530 against 421-443): the wake-ups of
real-time loops take the CPUs the emulated fabric runs on, and the RTT overhead then looks better
only because its baseline got worse (docs/vrouter.md "Latency"). The cost: `1 / warm_us`
wake-ups a second while the last input is less than ACTIVE seconds old (path repair's probes are
input), none when the vrouter is idle or busy. Pure: the shell gives the clock's readings and says
when input came.
"""
from __future__ import annotations

WARM_US = 0.0       # the default: off (the module docstring says why); 2000 was the trial's
ACTIVE = 1.0        # seconds after the last input during which the loop keeps waking


class KeepWarm:
    def __init__(self, warm_us: float = WARM_US, active: float = ACTIVE):
        if warm_us < 0 or active <= 0:
            raise ValueError("warm_us must be >= 0 and active > 0")
        self.interval = warm_us / 1e6
        self.active = active
        self.enabled = warm_us > 0      # read by the loop every round: an attribute, not a property
        self.last_input = float("-inf")
        self.capped = 0                 # waits shortened to the interval (`stats`)

    def timeout(self, timeout: float, now: float) -> float:
        """The wait the loop takes instead of `timeout` (seconds) at `now`."""
        if timeout > self.interval and now - self.last_input < self.active:
            self.capped += 1
            return self.interval
        return timeout

    def stats(self) -> dict[str, float]:
        return {"warm_us": round(self.interval * 1e6), "active_s": self.active, "capped_waits": self.capped}
