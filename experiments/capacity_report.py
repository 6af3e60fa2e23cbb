"""What experiments/capacity.py makes of its sweeps: the offered rates, the figures per offered
rate, saturation and capacity (defined in capacity.py's docstring), the ratios and targets, the
summary and the plot. Pure apart from the plot (tests/unit/test_flow_experiments.py).
"""
from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from testbed.measure import plot as plots
from testbed.measure.loadrun import Connection, latencies, success
from testbed.measure.spread import percentile_low

COMPLETE = 0.99          # a rate is sustained when this share connects within the timeout
RATIO_TARGET = 1.8       # proactive / reactive capacity at every capped budget
LATENCY_AT = (0.5, 0.9)  # latency ratios at these shares of the reactive capacity
MODES = ("proactive", "reactive")
POINT_FIELDS = ["mode", "cap", "offered_rate", "seconds", "offered", "connected", "completed_per_s", "success",
                "latency_us_median", "latency_us_p90", "outcomes", "lag_max_ms", "decisions_client", "decisions_server",
                "decisions_per_connection", "entries_per_install", "peak_entries_client", "peak_entries_server"]
CONNECTION_FIELDS = ["mode", "cap", "offered_rate", "seq", "t_rel", "outcome", "latency_us"]
STYLE = {"proactive": "-", "reactive": "--"}
COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown")


def cap_key(cap: float) -> str:
    return f"{cap:g}"


def sweep_rates(cap: float, rates: Sequence[float] | None, start_fraction: float, start_rate: float, step: float,
                max_rate: float) -> list[float]:
    """The offered rates of one sweep: `rates` if given, else from start_fraction x cap (or
    start_rate without a cap) rising by `step` up to max_rate."""
    if rates:
        return [float(r) for r in rates]
    r = start_fraction * cap if cap else start_rate
    out = []
    while r <= max_rate * (1 + 1e-9):
        out.append(round(r, 1))
        r *= step
    return out


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def point_figures(mode: str, cap: float, rate: float, seconds: float, conns: Sequence[Connection], final: dict,
                  counters: dict[str, dict]) -> dict[str, Any]:
    """One offered rate's row; `counters` per server (client's first) after the run."""
    lat = latencies(conns)
    (_c, cc), (_s, sc) = list(counters.items())[:2]
    decisions = [x["decisions"] for x in (cc, sc)]
    total = sum(d for d in decisions if d is not None) if None not in decisions else None
    ok = sum(c.ok for c in conns)
    return {"mode": mode, "cap": cap, "offered_rate": rate, "seconds": seconds, "offered": len(conns), "connected": ok,
            "completed_per_s": ok / seconds, "success": success(conns),
            "latency_us_median": statistics.median(lat) if lat else None, "latency_us_p90": percentile_low(lat, 0.9),
            "outcomes": json.dumps(final.get("outcomes", {}), sort_keys=True), "lag_max_ms": final.get("lag_max_ms"),
            "decisions_client": decisions[0], "decisions_server": decisions[1],
            "decisions_per_connection": _ratio(total, len(conns)),
            "entries_per_install": _ratio(cc.get("entries_installed"), cc.get("installs")),
            "peak_entries_client": None, "peak_entries_server": None}


def add_occupancy(points: list[dict], samples: Sequence[dict], client_server: str | None = None) -> None:
    """Each point's peak flow entries at the client's and the server's vrouter, from the samples
    taken while it ran (labelled with its mode, cap and rate); the client's server is the first
    server sampled unless given."""
    servers = list(dict.fromkeys(r["server"] for r in samples))
    if not servers:
        return
    client = client_server or servers[0]
    for p in points:
        mine = [r for r in samples if r["label"].get("mode") == p["mode"] and r["label"].get("cap") == p["cap"]
                and r["label"].get("rate") == p["offered_rate"] and r.get("entries") is not None]
        for r in mine:
            key = "peak_entries_client" if r["server"] == client else "peak_entries_server"
            p[key] = max(p[key] or 0, r["entries"])


def saturated(points: Sequence[dict], stop_after: int) -> bool:
    """The last `stop_after` offered rates all had < 99% connected."""
    tail = points[-stop_after:]
    return len(tail) == stop_after and all((p["success"] or 0) < COMPLETE for p in tail)


def capacity(points: Sequence[dict]) -> float | None:
    """The completed rate at saturation: the highest completed connections/s of the sweep."""
    return max((p["completed_per_s"] for p in points), default=None)


def capacity_99(points: Sequence[dict]) -> float | None:
    """The highest offered rate at which >= 99% connected within the timeout."""
    return max((p["offered_rate"] for p in points if (p["success"] or 0) >= COMPLETE), default=None)


def _sweep(points: Sequence[dict], mode: str, cap: float) -> list[dict]:
    return sorted((p for p in points if p["mode"] == mode and p["cap"] == cap), key=lambda p: p["offered_rate"])


def latency_ratio(points: Sequence[dict], cap: float, share: float, reactive_capacity: float | None) -> dict | None:
    """Reactive / proactive median first-reply latency at the offered rate, measured in both modes,
    nearest to `share` of the reactive capacity."""
    if not reactive_capacity:
        return None
    pro = {p["offered_rate"]: p for p in _sweep(points, "proactive", cap)}
    rea = {p["offered_rate"]: p for p in _sweep(points, "reactive", cap)}
    common = [r for r in pro if r in rea and pro[r]["latency_us_median"] and rea[r]["latency_us_median"]]
    if not common:
        return None
    rate = min(common, key=lambda r: abs(r - share * reactive_capacity))
    p, r = pro[rate]["latency_us_median"], rea[rate]["latency_us_median"]
    return {"share": share, "offered_rate": rate, "proactive_us": p, "reactive_us": r, "ratio": r / p}


def _median(xs: list[float | None]) -> float | None:
    vals = [x for x in xs if x is not None]
    return statistics.median(vals) if vals else None


def middle_cap(caps: Sequence[float]) -> float | None:
    capped = sorted(c for c in caps if c)
    return capped[(len(capped) - 1) // 2] if capped else None


def summarize(points: Sequence[dict], caps: Sequence[float], used: dict[str, dict]) -> dict[str, Any]:
    per: dict[str, dict] = {}
    lat: dict[str, dict] = {}
    for cap in caps:
        cp, cr = capacity(_sweep(points, "proactive", cap)), capacity(_sweep(points, "reactive", cap))
        ratio = _ratio(cp, cr)
        per[cap_key(cap)] = {
            "proactive": cp, "reactive": cr, "proactive_99": capacity_99(_sweep(points, "proactive", cap)),
            "reactive_99": capacity_99(_sweep(points, "reactive", cap)), "ratio": ratio,
            "target": f">= {RATIO_TARGET}" if cap else None,
            "met": (ratio is not None and ratio >= RATIO_TARGET) if cap else None}
        lat[cap_key(cap)] = {f"at_{round(100 * s)}pct": latency_ratio(points, cap, s, cr) for s in LATENCY_AT}
    mid = middle_cap(caps)
    head = mid if mid is not None else (0.0 if 0.0 in caps else None)
    occupancy = {}
    for mode in MODES:
        mine = [p for p in points if p["mode"] == mode]
        occupancy[mode] = {"entries_per_install": _median([p["entries_per_install"] for p in mine]),
                           "decisions_per_connection": _median([p["decisions_per_connection"] for p in mine]),
                           "peak_entries_client": max((p["peak_entries_client"] or 0 for p in mine), default=None),
                           "peak_entries_server": max((p["peak_entries_server"] or 0 for p in mine), default=None)}
    headline = lat.get(cap_key(head), {}) if head is not None else {}
    capped = [v for k, v in per.items() if v["met"] is not None]
    return {
        "token_bucket": "setup_rate = decisions per second each vrouter's agent is given, a token bucket in each "
                        "vrouter's forwarder (burst_tokens its size); 0 = no cap",
        "capacity_definition": "completed connections/s at saturation (the sweep's highest); capacity_99: highest "
                               "offered rate with >= 99% connected within the timeout",
        "caps": list(caps), "headline_cap": head,
        "capacity_ratio_proactive_over_reactive": per[cap_key(head)]["ratio"] if head is not None else None,
        "capacity_ratio_uncapped": per[cap_key(0.0)]["ratio"] if 0.0 in caps else None,
        "capacity": per, "latency_ratio_reactive_over_proactive": lat,
        "latency_ratio_at_50pct": (headline.get("at_50pct") or {}).get("ratio"),
        "latency_ratio_at_90pct": (headline.get("at_90pct") or {}).get("ratio"),
        "occupancy": occupancy,
        "settings_applied": {k: u.get("applied") for k, u in used.items()},
        "targets_met": all(v["met"] for v in capped) if capped else None,
    }


def _ms(us: float | None) -> str:
    return f"{us / 1000:.1f} ms" if us is not None else "-"


def point_line(p: dict) -> str:
    cap = f"cap {p['cap']:g}" if p["cap"] else "no cap"
    return (f"{p['mode']} {cap}: {p['offered_rate']:.0f}/s offered -> {p['completed_per_s']:.0f}/s connected "
            f"({100 * (p['success'] or 0):.1f}%), connect median {_ms(p['latency_us_median'])} p90 "
            f"{_ms(p['latency_us_p90'])}, slow-path decisions/connection "
            f"{_num(p['decisions_per_connection'], '{:.2f}')}")


def _num(x: float | None, fmt: str = "{:.0f}") -> str:
    return fmt.format(x) if x is not None else "-"


def summary_lines(summary: dict) -> list[str]:
    lines = [f"{'cap/s':>6} {'proactive':>10} {'reactive':>9} {'ratio':>6}  {'(>=99%: pro':>11} {'rea)':>5}  target"]
    for cap, c in summary["capacity"].items():
        verdict = "-" if c["met"] is None else ("met" if c["met"] else "NOT met")
        lines.append(f"{cap if cap != '0' else 'none':>6} {_num(c['proactive']):>10} {_num(c['reactive']):>9} "
                     f"{_num(c['ratio'], '{:.2f}'):>6}  {_num(c['proactive_99']):>11} {_num(c['reactive_99']):>5}  "
                     f"{c['target'] or 'reported only'}: {verdict}")
    lines.append(f"capacity ratio proactive / reactive at the headline cap ({summary['headline_cap']}): "
                 f"{_num(summary['capacity_ratio_proactive_over_reactive'], '{:.2f}')}; uncapped "
                 f"{_num(summary['capacity_ratio_uncapped'], '{:.2f}')}")
    for cap, by in summary["latency_ratio_reactive_over_proactive"].items():
        for name, v in by.items():
            if v:
                lines.append(f"cap {cap}: median first-reply latency reactive / proactive {name.split('_')[1]} of the "
                             f"reactive capacity ({v['offered_rate']:.0f}/s): {v['ratio']:.2f} "
                             f"({_ms(v['reactive_us'])} vs {_ms(v['proactive_us'])})")
    for mode, o in summary["occupancy"].items():
        lines.append(f"{mode}: {_num(o['entries_per_install'], '{:.2f}')} entries per decision, "
                     f"{_num(o['decisions_per_connection'], '{:.2f}')} slow-path decisions per connection "
                     f"(both vrouters), peak entries {o['peak_entries_client']} / {o['peak_entries_server']}")
    for key, how in summary["settings_applied"].items():
        if how != "topology":
            lines.append(f"note: {key}: flow settings {how} (not through a topology flow: section)")
    return lines


def plot(points: Sequence[dict], summary: dict, path: Path) -> None:
    fig, (ax1, ax2, ax3) = plots.figure(3, width=18)
    caps = summary["caps"]
    rates = [p["offered_rate"] for p in points] or [1.0]
    ax1.plot([min(rates), max(rates)], [min(rates), max(rates)], ":", color="gray", label="all connected")
    for i, cap in enumerate(caps):
        color = COLORS[i % len(COLORS)]
        for mode in MODES:
            sweep = _sweep(points, mode, cap)
            name = f"{mode}, {'cap ' + cap_key(cap) + '/s' if cap else 'no cap'}"
            ax1.plot([p["offered_rate"] for p in sweep], [p["completed_per_s"] for p in sweep], STYLE[mode],
                     marker="o", ms=3, color=color, label=name)
            ok = [p for p in sweep if p["latency_us_median"]]
            ax2.plot([p["offered_rate"] for p in ok], [p["latency_us_median"] / 1000 for p in ok], STYLE[mode],
                     marker="o", ms=3, color=color, label=name)
    for ax in (ax1, ax2):
        plots.log_x(ax)
        plots.log_y(ax)
    plots.label(ax1, "new connections/s offered (log)", "connected within 1 s per s (log)", "completed connections",
                grid="both", legend="below")
    plots.label(ax2, "new connections/s offered (log)", "median connect latency, ms (log)", "first-reply latency",
                grid="both", legend="below")
    groups = [f"cap {cap_key(c)}" if c else "no cap" for c in caps]
    plots.grouped_bars(ax3, groups, [plots.Bars(m, [summary["capacity"][cap_key(c)][m] for c in caps],
                                                "tab:blue" if m == "proactive" else "tab:orange") for m in MODES],
                       fmt="%.0f")
    plots.label(ax3, "slow-path budget (decisions/s per vrouter)", "capacity: connections/s at saturation",
                "capacity per mode")
    plots.save(fig, path, "New connections per second: proactive vs reactive, slow path capped")
