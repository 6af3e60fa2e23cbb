"""Weighted bucket tables: hash -> bucket -> worker.

A worker gets a number of buckets proportional to its weight (a stronger or less busy core gets
more), only workers inside the CPU set get any, and a rebuild moves as few buckets as possible.

Moving a bucket moves every flow that hashes into it to another worker. Two things follow, and the
shells must accept both when they rebuild a table: packets of a moved flow still queued for the old
worker can be overtaken by newer ones on the new worker (reordering, only at the moment of the
move), and the flow's entries stay in the old worker's shard, so the new owner misses, punts once
and installs its own pair (the old one ages out). Hence the minimal movement: only the buckets an
over-quota worker must give up change owner, i.e. ``sum(max(0, old - new))`` over the workers.
"""
import math
from collections.abc import Callable, Iterable, Mapping, Sequence

Apportion = Callable[[Mapping[int, float], int], dict[int, int]]
Rebalance = Callable[[Sequence[int], Mapping[int, int]], list[int]]


def apportion(weights: Mapping[int, float], size: int) -> dict[int, int]:
    """Largest-remainder apportionment of ``size`` buckets; ties go to the lower worker id."""
    total = sum(weights.values())
    exact = {w: size * wt / total for w, wt in weights.items()}
    counts = {w: int(x) for w, x in exact.items()}
    left = size - sum(counts.values())
    for w in sorted(exact, key=lambda w: (-(exact[w] - counts[w]), w))[:left]:
        counts[w] += 1
    return counts


def interleave(counts: Mapping[int, int]) -> list[int]:
    """Smooth weighted round robin: each worker appears counts[w] times, spread out, deterministic."""
    total = sum(counts.values())
    current = dict.fromkeys(counts, 0)
    order: list[int] = []
    for _ in range(total):
        for w in counts:
            current[w] += counts[w]
        pick = max(sorted(current), key=lambda w: current[w])
        current[pick] -= total
        order.append(pick)
    return order


def rebalance(buckets: Sequence[int], quotas: Mapping[int, int]) -> list[int]:
    """The new owner of every bucket: each worker ends with its quota, and only the buckets that
    over-quota (or removed) workers must give up change owner, handed to the under-quota ones."""
    kept = dict.fromkeys(quotas, 0)
    free: list[int] = []
    for i, owner in enumerate(buckets):
        if kept.get(owner, 0) < quotas.get(owner, 0):
            kept[owner] += 1
        else:
            free.append(i)
    deficit = {w: quotas[w] - kept[w] for w in quotas if quotas[w] > kept[w]}
    out = list(buckets)
    for i, w in zip(free, interleave(deficit) if deficit else [], strict=False):
        out[i] = w
    return out


def _check_worker(w: object) -> None:
    if isinstance(w, bool) or not isinstance(w, int) or w < 0:
        raise ValueError(f"worker id {w!r} is not a CPU number (an int >= 0)")


class BucketTable:
    """``lookup(hash) -> worker``; ``buckets`` is a list the steering objects read in place.

    ``apportion`` and ``rebalance`` are this module's unless given (lab 6 gives the student's: they
    run when the table is built or updated, never per packet)."""

    def __init__(self, weights: Mapping[int, float], size: int = 128, cpus: Iterable[int] | None = None,
                 apportion: Apportion = apportion, rebalance: Rebalance = rebalance) -> None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"buckets: {size!r} is not a positive number of buckets")
        self.size = size
        self._apportion, self._rebalance = apportion, rebalance
        self.buckets: list[int] = []
        self.weights: dict[int, float] = {}
        self.cpus: frozenset[int] | None = None
        self.update(weights, cpus)

    def _effective(self, weights: Mapping[int, float], cpus: frozenset[int] | None) -> dict[int, float]:
        if not isinstance(weights, dict) or not weights:
            raise ValueError("weights: expected a non-empty mapping of worker id -> weight")
        for w, wt in weights.items():
            _check_worker(w)
            if isinstance(wt, bool) or not isinstance(wt, (int, float)) or not math.isfinite(wt) or wt < 0:
                raise ValueError(f"weights: worker {w} has weight {wt!r}, expected a number >= 0")
        if cpus is not None:
            for c in cpus:
                _check_worker(c)
        allowed = {w: wt for w, wt in weights.items() if wt > 0 and (cpus is None or w in cpus)}
        if not allowed:
            raise ValueError("weights: no worker with a positive weight inside the CPU set")
        return allowed

    def update(self, weights: Mapping[int, float] | None = None, cpus: Iterable[int] | None = None) -> int:
        """Rebuild for new weights and/or CPU set (None keeps the current one); returns buckets moved."""
        weights = self.weights if weights is None else dict(weights)
        cpus = self.cpus if cpus is None else frozenset(cpus)
        quotas = self._apportion(self._effective(weights, cpus), self.size)
        self.weights, self.cpus = weights, cpus
        if not self.buckets:
            self.buckets[:] = interleave(quotas)
            return 0
        new = self._rebalance(self.buckets, quotas)
        moved = sum(a != b for a, b in zip(self.buckets, new, strict=True))
        self.buckets[:] = new
        return moved

    def lookup(self, h: int) -> int:
        return self.buckets[h % self.size]

    def counts(self) -> dict[int, int]:
        out: dict[int, int] = {}
        for w in self.buckets:
            out[w] = out.get(w, 0) + 1
        return out

    @property
    def workers(self) -> list[int]:
        return sorted(set(self.buckets))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, BucketTable) and self.buckets == other.buckets

    __hash__ = None  # type: ignore[assignment]  # unhashable: equality compares the mutable buckets
