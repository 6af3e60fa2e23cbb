"""Draw an experiment's plots again from a results folder, without running anything.

    python -m experiments.replot results/proactive_flow/20261202-152342 [DIR ...]

A results folder keeps its raw data (raw.csv, summary.json, points.json) beside its PNGs, so a
change to how a plot is drawn (axes, ticks, legends) can be applied to every committed run: this
reads that data back, calls the experiment's own plot function and overwrites the PNG. The
experiment is the folder's parent's name (results/<experiment>/<timestamp>/).

What can be drawn again: proactive_flow, capacity, gro, rps, rps_gro and the faults overview
(faults.png). Not the faults timelines (faults_<fault>.png) nor flow_pressure's two plots: they
draw the pings, stream intervals and connections as the run held them in memory, which the
folder keeps only in part (connections.csv, intervals.csv without the phases' joins); a re-plot
of those needs the run again.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from experiments import capacity_report, faults_report, gro, proactive_flow, rps, rps_gro


def _value(text: str) -> Any:
    """A CSV cell as the run wrote it: '' -> None, numbers -> int / float, the rest stays text."""
    if text == "":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def rows(folder: Path) -> list[dict[str, Any]]:
    with (folder / "raw.csv").open(newline="") as f:
        return [{k: _value(v) for k, v in row.items()} for row in csv.DictReader(f)]


def _json(folder: Path, name: str) -> Any:
    return json.loads((folder / name).read_text())


# experiment -> (the PNG it draws, how to draw it from the folder)
REPLOT: dict[str, tuple[str, Callable[[Path, Path], None]]] = {
    "proactive_flow": ("proactive_flow.png",
                       lambda d, png: proactive_flow.plot(rows(d), _json(d, "summary.json"), png)),
    "capacity": ("capacity.png",
                 lambda d, png: capacity_report.plot(_json(d, "points.json"), _json(d, "summary.json"), png)),
    "gro": ("gro.png", lambda d, png: gro.plot(rows(d), _json(d, "summary.json"), png)),
    "rps_gro": ("rps_gro.png", lambda d, png: rps_gro.plot(rows(d), _json(d, "summary.json"), png)),
    "rps": ("rps.png", lambda d, png: rps.plot(_json(d, "summary.json")["runs"], _json(d, "summary.json")["servers"],
                                                png)),
    "faults": ("faults.png", lambda d, png: faults_report.plot_overview(_json(d, "summary.json"), png)),
}


def replot(folder: Path) -> Path:
    """Draw ``folder``'s plot again in place; ValueError for a folder it cannot re-plot."""
    experiment = folder.resolve().parent.name
    if experiment not in REPLOT:
        raise ValueError(f"{folder}: results of {experiment!r} cannot be re-plotted "
                         f"(re-plotted: {', '.join(REPLOT)}; see python -m experiments.replot --help)")
    name, draw = REPLOT[experiment]
    if not (folder / "summary.json").is_file():
        raise ValueError(f"{folder}: no summary.json (is it a results folder, results/<experiment>/<timestamp>/?)")
    draw(folder, folder / name)
    return folder / name


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m experiments.replot", description=__doc__.split("\n")[0],
                                 epilog="re-plotted: " + ", ".join(REPLOT))
    ap.add_argument("folders", nargs="+", type=Path, metavar="DIR", help="results/<experiment>/<timestamp>/")
    args = ap.parse_args(argv)
    code = 0
    for folder in args.folders:
        try:
            print(f"{replot(folder)}: drawn again")
        except (ValueError, OSError, KeyError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            code = 2
    return code


if __name__ == "__main__":
    sys.exit(main())
