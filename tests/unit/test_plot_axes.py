"""Every plot of the project is readable: each axes with data has tick labels in its view on both
axes (a log axis over less than a decade once had none), a label on each axis (with its unit) and
a title. The plots are drawn from the committed results (through experiments.replot, so its
loaders are tested too) and, for the two experiments it cannot re-plot, from small fixtures."""
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from matplotlib.ticker import NullFormatter

from experiments import faults_report, replot
from experiments import flow_pressure_report as frep
from test_flow_experiments import _phase
from testbed import REPO
from testbed.measure import plot as plots
from testbed.measure.loadrun import Connection, Interval

RESULTS = REPO / "results"


def labels_in_view(axis) -> list[str]:
    """The texts of the tick labels a reader sees on ``axis``: ticks inside the view, label shown."""
    lo, hi = sorted(axis.get_view_interval())
    span = (hi - lo) * 1e-9
    return [t.label1.get_text() for t in axis.get_major_ticks() + axis.get_minor_ticks()
            if lo - span <= t.get_loc() <= hi + span and t.label1.get_visible() and t.label1.get_text().strip()]


def unreadable(fig) -> list[str]:
    """What a reader misses in ``fig``, one phrase per axes and axis."""
    fig.canvas.draw()
    out = []
    titled = bool(fig._suptitle and fig._suptitle.get_text())
    for i, ax in enumerate(a for a in fig.axes if a.get_visible() and a.has_data()):
        name = f"axes {i} ({ax.get_title() or 'untitled'})"
        if not (titled or ax.get_title()):
            out.append(f"{name}: no title")
        if not ax.get_ylabel().strip():
            out.append(f"{name}: no y label")
        if len(labels_in_view(ax.yaxis)) < 2:
            out.append(f"{name}: y tick labels {labels_in_view(ax.yaxis)}")
        shared = ax.get_shared_x_axes().get_siblings(ax)
        if min(shared, key=lambda a: a.get_position().y0) is ax:      # the x axis shown (sharex: the lowest)
            if not ax.get_xlabel().strip():
                out.append(f"{name}: no x label")
            if not labels_in_view(ax.xaxis):
                out.append(f"{name}: no x tick labels")
    return out


@pytest.fixture
def figures(monkeypatch):
    """Every figure the plot functions save, checked before it is written."""
    found = []
    save = plots.save

    def checking(fig, path, title):
        fig.suptitle(title)
        found.append((Path(path).name, unreadable(fig)))
        save(fig, path, title)
    monkeypatch.setattr(plots, "save", checking)
    return found


def test_a_log_axis_within_one_decade_reads_plain_numbers_and_an_axis_without_labels_is_caught():
    fig, (bare, fixed) = plots.figure(2)
    for ax in (bare, fixed):
        ax.plot([1311, 7076], [0, 1])      # the old proactive_flow CDF's range: no power of ten inside
        ax.set_ylabel("y (1)")
        ax.set_xlabel("x (us)")
    bare.set_xscale("log")
    bare.xaxis.set_major_formatter(NullFormatter())
    bare.xaxis.set_minor_formatter(NullFormatter())
    plots.log_x(fixed)
    fig.suptitle("t")
    problems = unreadable(fig)
    fixed_labels = labels_in_view(fixed.xaxis)
    plots.plt.close(fig)
    assert problems == ["axes 0 (untitled): no x tick labels"]
    assert fixed_labels == ["2000", "5000"]


REPLOTTED = sorted(d for name in replot.REPLOT for d in (RESULTS / name).glob("2*") if (d / "summary.json").is_file())


@pytest.mark.parametrize("folder", REPLOTTED, ids=lambda d: f"{d.parent.name}/{d.name}")
def test_every_committed_result_replots_readable(folder, figures, tmp_path):
    name, draw = replot.REPLOT[folder.parent.name]
    draw(folder, tmp_path / name)
    assert figures and all(problems == [] for _, problems in figures), figures
    assert (tmp_path / name).stat().st_size > 10000


def test_every_experiment_has_committed_results_to_replot():
    assert {d.parent.name for d in REPLOTTED} == set(replot.REPLOT)


def test_flow_pressure_plots_are_readable(figures, tmp_path):
    p_on, rows = _phase("on")
    used = {"on": {"applied": "topology", "pushed_flow": {}}}
    s = frep.summarize([p_on], rows, {"flows_per_s": 5000.0, "how": "probe"}, "srv1", used)
    frep.plot([p_on], rows, s, tmp_path / "flow_pressure.png")
    assert [n for n, _ in figures] == ["flow_pressure.png", "flow_pressure_time.png"]
    assert all(problems == [] for _, problems in figures), figures


def test_a_faults_timeline_is_readable(figures, tmp_path):
    t0 = 100.0
    phase = {"fault": "spine-link", "target": "leaf2-spine1", "t0": t0, "t_end": t0 + 10,
             "pings": [SimpleNamespace(sent=t0 + i * 0.1, rtt_ms=None if 40 <= i < 43 else 1.0 + i % 3)
                       for i in range(100)],
             "intervals": [Interval(t0 + i * 0.1, t0 + (i + 1) * 0.1, 600_000 + 10_000 * (i % 4)) for i in range(90)],
             "connections": [Connection(i, t0 + i * 0.05, "ok" if i != 80 else "timeout", 1500 + 10 * i if i != 80
                                        else None) for i in range(190)]}
    events = [{"monotonic": t0 + 4, "action": "link-down", "target": "leaf2-spine1"},
              {"monotonic": t0 + 8, "action": "link-up", "target": "leaf2-spine1"}]
    faults_report.plot_timeline(phase, events, tmp_path / "faults_spine-link.png")
    assert figures and figures[0][1] == [], figures


def test_replot_refuses_what_it_cannot_draw(tmp_path, capsys):
    other = tmp_path / "flow_pressure" / "20260101-000000"
    other.mkdir(parents=True)
    (other / "summary.json").write_text(json.dumps({}))
    assert replot.main([str(other)]) == 2
    assert "cannot be re-plotted" in capsys.readouterr().err
