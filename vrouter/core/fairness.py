"""Per-worker load counting and Jain's fairness index (for the steering experiment)."""
from collections.abc import Iterable


def jain_index(values: Iterable[float]) -> float:
    """(sum x)^2 / (n * sum x^2): 1.0 when all equal, 1/n when one takes everything.

    An all-zero load is perfectly even (1.0); an empty list has no fairness and raises ValueError.
    """
    values = list(values)
    if not values:
        raise ValueError("jain_index: no values")
    if any(v < 0 for v in values):
        raise ValueError("jain_index: loads are never negative")
    squares = sum(v * v for v in values)
    if squares == 0:
        return 1.0
    return sum(values) ** 2 / (len(values) * squares)


class LoadCounter:
    """Packets and bytes per worker; workers that got nothing still count (as zero) in the index."""

    def __init__(self, workers: Iterable[int]) -> None:
        self.packets = dict.fromkeys(workers, 0)
        self.bytes = dict.fromkeys(workers, 0)
        if not self.packets:
            raise ValueError("LoadCounter: no workers")

    def add(self, worker: int, nbytes: int = 0) -> None:
        if worker not in self.packets:
            raise ValueError(f"LoadCounter: unknown worker {worker!r}")
        self.packets[worker] += 1
        self.bytes[worker] += nbytes

    def shares(self) -> dict[int, float]:
        total = sum(self.packets.values())
        return {w: (n / total if total else 0.0) for w, n in self.packets.items()}

    def fairness(self, by: str = "packets") -> float:
        if by not in ("packets", "bytes"):
            raise ValueError(f"fairness: by {by!r} is not packets or bytes")
        return jain_index(getattr(self, by).values())
