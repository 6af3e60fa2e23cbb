"""Flow records to disk: the thin shell that drains a flow table's records (vrouter/core/flowrecords.py)
and appends them as JSON lines to ``<rundir>/flows/<server>.jsonl`` (a multi-core vrouter's workers:
``<server>.w<cpu>.jsonl``, one file per shard; `testbed flows` reads them all).

Why a shell: the core keeps records in the injected clock and never touches a file. Here each
record gets its server (and worker), wall times (``start``, ``end``: the clock's offset to
``time.time()`` at the drain) and the VM behind its interface (the run's vm-namespaces file).
The holder drains on its periodic tick (Datapath.expire), on demand (introspection ``records``
with flush) and when it stops (the pairs still in the table become ``shutdown`` records).
"""
from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vrouter.core import flowrecords
from vrouter.io import ipc

log = logging.getLogger("flowlog")
FLOWS_DIR = "flows"


def flows_dir(rundir: str | Path) -> Path:
    return Path(rundir) / FLOWS_DIR


def path_for(rundir: str | Path, server: str, worker: int | None = None) -> Path:
    return flows_dir(rundir) / (f"{server}.jsonl" if worker is None else f"{server}.w{worker}.jsonl")


class FlowLog:
    """Where one datapath's records go. Without a path (an offline pipeline) nothing is written."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.path: Path | None = None
        self.rundir: Path | None = None
        self.server: str | None = None
        self.worker: int | None = None
        self.written = self.errors = 0
        self.last_error: str | None = None
        self._source: Any = None         # the recorder drained last (one turned off keeps its last records)
        self._vms: dict[str, str | None] = {}

    def place(self, rundir: str | Path, server: str, worker: int | None = None) -> None:
        self.rundir, self.server, self.worker = Path(rundir), server, worker
        self.path = path_for(rundir, server, worker)

    def drain(self, pipeline: Any, end: str | None = None) -> int:
        """Write what the pipeline's table recorded; ``end``: first end every pair still in it with
        that reason (``shutdown``, ``flush``). Returns the records written."""
        if pipeline is None:
            return 0
        table = pipeline.table
        rec = table.records
        out = []
        if self._source is not None and self._source is not rec:
            out += self._source.drain()          # records were turned off (or the table replaced)
        self._source = rec
        if rec is not None:
            if end is not None:
                rec.end_all(table, end)
            out += rec.drain()
        if not out or self.path is None:
            return 0
        return self._write(out)

    def _write(self, records: list[dict[str, Any]]) -> int:
        offset = time.time() - self.clock()
        extra: dict[str, Any] = {"server": self.server}
        if self.worker is not None:
            extra["worker"] = self.worker
        vms = self._vms
        if any(r["vif"] not in vms for r in records):
            self._load_vms()
            vms = self._vms
            for r in records:          # a VIF unknown now (its VM went): not read again each drain
                vms.setdefault(r["vif"], None)
        lines = []
        for r in records:
            r.update(extra)
            r["start"] = round(r["start"] + offset, 6)
            r["end"] = round(r["end"] + offset, 6)
            r["vm"] = vms.get(r["vif"])
            lines.append(json.dumps(r, separators=(",", ":")))
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)     # type: ignore[union-attr]  # set
            with open(self.path, "a", encoding="utf-8") as fh:      # type: ignore[arg-type]
                fh.write("\n".join(lines) + "\n")
        except OSError as exc:
            self.errors += len(lines)
            if self.last_error is None:
                log.error("flow records not written to %s: %s", self.path, exc)
            self.last_error = str(exc)
            return 0
        self.written += len(lines)
        return len(lines)

    def _load_vms(self) -> None:
        """VIF -> VM from the run's vm-namespaces file (read again when a VIF is new; "fabric": none)."""
        vms: dict[str, str | None] = {"fabric": None}
        if self.rundir is not None:
            try:
                vms.update({tap: e.get("vm") for tap, e in ipc.read_vm_namespaces(self.rundir).items()})
            except ipc.IpcError:
                pass
        self._vms = vms

    def stats(self, pipeline: Any) -> dict[str, Any]:
        rec = pipeline.table.records if pipeline is not None else None
        core = rec.stats() if rec is not None else flowrecords.off_stats()
        return {**core, "written": self.written, "write_errors": self.errors, "last_error": self.last_error,
                "file": str(self.path) if self.path is not None else None}
