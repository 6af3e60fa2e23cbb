"""Lab 6, solved: a weighted bucket table for receive packet steering.

The same rules as vrouter/core/buckets.py (apportion, rebalance), written as the lab asks.
"""
from vrouter.core.buckets import interleave


def apportion(weights, size):
    """Largest remainder: everyone gets the whole part of their exact share, the buckets left go to
    the largest fractional parts (ties to the lower worker id)."""
    total = sum(weights.values())
    exact = {w: size * wt / total for w, wt in weights.items()}
    counts = {w: int(x) for w, x in exact.items()}
    left = size - sum(counts.values())
    for w in sorted(exact, key=lambda w: (-(exact[w] - counts[w]), w))[:left]:
        counts[w] += 1
    return counts


def rebalance(buckets, quotas):
    """Keep each bucket whose owner is within its quota; hand the others to under-quota workers."""
    kept = dict.fromkeys(quotas, 0)
    free = []
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
