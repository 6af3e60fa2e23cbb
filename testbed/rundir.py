"""Run directories: one per testbed prefix, holding everything needed to find and remove a run.

Layout of `<run_root>/<prefix>/`: state.json (what runs, where), topology.yaml (the file used),
fabric.json (for the controller), logs/<name>.log, pids/<name>.json. A PID record keeps the
process's create time and command line so cleanup never kills a recycled PID.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import psutil

DEFAULT_RUN_ROOT = "/run/vnet-testbed"


def run_root(override: str | None = None) -> Path:
    return Path(override or os.environ.get("VNET_TESTBED_RUN_ROOT") or DEFAULT_RUN_ROOT)


def write_json(path: Path, data) -> None:
    """Atomically: readers see the old file or the new one, never half of it."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(path)


class RunDir:
    def __init__(self, root: str | Path | None, prefix: str):
        self.root = run_root(str(root) if root else None)
        self.prefix = prefix
        self.path = self.root / prefix
        self.logs = self.path / "logs"
        self.pids = self.path / "pids"
        self.state_file = self.path / "state.json"
        self.fabric_file = self.path / "fabric.json"
        self.topology_file = self.path / "topology.yaml"
        self.control_socket = self.path / "control.sock"
        self.vnc_socket = self.path / "vnc.sock"

    def create(self) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        self.pids.mkdir(parents=True, exist_ok=True)

    def set_aside(self, name: str) -> None:
        """An earlier run's output folder (flow records, mirror pcaps) becomes `<name>.previous`, so a
        new run with this prefix neither mixes its files in nor destroys the last run's."""
        path = self.path / name
        if path.is_dir():
            older = self.path / f"{name}.previous"
            if older.is_dir():
                shutil.rmtree(older)
            path.rename(older)

    def exists(self) -> bool:
        return self.path.is_dir()

    def log(self, name: str) -> Path:
        return self.logs / f"{name}.log"

    # --- state -----------------------------------------------------------------------------
    def read_state(self) -> dict:
        try:
            return json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return {}

    def write_state(self, **fields) -> dict:
        state = self.read_state()
        state.update(fields, updated=time.time())
        write_json(self.state_file, state)
        return state

    # --- PID records ------------------------------------------------------------------------
    def record_pid(self, name: str, pid: int, role: str = "process") -> dict:
        rec = process_record(pid)
        rec.update(name=name, role=role)
        write_json(self.pids / f"{name}.json", rec)
        return rec

    def forget_pid(self, name: str) -> None:
        try:
            (self.pids / f"{name}.json").unlink()
        except FileNotFoundError:
            pass

    def pid_records(self) -> list[dict]:
        out = []
        if self.pids.is_dir():
            for f in sorted(self.pids.glob("*.json")):
                try:
                    out.append(json.loads(f.read_text()))
                except (OSError, ValueError):
                    continue
        return out


def process_record(pid: int) -> dict:
    try:
        p = psutil.Process(pid)
        return {"pid": pid, "create_time": p.create_time(), "cmdline": p.cmdline()}
    except psutil.Error:
        return {"pid": pid, "create_time": None, "cmdline": []}


def live_process(rec: dict) -> psutil.Process | None:
    """The process a record describes, if it still runs (same PID *and* same start time)."""
    try:
        p = psutil.Process(rec["pid"])
        if rec.get("create_time") is not None and abs(p.create_time() - rec["create_time"]) > 0.05:
            return None
        if p.status() == psutil.STATUS_ZOMBIE:
            return None
        return p
    except (psutil.Error, KeyError, TypeError):
        return None


def run_dirs(root: str | Path | None = None) -> list[RunDir]:
    base = run_root(str(root) if root else None)
    if not base.is_dir():
        return []
    return [RunDir(base, d.name) for d in sorted(base.iterdir()) if d.is_dir()]
