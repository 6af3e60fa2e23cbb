"""What experiments/flow_pressure.py makes of its phases: the figures per phase, the targets, the
summary, the raw rows and the two plots. Pure apart from the plots (tests/unit/test_flow_experiments.py).

Windows of a phase (times on the harness's time.monotonic() line): "baseline" from 0.5 s after the
phase's start (TCP slow start left out) to the flood's start, "flood" from the flood's first datagram
to its last. Victim figures count the connections started in the window; a stall is a run of 100 ms
stream intervals carrying < 5% of the median unflooded interval (testbed/measure/loadrun.py), looked
for from 0.5 s after the phase's start to its end. What the stream keeps is judged on the worst whole
second of the flood (a paced iperf3 catches up after a stall, so the flood's average hides it); the
average over the flood is reported beside it.
"""
from __future__ import annotations

import json
import statistics
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from testbed.measure import plot as plots
from testbed.measure.loadrun import (
    Connection,
    Interval,
    between,
    latencies,
    longest_stall,
    stall_threshold,
    success,
    window_bps,
)
from testbed.measure.spread import percentile_low

SLOW_START = 0.5       # s of each phase the stream's baseline leaves out
KEPT_WINDOW = 1.0      # s: the stream's throughput is compared per window of this length
STALL_TARGET = 0.2     # s
THROUGHPUT_TARGET = 0.5
VICTIM_TARGET = 0.99
RSS_GROWTH_TARGET = 0.10   # over the second half of the highest flood
ROOM = 0.9             # the probe counts installs while the table is below this share of its capacity
STYLE = {"on": ("tab:blue", "-"), "off": ("tab:red", "--"), "default": ("tab:gray", ":")}
SAMPLE_FIELDS = ["setting", "multiple", "t_rel", "server", "entries", "capacity", "held", "unreplied", "installs",
                 "entries_installed", "evictions", "unreplied_aged", "punts_queued", "tokens", "rss_mb",
                 "latency_ms", "error", "owners"]
CONNECTION_FIELDS = ["setting", "multiple", "seq", "t_rel", "window", "outcome", "latency_us"]
INTERVAL_FIELDS = ["setting", "multiple", "start_rel", "end_rel", "bytes", "window"]


def install_rate(samples: Sequence[tuple[float, int, int, int | None]], room: float = ROOM) -> float | None:
    """The slow path's capacity from a probe flood's counter reads (t, installs, entries, capacity):
    the median install rate over the read-to-read windows in which installs rose and the table was
    below `room` of its capacity, the first such window (the flood starting) left out."""
    rates = []
    for (t0, i0, _e0, _c0), (t1, i1, e1, c1) in zip(samples, samples[1:], strict=False):
        if i1 > i0 and t1 > t0 and (not c1 or e1 < room * c1):
            rates.append((i1 - i0) / (t1 - t0))
    rates = rates[1:] if len(rates) > 1 else rates
    return statistics.median(rates) if rates else None


def pct(x: float | None) -> str:
    return f"{100 * x:.1f}%" if x is not None else "-"


def ratio_text(x: float | None) -> str:
    return f"{100 * x:.0f}%" if x is not None else "-"


def window(phase: dict, t: float) -> str:
    if t < phase["flood_t0"]:
        return "baseline"
    return "flood" if t <= phase["flood_t1"] else "tail"


def _peak(rows: Iterable[dict], key: str) -> Any:
    return max((r[key] for r in rows if r.get(key) is not None), default=None)


def rss_growth(rows: Sequence[dict], t_mid: float, t_end: float) -> float | None:
    """Relative RSS growth of the forwarder from the flood's midpoint to its end (peak / at-mid - 1)."""
    at_mid = [r["rss_mb"] for r in rows if r.get("rss_mb") and r["t"] <= t_mid]
    later = [r["rss_mb"] for r in rows if r.get("rss_mb") and t_mid < r["t"] <= t_end]
    if not at_mid or not later:
        return None
    return max(later) / at_mid[-1] - 1


def worst_window_ratio(intervals: Sequence[Interval], t0: float, t1: float, base_bps: float | None,
                       width: float = KEPT_WINDOW) -> float | None:
    """The lowest throughput / base_bps over the whole `width`-s windows from t0 to t1."""
    if not base_bps:
        return None
    ratios = []
    start = t0
    while start + width <= t1 + 1e-6:
        bps = window_bps(intervals, start - 0.05, start + width + 0.05)   # intervals straddle by < 100 ms
        if bps is not None:
            ratios.append(bps / base_bps)
        start += width
    return min(ratios) if ratios else None


def ping_losses_by_window(phase: dict) -> dict[str, int]:
    """The ping's lost packets per window, each placed at its send time (seq n at t0 + (n - 1) x
    interval: ping keeps its pace unless the machine stalls it)."""
    ping = phase["ping"]
    out = dict.fromkeys(("baseline", "flood", "tail"), 0)
    for seq in ping.get("lost_seqs", []):
        out[window(phase, ping["t0"] + (seq - 1) * ping["interval"])] += 1
    return out


def phase_figures(phase: dict, rows: Sequence[dict]) -> dict[str, Any]:
    """The figures of one phase; `rows` are the table samples of the flooder's server during it."""
    t0, f0, f1 = phase["t0"], phase["flood_t0"], phase["flood_t1"]
    conns: list[Connection] = phase["connections"]
    flooded = between(conns, f0, f1)
    lat = latencies(flooded)
    intervals: list[Interval] = phase["intervals"]
    base = [i for i in intervals if i.start >= t0 + SLOW_START - 1e-6 and i.end <= f0 + 1e-6]
    base_bps, flood_bps = window_bps(intervals, t0 + SLOW_START, f0), window_bps(intervals, f0, f1)
    after_start = [i for i in intervals if i.start >= t0 + SLOW_START - 1e-6]
    during = [r for r in rows if t0 <= r["t"] <= phase["t_end"]]
    flood_rows = [r for r in during if f0 <= r["t"] <= f1 + 1.0]
    return {
        "offered_rate": phase["offered_rate"], "flood_sent_rate": phase["flood"]["rate"],
        "flood_sent": phase["flood"]["sent"], "flood_vm_tx_dropped": phase["flood"]["tx_dropped"],
        "victim_connections": len(flooded), "victim_success": success(flooded),
        "victim_success_baseline": success(between(conns, t0, f0)),
        "victim_latency_us_median": statistics.median(lat) if lat else None,
        "victim_latency_us_p90": percentile_low(lat, 0.9),
        "stream_baseline_bps": base_bps, "stream_flood_bps": flood_bps,
        "stream_ratio": worst_window_ratio(intervals, f0, f1, base_bps),
        "stream_ratio_mean": flood_bps / base_bps if base_bps and flood_bps is not None else None,
        "longest_stall_s": round(longest_stall(after_start, stall_threshold(base)), 3),
        "stream_side": phase["stream"].get("side"),
        "ping_sent": phase["ping"]["sent"], "ping_lost": phase["ping"]["lost"],
        **{f"ping_lost_{w}": n for w, n in ping_losses_by_window(phase).items()},
        "flooder_ping_lost": (phase.get("own_ping") or {}).get("lost"),
        # where the phase's packets were dropped (testbed/measure/drops.py): every counter that grew
        "fabric_lost": (phase.get("drops") or {}).get("fabric_lost"),
        "fabric_upcalls": (phase.get("drops") or {}).get("upcalls"),
        "drops": (phase.get("drops") or {}).get("drops"),
        "peak_entries": _peak(flood_rows, "entries"), "peak_held": _peak(flood_rows, "held"),
        "peak_unreplied": _peak(flood_rows, "unreplied"),
        **record_figures(phase.get("records"), during),
        "rss_mb_start": next((r["rss_mb"] for r in during if r.get("rss_mb")), None),
        "rss_mb_peak": _peak(during, "rss_mb"),
        "rss_growth_second_half": rss_growth(during, (f0 + f1) / 2, f1),
    }


def record_figures(records: dict | None, during: Sequence[dict]) -> dict[str, Any]:
    """Evictions and unreplied pairs aged at the flooder's vrouter in the phase, counted from its flow
    records (testbed/measure/flowrecs.py; without records: the sampled peaks), the sampled peaks
    beside them, and the new flows its limits refused per reason."""
    sampled = {"evictions_sampled": _peak(during, "evictions"),
               "unreplied_aged_sampled": _peak(during, "unreplied_aged")}
    if records is None:
        return {"evictions": sampled["evictions_sampled"], "unreplied_aged": sampled["unreplied_aged_sampled"],
                **sampled, "refused": None}
    ended = records["ended"]
    return {"evictions": ended.get("evicted", 0), "unreplied_aged": ended.get("unreplied_timeout", 0), **sampled,
            "refused": records["refused"]}


def _key(multiple: float) -> str:
    return f"{multiple:g}"


def targets(per: dict[str, dict], top: str) -> dict[str, dict]:
    """met / NOT met of the issue's targets over one setting's phases (per multiple key)."""
    figs = list(per.values())
    stall = max((f["longest_stall_s"] for f in figs), default=None)
    ratios = [f["stream_ratio"] for f in figs]
    ratio = min(ratios) if ratios and None not in ratios else None
    lost = sum(f["ping_lost"] for f in figs)
    victim = per[top]["victim_success"] if top in per else None
    growth = per[top]["rss_growth_second_half"] if top in per else None

    def t(value: Any, target: str, met: bool) -> dict:
        return {"value": value, "target": target, "met": bool(met)}
    return {
        "stream_longest_stall": t(stall, f"<= {STALL_TARGET} s", stall is not None and stall <= STALL_TARGET),
        "stream_throughput_kept": t(ratio, f">= {THROUGHPUT_TARGET:.0%} of unflooded in every {KEPT_WINDOW:g} s",
                                    ratio is not None and ratio >= THROUGHPUT_TARGET),
        "same_network_ping_lost": t(lost, "0 packets", lost == 0),
        "victim_success_at_top": t(victim, f">= {VICTIM_TARGET:.0%} at {top}x",
                                   victim is not None and victim >= VICTIM_TARGET),
        "forwarder_memory_bounded": t(growth, f"RSS grows < {RSS_GROWTH_TARGET:.0%} over the second half of the "
                                      f"{top}x flood", growth is not None and growth < RSS_GROWTH_TARGET),
    }


def summarize(phases: Sequence[dict], samples: Sequence[dict], capacity: dict, flooder_server: str,
              used: dict[str, dict]) -> dict[str, Any]:
    """The run's summary; `used` per setting: flow (given), applied, pushed_flow."""
    rows = [r for r in samples if r["server"] == flooder_server]
    per: dict[str, dict[str, dict]] = {}
    for p in phases:
        mine = [r for r in rows if r["label"].get("setting") == p["setting"]]
        per.setdefault(p["setting"], {})[_key(p["multiple"])] = phase_figures(p, mine)
    settings = list(per)
    judged = "on" if "on" in per else (settings[-1] if settings else None)
    top = _key(max(p["multiple"] for p in phases)) if phases else None
    out: dict[str, Any] = {
        "slowpath_capacity_flows_per_s": capacity.get("flows_per_s"), "slowpath_capacity_how": capacity.get("how"),
        "slowpath_capacity_setting": capacity.get("setting"),
        "table_capacity": {s: _peak([r for r in rows if r["label"].get("setting") == s], "capacity") or
                           u.get("pushed_flow", {}).get("capacity") for s, u in used.items()},
        "flooder_server": flooder_server, "top_multiple": top, "targets_setting": judged,
        "settings_applied": {s: u.get("applied") for s, u in used.items()},
        "phases": per,
    }
    if judged is not None and top is not None:
        tg = targets(per[judged], top)
        out["targets"] = tg
        out["victim_success_at_10x"] = tg["victim_success_at_top"]["value"]
        out["established_lost_packets"] = tg["same_network_ping_lost"]["value"]
        out["stream_longest_stall_s"] = tg["stream_longest_stall"]["value"]
        out["stream_min_throughput_ratio"] = tg["stream_throughput_kept"]["value"]
        out["forwarder_rss_growth_second_half"] = tg["forwarder_memory_bounded"]["value"]
        out["memory_bounded"] = tg["forwarder_memory_bounded"]["met"]
        out["targets_met"] = all(v["met"] for v in tg.values())
    return out


def _mb(x: float | None) -> str:
    return f"{x / 1e6:.0f}" if x is not None else "-"


def summary_lines(summary: dict) -> list[str]:
    tables = ", ".join(f"{s} {c}" for s, c in summary["table_capacity"].items())
    lines = [f"slow-path capacity {summary['slowpath_capacity_flows_per_s'] or 0:.0f} flows/s "
             f"({summary['slowpath_capacity_how']}), flow table capacity: {tables}",
             f"{'setting':8} {'x':>4} {'offered/s':>9} {'sent/s':>7} {'VM drop':>8} {'victim ok':>9} "
             f"{'lat med':>8} {'p90':>8} {'stream Mb/s':>12} {'kept':>5} {'stall':>6} {'ping lost (flood)':>17} "
             f"{'peak entries':>12} {'RSS MB':>7}"]
    for setting, per in summary["phases"].items():
        for m, f in per.items():
            lat = f["victim_latency_us_median"]
            p90 = f["victim_latency_us_p90"]
            lines.append(
                f"{setting:8} {m:>4} {f['offered_rate']:>9.0f} {f['flood_sent_rate']:>7.0f} "
                f"{f['flood_vm_tx_dropped']:>8} {pct(f['victim_success']):>9} "
                f"{(f'{lat / 1000:.1f}ms' if lat else '-'):>8} {(f'{p90 / 1000:.1f}ms' if p90 else '-'):>8} "
                f"{_mb(f['stream_baseline_bps']):>5}->{_mb(f['stream_flood_bps']):<6} "
                f"{ratio_text(f['stream_ratio']):>5} "
                f"{f['longest_stall_s']:>5.1f}s {f['ping_lost']:>5}/{f['ping_sent']:<5} ({f['ping_lost_flood']:>4}) "
                f"{f['peak_entries'] if f['peak_entries'] is not None else '-':>12} "
                f"{f['rss_mb_peak'] if f['rss_mb_peak'] is not None else '-':>7}")
    for setting, how in summary["settings_applied"].items():
        if how != "topology":
            lines.append(f"note: {setting}: flow settings {how} (not through a topology flow: section)")
    for name, t in summary.get("targets", {}).items():
        value = t["value"]
        shown = f"{value:.3f}" if isinstance(value, float) else str(value)
        lines.append(f"target ({summary['targets_setting']}) {name}: {shown} ({t['target']}): "
                     f"{'met' if t['met'] else 'NOT met'}")
    return lines


# --- raw rows --------------------------------------------------------------------------------------
def _phase_of(phases: Sequence[dict], label: dict) -> dict | None:
    return next((p for p in phases if p["setting"] == label.get("setting") and p["multiple"] == label.get("multiple")),
                None)


def sample_rows(samples: Sequence[dict], phases: Sequence[dict]) -> list[dict]:
    out = []
    for r in samples:
        p = _phase_of(phases, r["label"])
        row = {k: r.get(k) for k in SAMPLE_FIELDS}
        row.update(setting=r["label"].get("setting", ""), multiple=r["label"].get("multiple") or "",
                   t_rel=round(r["t"] - p["t0"], 3) if p else "",
                   owners=json.dumps(r["owners"]) if r.get("owners") else "")
        out.append(row)
    return out


def connection_rows(phases: Sequence[dict]) -> list[dict]:
    return [{"setting": p["setting"], "multiple": p["multiple"], "seq": c.seq, "t_rel": round(c.t - p["t0"], 4),
             "window": window(p, c.t), "outcome": c.outcome, "latency_us": c.latency_us}
            for p in phases for c in p["connections"]]


def interval_rows(phases: Sequence[dict]) -> list[dict]:
    return [{"setting": p["setting"], "multiple": p["multiple"], "start_rel": round(i.start - p["t0"], 3),
             "end_rel": round(i.end - p["t0"], 3), "bytes": i.bytes, "window": window(p, i.start)}
            for p in phases for i in p["intervals"]]


def phase_record(p: dict) -> dict:
    """A phase for phases.json: the generators' final records and the windows, without the raw lists."""
    return {k: v for k, v in p.items() if k not in ("connections", "intervals")}


# --- plots -----------------------------------------------------------------------------------------
def plot(phases: Sequence[dict], samples: Sequence[dict], summary: dict, path: Path) -> None:
    """flow_pressure.png: the figures against the flood rate; flow_pressure_time.png: over time at
    the highest rate."""
    fig, axes = plots.figure(5, width=24)
    panels = [("victim_success", 100, "victim connections ok within 1 s (%)", "victim success"),
              ("stream_ratio", 100, "stream throughput, worst 1 s of the flood / unflooded (%)",
               "established stream kept"),
              ("longest_stall_s", 1, "longest stream stall (s)", "established stream stalls"),
              ("ping_lost", 1, "same-network ping packets lost", "ping losses (flooder's network)"),
              ("peak_entries", 1, f"peak flow entries at {summary['flooder_server']}", "flow table occupancy")]
    for ax, (key, scale, ylabel, title) in zip(axes, panels, strict=True):
        for setting, per in summary["phases"].items():
            color, style = STYLE.get(setting, ("black", "-"))
            xs = [f["offered_rate"] for f in per.values()]
            ys = [f[key] * scale if f[key] is not None else float("nan") for f in per.values()]
            ax.plot(xs, ys, style, marker="o", color=color, label=f"protections {setting}")
        plots.log_x(ax)
        ax.set_ylim(bottom=0)
        plots.label(ax, "flood: new flows/s offered (log)", ylabel, title)
    plots.save(fig, path, "Flow table under pressure: a VM flooding new flows, its neighbours")
    plot_time(phases, samples, summary, path.with_name(path.stem + "_time.png"))


def plot_time(phases: Sequence[dict], samples: Sequence[dict], summary: dict, path: Path) -> None:
    top = [p for p in phases if _key(p["multiple"]) == summary["top_multiple"]]
    fig, axes = plots.figure(4, width=22)
    for p in top:
        color, style = STYLE.get(p["setting"], ("black", "-"))
        name, t0 = f"protections {p['setting']}", p["t0"]
        rows = [r for r in samples if r["server"] == summary["flooder_server"] and r["label"].get("setting") ==
                p["setting"] and r["label"].get("multiple") == p["multiple"] and r.get("entries") is not None]
        axes[0].plot([r["t"] - t0 for r in rows], [r["entries"] for r in rows], style, color=color, label=name)
        bins: dict[int, list[Connection]] = {}
        for c in p["connections"]:
            bins.setdefault(int((c.t - t0) / 0.5), []).append(c)
        axes[1].plot([b * 0.5 for b in sorted(bins)], [100 * (success(bins[b]) or 0) for b in sorted(bins)], style,
                     color=color, label=name)
        ok = [c for c in p["connections"] if c.ok and c.latency_us]
        axes[2].scatter([c.t - t0 for c in ok], [c.latency_us / 1000 for c in ok], s=6, color=color, label=name)
        axes[3].plot([i.start - t0 for i in p["intervals"]],
                     [8 * i.bytes / (i.end - i.start) / 1e6 if i.end > i.start else 0 for i in p["intervals"]],
                     style, color=color, label=name)
        for ax in axes:
            ax.axvspan(p["flood_t0"] - t0, p["flood_t1"] - t0, color=color, alpha=0.06)
    if any(ax.collections for ax in axes[2:3]):
        plots.log_y(axes[2])
    for ax, (ylabel, title) in zip(axes, [(f"flow entries at {summary['flooder_server']}", "table occupancy"),
                                         ("victim connections ok per 0.5 s (%)", "victim success"),
                                         ("connect latency (ms, log)", "victim first-reply latency"),
                                         ("stream throughput per 100 ms (Mbit/s)", "established stream")],
                                   strict=True):
        plots.label(ax, "time since the phase started (s); shaded: flood", ylabel, title)
    plots.save(fig, path, f"Over time at {summary['top_multiple']}x the slow-path capacity")
