"""The admission queue in front of the slow path: per-owner FIFOs of punt requests, served round
robin, paced by a token bucket.

Why: the agent is a bounded resource (one process, and in Tungsten Fabric a fixed number of flow
threads behind a global held-flow limit and a token bucket). Without a queue one VM that opens new
flows as fast as it can fills the agent's channel and everybody's first packets wait behind its
punts; with one FIFO per owner (the VM interface a flow is charged to, docs/vrouter-core.md) taken
in turn, a quiet VM's punt goes out within one round whatever the flooder queued.

- ``push(owner, item, now)`` appends to the owner's FIFO.
- ``take(now, limit, alive)`` returns up to ``limit`` items, one per owner in turn, each costing a
  token when ``rate`` > 0 (refilled at ``rate`` per second up to ``burst``; 0 = no cap). Items that
  ``alive(item)`` says are obsolete are skipped for free. Items older than ``stale_after`` seconds
  are returned apart (the caller drops them and their held entries).
- The clock is the caller's (``now``, seconds); nothing here reads time.

Pure (a core module): no I/O.
"""
from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class SetupQueue(Generic[T]):
    def __init__(self, rate: float = 0.0, burst: int = 256, stale_after: float = 2.0) -> None:
        self._queues: dict[str, deque[tuple[float, T]]] = {}
        self._ring: deque[str] = deque()       # owners with a non-empty FIFO, in serving order
        self._size = 0
        self._since = 0.0       # no request waiting was queued before this (a bound, not exact)
        self.rate, self.burst, self.stale_after = rate, burst, stale_after
        self._tokens = float(burst)
        self._last: float | None = None

    def configure(self, rate: float, burst: int, stale_after: float) -> None:
        self.rate, self.burst, self.stale_after = rate, burst, stale_after
        self._tokens = min(self._tokens, float(burst))

    def __len__(self) -> int:
        return self._size

    def push(self, owner: str, item: T, now: float) -> None:
        q = self._queues.get(owner)
        if q is None:
            q = self._queues[owner] = deque()
            self._ring.append(owner)
        if not self._size:
            self._since = now
        q.append((now, item))
        self._size += 1

    def tokens(self, now: float) -> float | None:
        """Tokens in the bucket at ``now`` (None: no cap)."""
        if self.rate <= 0:
            return None
        if self._last is None or now <= self._last:
            return self._tokens
        return min(float(self.burst), self._tokens + (now - self._last) * self.rate)

    def wait(self, now: float) -> float | None:
        """Seconds until `take` could hand something out (0: now); None while nothing waits. The
        shell sleeps no longer than this, so a rate-capped queue drains without new input."""
        if not self._size:
            return None
        tokens = self.tokens(now)
        return 0.0 if tokens is None or tokens >= 1.0 else (1.0 - tokens) / self.rate

    def take(self, now: float, limit: int | None = None,
             alive: Callable[[T], bool] | None = None) -> tuple[list[T], list[T]]:
        """(items to send now, stale items); see the module docstring."""
        capped = self.rate > 0
        if capped:
            self._tokens = self.tokens(now) or 0.0
        if self._last is None or now > self._last:
            self._last = now
        if not self._size:
            return [], []
        stale = self._purge(now) if self._since < now - self.stale_after else []
        out: list[T] = []
        want = self._size if limit is None else limit
        ring, queues = self._ring, self._queues
        while ring and len(out) < want and (not capped or self._tokens >= 1.0):
            owner = ring.popleft()
            q = queues[owner]
            item = q.popleft()[1]
            self._size -= 1
            if q:
                ring.append(owner)
            else:
                del queues[owner]
            if alive is not None and not alive(item):
                continue
            out.append(item)
            if capped:
                self._tokens -= 1.0
        return out, stale

    def _purge(self, now: float) -> list[T]:
        """Items queued longer than ``stale_after``: each FIFO is in arrival order, so they are at
        the heads (one look per waiting owner)."""
        stale: list[T] = []
        cutoff = now - self.stale_after
        for owner in [o for o in self._ring if self._queues[o][0][0] < cutoff]:
            q = self._queues[owner]
            while q and q[0][0] < cutoff:
                stale.append(q.popleft()[1])
                self._size -= 1
            if not q:
                del self._queues[owner]
                self._ring.remove(owner)
        self._since = min((self._queues[o][0][0] for o in self._ring), default=now)
        return stale
