"""Latency priority of a vrouter loop: real-time scheduling while the loop is nearly idle, the normal
scheduler as soon as it is busy.

Why: a ping's round trip crosses four vrouter wake-ups, and under the normal scheduler a woken
forwarder may wait for the CPU behind what runs there (OVS's threads, the other vrouters, the VMs);
SCHED_FIFO runs it at once. But a busy real-time forwarder takes the core from the userspace OVS
that carries its own packets: with both forwarders SCHED_FIFO all the time, bulk TCP fell to half
(1 stream) and a third (8 streams) and CPU per GB tripled (docs/vrouter.md "Latency"). So the loop
is real-time only while idle: a window of WINDOW seconds in which it was busy with packets (epoll
returned -> the round ended, less what the round spent answering introspection or taking a
configuration) more than BUSY_LIMIT of the time drops it to the normal scheduler at once, and it
goes back only after CALM seconds of windows under the limit (a bulk flow's short lulls do not
flip it). Pure: the shell gives the clock's readings and its busy time, and makes the system call.
"""
from __future__ import annotations

RT_PRIORITY = 1         # the default SCHED_FIFO priority of an idle loop (0: never real-time)
MAX_RT_PRIORITY = 99    # Linux's highest SCHED_FIFO priority
WINDOW = 0.01           # seconds over which busy time is summed
BUSY_LIMIT = 0.2        # busier than this share of a window: normal scheduling
CALM = 0.5              # seconds of quiet windows before real-time again

REALTIME, NORMAL = "realtime", "normal"


class Priority:
    def __init__(self, rt_priority: int = RT_PRIORITY, window: float = WINDOW, busy_limit: float = BUSY_LIMIT,
                 calm: float = CALM):
        if not 0 <= rt_priority <= MAX_RT_PRIORITY or window <= 0 or not 0 < busy_limit <= 1 or calm < 0:
            raise ValueError(f"rt_priority must be 0..{MAX_RT_PRIORITY}, window > 0, busy_limit in (0, 1], calm >= 0")
        self.rt_priority = rt_priority
        self.window, self.busy_limit, self.calm = window, busy_limit, calm
        self.mode = NORMAL              # what the process runs as (the shell applies `start`'s answer)
        self.window_start = self.quiet_since = 0.0
        self.busy = 0.0
        self.error: str | None = None   # why real-time could not be had (then the loop stays normal)
        self.to_realtime = self.to_normal = 0       # counters for `stats`
        self.enabled = rt_priority > 0  # read by the loop every round: an attribute, not a property

    def start(self, now: float) -> str | None:
        """The mode to take when the loop starts (an idle loop is real-time), or None: stay normal."""
        self.window_start = self.quiet_since = now
        return self._switch(REALTIME) if self.enabled else None

    def round(self, now: float, busy: float) -> str | None:
        """A loop round ended at `now` after `busy` seconds of work: the mode to switch to, or None."""
        self.busy += busy
        if now - self.window_start < self.window:
            return None
        share = self.busy / (now - self.window_start)
        self.window_start, self.busy = now, 0.0
        if share > self.busy_limit:
            self.quiet_since = now
            return self._switch(NORMAL) if self.mode == REALTIME else None
        if self.mode == NORMAL and self.enabled and now - self.quiet_since >= self.calm:
            return self._switch(REALTIME)
        return None

    def _switch(self, mode: str) -> str:
        self.mode = mode
        if mode == REALTIME:
            self.to_realtime += 1
        else:
            self.to_normal += 1
        return mode

    def failed(self, why: str) -> None:
        """The system refused real-time scheduling: the loop stays normal, `stats` says why."""
        self.error, self.mode, self.enabled = why, NORMAL, False

    def stats(self) -> dict[str, object]:
        return {"rt_priority": self.rt_priority, "mode": self.mode, "busy_limit": self.busy_limit,
                "to_realtime": self.to_realtime, "to_normal": self.to_normal, "error": self.error}
