"""How every experiment ends: one results directory per run, `results/<experiment>/<timestamp>/`,
holding raw.csv (one row per measurement), summary.json (the figures reported), config.yaml (the
exact configuration, to rerun it), provenance.json (testbed/measure/provenance.py) and
<experiment>.png. The directory is named for the run's start; runs never overwrite each other.
"""
from __future__ import annotations

import csv
import json
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from testbed import REPO
from testbed.measure import provenance

RESULTS = REPO / "results"
FILES = ("raw.csv", "summary.json", "config.yaml", "provenance.json")


def make_unique_dir(outroot: Path, started: float) -> Path:
    """Create and return `outroot/<YYYYmmdd-HHMMSS>` of `started`, or -2, -3 ... if a run of the same
    second made it first."""
    base = time.strftime("%Y%m%d-%H%M%S", time.localtime(started))
    outroot.mkdir(parents=True, exist_ok=True)
    n = 1
    while True:
        path = outroot / (base if n == 1 else f"{base}-{n}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            n += 1


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=1) + "\n")


def write_csv(path: Path, fields: Sequence[str], rows: Iterable[Mapping[str, Any]]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(fields))
        w.writeheader()
        w.writerows(rows)


class ResultsRun:
    """One run's results: created when the run starts (its start time and provenance are taken then,
    before the code or the machine can change), written once at the end with `write`."""

    def __init__(self, experiment: str, outroot: Path | None = None, argv: list[str] | None = None) -> None:
        self.experiment = experiment
        self.outroot = Path(outroot) if outroot is not None else RESULTS / experiment
        self.started = time.time()
        self.provenance = provenance.collect(self.started, argv)

    def write(self, fields: Sequence[str], rows: Iterable[Mapping[str, Any]], summary: Mapping[str, Any],
              config: Mapping[str, Any], plot: Callable[[Path], None] | None = None) -> Path:
        """Write the run's files (the data before the plot, so a failing plot loses no data);
        returns the directory."""
        outdir = make_unique_dir(self.outroot, self.started)
        write_csv(outdir / "raw.csv", fields, rows)
        write_json(outdir / "summary.json", summary)
        (outdir / "config.yaml").write_text(yaml.safe_dump(dict(config), sort_keys=False))
        write_json(outdir / "provenance.json", dict(self.provenance, finished=time.strftime("%Y-%m-%dT%H:%M:%S%z")))
        if plot is not None:
            plot(outdir / f"{self.experiment}.png")
        return outdir
