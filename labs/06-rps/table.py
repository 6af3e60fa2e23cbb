"""Lab 6: a weighted bucket table for receive packet steering.

A multi-core vrouter steers each packet to a worker by a symmetric hash of its flow: hash ->
bucket -> worker (vrouter/core/buckets.py, BucketTable). You write the two rules that decide who
owns the buckets; `testbed lab check 6` builds the real BucketTable and Rps with them.

Workers are named by the CPU they are pinned to (0, 1, 2, ...). Weights are positive numbers: a
worker of weight 2 should get twice the buckets of a worker of weight 1.
"""
from vrouter.core.buckets import interleave  # noqa: F401  # for TODO 2: spread counts over a list


def apportion(weights, size):
    """How many of ``size`` buckets each worker gets: {worker: count}, in proportion to the weights."""
    # TODO 1: in proportion to the weights, every count an int, the counts summing to exactly
    # ``size``, and no worker more than one bucket away from its exact share size * weight / total.
    # The starter shares the buckets equally, as if every weight were the same.
    share = size // len(weights)
    return {w: share for w in weights}


def rebalance(buckets, quotas):
    """The new owner of every bucket (a list as long as ``buckets``) when the quotas change.

    buckets  the current owners: buckets[i] is the worker of bucket i
    quotas   {worker: count} from apportion(): the new table must have exactly these counts
    """
    # TODO 2: every bucket that changes owner moves its flows to another worker (they punt again
    # there, and their old entries linger). Keep every bucket whose owner is still within its new
    # quota; move only what over-quota or removed workers must give up.
    # The starter builds a new table from scratch: right counts, but most buckets move.
    return interleave(quotas)
