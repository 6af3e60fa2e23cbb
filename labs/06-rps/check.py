"""Lab 6's check: the student's apportion() and rebalance() (table.py), alone and inside the real
BucketTable and Rps of vrouter/core (buckets.py, steering.py)."""
import random

from hypothesis import given
from hypothesis import strategies as st

from testbed.labkit import PROPERTY, Wrong
from vrouter.core import buckets as core
from vrouter.core.buckets import BucketTable
from vrouter.core.flowkey import reverse
from vrouter.core.steering import FIELDS, Rps

WHERE_APPORTION = "table.py, apportion() (TODO 1)"
WHERE_REBALANCE = "table.py, rebalance() (TODO 2)"

weights_st = st.dictionaries(st.integers(0, 7), st.one_of(st.integers(1, 10), st.floats(0.1, 10.0)),
                             min_size=1, max_size=6)


def _ratio(weights):
    return ":".join(f"{w:g}" for w in weights.values())


def _apportioned(student, weights, size):
    """The student's counts, checked for what the table needs; Wrong saying what is off."""
    got = student.apportion(dict(weights), size)
    where = f"apportion({dict(weights)}, {size})"
    if not isinstance(got, dict) or set(got) != set(weights):
        raise Wrong(f"{where} returned {got!r}: expected a count for each of the workers {sorted(weights)}",
                    WHERE_APPORTION)
    if any(isinstance(c, bool) or not isinstance(c, int) or c < 0 for c in got.values()):
        raise Wrong(f"{where} returned {got}: counts are whole numbers of buckets >= 0", WHERE_APPORTION)
    if sum(got.values()) != size:
        raise Wrong(f"{where} returned {got}, {sum(got.values())} buckets in all; the table has {size}: "
                    f"every bucket needs an owner", WHERE_APPORTION)
    total = sum(weights.values())
    for w, c in got.items():
        exact = size * weights[w] / total
        if abs(c - exact) >= 1:
            raise Wrong(f"{where}: worker {w} (weight {weights[w]:g} of {total:g}) got {c} buckets; its exact share "
                        f"is {exact:.2f}, so {int(exact)} or {int(exact) + 1}", WHERE_APPORTION)
    return got


def check_apportion_examples(ctx):
    """apportion(): shares in proportion to the weights (2 workers, 2:1:1, 1:1:1, 1:3)"""
    student = ctx.student()
    for weights, size in (({0: 1, 1: 1}, 128), ({0: 2, 1: 1, 2: 1}, 128), ({0: 1, 1: 1, 2: 1}, 128),
                          ({0: 1, 1: 3}, 10)):
        _apportioned(student, weights, size)


def check_apportion_property(ctx):
    """apportion(): any weights and table size: counts sum to the size, each within one of its share"""
    student = ctx.student()

    @PROPERTY
    @given(weights_st, st.integers(1, 512))
    def shares(weights, size):
        _apportioned(student, weights, size)
    shares()


def _minimum(old, quotas):
    """Buckets that must move: what over-quota or removed workers have beyond their new quota."""
    have = {}
    for w in old:
        have[w] = have.get(w, 0) + 1
    return sum(max(0, n - quotas.get(w, 0)) for w, n in have.items())


def _rebalanced(student, old, quotas, what):
    new = student.rebalance(list(old), dict(quotas))
    if not isinstance(new, list) or len(new) != len(old):
        raise Wrong(f"{what}: rebalance() returned {type(new).__name__} of length "
                    f"{len(new) if hasattr(new, '__len__') else '?'}; expected a list of {len(old)} owners, "
                    "one per bucket", WHERE_REBALANCE)
    counts = {w: new.count(w) for w in set(new)}
    want = {w: c for w, c in quotas.items() if c}
    if counts != want:
        raise Wrong(f"{what}: the new table gives {dict(sorted(counts.items()))} buckets; the quotas are "
                    f"{dict(sorted(want.items()))}", WHERE_REBALANCE)
    moved = sum(a != b for a, b in zip(old, new, strict=True))
    least = _minimum(old, quotas)
    if moved != least:
        raise Wrong(f"{what}: your rebalance moved {moved} of {len(old)} buckets; {least} must move (what "
                    "over-quota or removed workers give up). Every other move sends flows to a worker without "
                    "their entries: they punt again", WHERE_REBALANCE)
    return new


def check_rebalance_examples(ctx):
    """rebalance(): adding a worker (2:1:1 -> 2:1:1:1) and removing two (1:1:2:1 -> 1:1) move the minimum"""
    student = ctx.student()
    for before, after in (({0: 2, 1: 1, 2: 1}, {0: 2, 1: 1, 2: 1, 3: 1}), ({0: 1, 1: 1, 2: 2, 3: 1}, {0: 1, 1: 1})):
        old = BucketTable(before, 128).buckets
        _rebalanced(student, old, core.apportion(after, 128),
                    f"{_ratio(before)} -> {_ratio(after)} over 128 buckets")


def check_rebalance_property(ctx):
    """rebalance(): any change of weights: exactly the new quotas, and only the buckets that must move"""
    student = ctx.student()

    @PROPERTY
    @given(weights_st, weights_st, st.integers(1, 256))
    def minimal(before, after, size):
        old = BucketTable(before, size).buckets
        _rebalanced(student, old, core.apportion(after, size),
                    f"workers {_ratio(before)} ({sorted(before)}) -> {_ratio(after)} ({sorted(after)}), {size} buckets")
    minimal()


def _flows(n):
    """Deterministic flow keys of two networks (the same draw every run)."""
    rnd = random.Random(6)
    base = 0xC0A80100
    return [(rnd.choice([100, 200]), rnd.choice([6, 17]), base + rnd.randrange(1, 255), base + rnd.randrange(1, 255),
             rnd.randrange(1024, 65536), rnd.choice([80, 443, 53, 8080])) for _ in range(n)]


def check_real_steering(ctx):
    """the real BucketTable and Rps with your functions: every bucket owned, workers added with few flows moved"""
    student = ctx.student()
    weights = {0: 2, 1: 1, 2: 1}
    table = BucketTable(weights, 128, apportion=student.apportion, rebalance=student.rebalance)
    if len(table.buckets) != 128:
        raise Wrong(f"the real BucketTable({weights}, 128) built with your apportion() has {len(table.buckets)} "
                    "buckets: a flow that hashes beyond them has no worker (the dispatcher would fail on it)",
                    WHERE_APPORTION)
    rps = Rps(FIELDS, table)
    flows = _flows(4000)
    before = [rps.owner(k) for k in flows]
    if any(rps.owner(reverse(k)) != w for k, w in zip(flows, before, strict=True)):
        raise Wrong("a flow and its reverse reached different workers", "vrouter/core/steerhash.py (not yours)")
    moved_buckets = table.update({0: 2, 1: 1, 2: 1, 3: 1})
    least = _minimum(BucketTable(weights, 128).buckets, core.apportion({0: 2, 1: 1, 2: 1, 3: 1}, 128))
    after = [rps.owner(k) for k in flows]
    moved = sum(a != b for a, b in zip(before, after, strict=True))
    if moved_buckets != least:
        raise Wrong(f"adding worker 3 (2:1:1 -> 2:1:1:1) through the real BucketTable.update moved {moved_buckets} "
                    f"buckets ({moved} of {len(flows)} flows now reach another worker and punt again); the minimum "
                    f"is {least} buckets", WHERE_REBALANCE)
