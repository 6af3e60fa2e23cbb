"""The flow table's occupancy over time, as the flow experiments sample it: every `interval` s per
server the forwarder's introspection op "pressure" (entries, held, unreplied, installs, evictions,
queued punts, tokens: vrouter/io/introspect.py) and the forwarder's RSS.

`table_row` is pure (a reply in, one flat row out); `Sampler` is the thread that asks.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import psutil

from vrouter.io import introspect

INTERVAL = 0.5  # s
FIELDS = ("entries", "capacity", "held", "unreplied", "installs", "entries_installed", "evictions",
          "unreplied_aged", "punts_queued", "tokens")


def table_row(reply: dict[str, Any]) -> dict[str, Any]:
    """One flat row of FIELDS from a "pressure" reply."""
    return {k: reply.get(k) for k in FIELDS}


def owner_rows(reply: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per owner (VM interface) of a "pressure" reply: entries, limit, held, blocked, refused."""
    return {name: dict(v) for name, v in (reply.get("vms") or {}).items()}


def rss_mb(pids: Iterable[int]) -> float | None:
    """Resident memory of the processes (and their children), MB; None if none is alive."""
    total, alive = 0, False
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            procs = [proc, *proc.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
        for p in procs:
            try:
                total += p.memory_info().rss
                alive = True
            except psutil.NoSuchProcess:
                pass
    return round(total / 2**20, 2) if alive else None


class TableReader:
    """Asks one vrouter for "pressure" (introspect.IntrospectError if it does not answer)."""

    def __init__(self, rundir: Path, server: str) -> None:
        self.rundir, self.server = rundir, server

    def read(self, timeout: float = 2.0) -> dict[str, Any]:
        reply = introspect.query(self.rundir, self.server, "pressure", timeout=timeout)
        return {**table_row(reply), "owners": owner_rows(reply), "uptime": reply.get("uptime")}


class Sampler:
    """A thread sampling the servers' tables and forwarder RSS every `interval` s into `rows`
    ({"t": time.monotonic(), "server", "label", "rss_mb", FIELDS..., "owners", "uptime"}); `label`
    is whatever `label()` returns at the sample (the experiment's phase). A vrouter that does not
    answer in time gives a row with "error" instead of the figures."""

    def __init__(self, rundir: Path, servers: list[str], pids: Callable[[str], list[int]],
                 label: Callable[[], str] = lambda: "", interval: float = INTERVAL) -> None:
        self.readers = [TableReader(rundir, s) for s in servers]
        self.pids, self.label, self.interval = pids, label, interval
        self.rows: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Sampler:
        self._thread.start()
        return self

    def sample(self) -> None:
        for r in self.readers:
            t = time.monotonic()
            row: dict[str, Any] = {"t": t, "server": r.server, "label": self.label(),
                                   "rss_mb": rss_mb(self.pids(r.server))}
            try:
                row.update(r.read())
            except introspect.IntrospectError as exc:
                row["error"] = str(exc)
            row["latency_ms"] = round((time.monotonic() - t) * 1000, 1)
            self.rows.append(row)

    def _run(self) -> None:
        next_t = time.monotonic()
        while not self._stop.is_set():
            self.sample()
            next_t += self.interval
            self._stop.wait(max(0.0, next_t - time.monotonic()))

    def stop(self) -> list[dict[str, Any]]:
        self._stop.set()
        self._thread.join(10)
        return self.rows
