"""The flow records of one stretch of a run, for the experiments: how many pairs ended and why, and how
many new flows the limits refused, counted exactly from the records the vrouters wrote
(vrouter/core/flowrecords.py) instead of sampling counters (a peak of samples misses what happened
after the last one). Needs ``flow: {records: true}`` in the testbed's topology.

    window = RecordWindow(tb.path, ["srv1"])
    mark = window.mark()            # after the tables were reset
    ...                             # the measured stretch
    counts(window.since(mark), "srv1")   -> {"ended": {"evicted": 120, ...}, "refused": {"vm_flow_limit": 57929}}
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from testbed.flowrecs import REFUSED, read
from vrouter.io import introspect
from vrouter.io.flowlog import flows_dir


class RecordWindow:
    """The records files of a run, read from a mark on (byte offsets per file, after a flush)."""

    def __init__(self, rundir: str | Path, servers: list[str]) -> None:
        self.rundir, self.servers = Path(rundir), servers

    def _flush(self) -> None:
        for s in self.servers:      # what each vrouter holds goes to its file now (else: the next tick)
            introspect.query(self.rundir, s, "records", flush=True)

    def mark(self) -> dict[str, int]:
        self._flush()
        return {p.name: p.stat().st_size for p in flows_dir(self.rundir).glob("*.jsonl")}

    def since(self, mark: dict[str, int]) -> list[dict[str, Any]]:
        """Every record written after ``mark`` (half a line of a killed vrouter is skipped)."""
        self._flush()
        return read(self.rundir, mark)[0]


def counts(records: Iterable[dict[str, Any]], server: str | None = None) -> dict[str, dict[str, int]]:
    """Pairs ended per end reason and flows refused per reason (of one server, or all)."""
    ended: Counter[str] = Counter()
    refused: Counter[str] = Counter()
    for r in records:
        if server is not None and r.get("server") != server:
            continue
        if r.get("kind") == REFUSED:
            refused[r["reason"]] += int(r.get("flows", 0))
        else:
            ended[r["end_reason"]] += 1
    return {"ended": dict(sorted(ended.items())), "refused": dict(sorted(refused.items()))}
