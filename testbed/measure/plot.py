"""The plots' common set-up, so every results PNG reads the same way: the Agg backend (no display
on a testbed host), axes labelled with units, a title, a legend wherever several series share an
axes, tight layout, one resolution. Also the two shapes the experiments draw: grouped bars with each
run as a dot, and latency CDFs.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import matplotlib
import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

# pyplot picks its backend at the first figure, so switching here (after the import) still holds.
matplotlib.use("Agg")

DPI = 110
HEIGHT = 4.5  # inches
OFF_ON = {"off": "tab:gray", "on": "tab:blue"}  # a feature switched off vs on, e.g. GRO/GSO


def figure(ncols: int = 1, width: float | None = None, height: float = HEIGHT) -> tuple[Figure, list[Axes]]:
    """A figure with `ncols` axes side by side (default width: 5.5 inches per axes)."""
    fig, axes = plt.subplots(1, ncols, figsize=(width or 5.5 * ncols, height), squeeze=False)
    return fig, list(axes[0])


def label(ax: Axes, xlabel: str, ylabel: str, title: str | None = None,
          grid: Literal["x", "y", "both"] = "y", legend: str = "best") -> None:
    """Name both axes (with units), title the axes, draw a light grid (`grid`: "x", "y" or "both"),
    and a legend (at `legend`, a matplotlib location, or "below": under the axes, where it covers
    no data) if two or more series carry a label."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(axis=grid, alpha=0.3)
    handles, _labels = ax.get_legend_handles_labels()
    if len(handles) >= 2 and legend == "below":
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.25), ncol=min(4, len(handles)), fontsize=8)
    elif len(handles) >= 2:
        ax.legend(loc=legend)


def save(fig: Figure, path: Path, title: str) -> None:
    """Title the figure, lay it out tightly, write the PNG and free the figure (the PNG's bounding
    box takes in a legend placed below its axes)."""
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)


@dataclass
class Bars:
    """One series of `grouped_bars`: a height per group, optionally the runs behind each height."""

    label: str
    heights: Sequence[float | None]
    color: str | None = None
    points: Sequence[Sequence[float]] = field(default_factory=list)


def grouped_bars(ax: Axes, groups: Sequence[str], series: Sequence[Bars], fmt: str | None = "%.2f") -> None:
    """The series' bars side by side in each group, each bar labelled with its height (`fmt`;
    None: unlabelled) and each run of `points` drawn as a black dot on it."""
    width = 0.8 / len(series)
    for j, s in enumerate(series):
        xs = [i + (j - (len(series) - 1) / 2) * width for i in range(len(groups))]
        bars = ax.bar(xs, [h or 0 for h in s.heights], width, color=s.color, label=s.label)
        if fmt:
            ax.bar_label(bars, fmt=fmt)
        for x, pts in zip(xs, s.points, strict=False):  # points may be absent
            ax.scatter([x] * len(pts), pts, color="black", s=10, zorder=3)
    ax.set_xticks(range(len(groups)), groups)


def cdf(ax: Axes, values: Sequence[float], label: str, style: str = "-", color: str | None = None) -> None:
    """The empirical CDF of `values` as a step line."""
    xs = sorted(values)
    if xs:
        ax.step(xs, [(i + 1) / len(xs) for i in range(len(xs))], style, where="post", color=color, label=label)


def log_x(ax: Axes) -> None:
    """A logarithmic x axis with plain numbers at 1, 2 and 5 of every decade (1000, 2000, 5000),
    so that even a range within one decade has labelled ticks."""
    ax.set_xscale("log")
    _plain_log(ax.xaxis)


def log_y(ax: Axes) -> None:
    """The same for the y axis (a latency over one or two decades reads 2, 5, 10, 20, 50)."""
    ax.set_yscale("log")
    _plain_log(ax.yaxis)


def _plain_log(axis) -> None:
    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(ScalarFormatter())
    axis.set_minor_formatter(NullFormatter())
