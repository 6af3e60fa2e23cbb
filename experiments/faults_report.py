"""The faults experiment's figures, targets, table and plots (pure, apart from writing the plots).

A phase is one fault under the traffic mix: a ping every 10 ms, an established TCP stream and 20 new
connections/s, from `t0` to `t_end` on the harness's clock (time.monotonic()), the fault injected at
`fault_t` and undone at `undo_t` (taken from the fault log, testbed/faults.py, which records both
clocks). What is judged:
- outage: the longest time the ping went unanswered, from the send time of the last reply before a
  run of losses to the send time of the first reply after it, less one interval (so one lost ping
  at 10 ms is an outage of ~10 ms, and no loss is 0);
- recovery: from the fault to the end of the last outage that began after it (0 if none did);
- connections failed (not connected within 1 s) after the fault, and the span from the first to the
  last of them: "new connections fail for at most 1 s";
- the stream: whether it lived to the end, its longest stall and its throughput while the fault held
  against the phase's own unfaulted start.
"""
from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from testbed.measure import plot as plots
from testbed.measure.loadrun import Connection, Interval, between, longest_stall, stall_threshold, window_bps

OUTAGE_TARGET_S = 1.0
CONNECT_FAIL_SPAN_TARGET_S = 1.0


@dataclass(frozen=True)
class Ping:
    seq: int
    sent: float              # send time on the harness's clock
    rtt_ms: float | None     # None: never answered


def ping_timeline(replies: Sequence[tuple[int, float, float]], sent: int, interval: float,
                  clock_offset: float) -> list[Ping]:
    """Every ping of a run, answered or not. `replies` are (seq, receive time.time(), rtt ms) from
    ping -D; `clock_offset` = time.time() - time.monotonic() when the run started, to put them on the
    harness's clock. A lost ping's send time is interpolated between its answered neighbours (or
    extrapolated by `interval` from the nearest one)."""
    sent_at = {seq: wall - rtt / 1000.0 - clock_offset for seq, wall, rtt in replies}
    rtt = {seq: r for seq, _w, r in replies}
    known = sorted(sent_at)
    out = []
    for seq in range(1, sent + 1):
        if seq in sent_at:
            out.append(Ping(seq, sent_at[seq], rtt[seq]))
            continue
        before = max((k for k in known if k < seq), default=None)
        after = min((k for k in known if k > seq), default=None)
        if before is not None and after is not None:
            t = sent_at[before] + (sent_at[after] - sent_at[before]) * (seq - before) / (after - before)
        elif before is not None:
            t = sent_at[before] + (seq - before) * interval
        elif after is not None:
            t = sent_at[after] - (after - seq) * interval
        else:
            t = float("nan")
        out.append(Ping(seq, t, None))
    return out


def outages(pings: Sequence[Ping], interval: float) -> list[tuple[float, float, int]]:
    """Runs of unanswered pings: (start, end, lost) with start = the send time of the last answered
    ping before the run (or the first lost one's), end = the first answered one's after it (or the
    last lost one's + interval)."""
    runs: list[tuple[float, float, int]] = []
    i = 0
    while i < len(pings):
        if pings[i].rtt_ms is not None:
            i += 1
            continue
        j = i
        while j < len(pings) and pings[j].rtt_ms is None:
            j += 1
        start = pings[i - 1].sent if i > 0 else pings[i].sent
        end = pings[j].sent if j < len(pings) else pings[j - 1].sent + interval
        runs.append((start, end, j - i))
        i = j
    return runs


def outage_s(run: tuple[float, float, int], interval: float) -> float:
    start, end, _lost = run
    return max(0.0, end - start - interval)


def phase_figures(phase: dict[str, Any]) -> dict[str, Any]:
    """The figures of one fault phase (module docstring)."""
    interval = phase["ping_interval"]
    pings: list[Ping] = phase["pings"]
    runs = outages(pings, interval)
    fault_t, undo_t, t0, t_end = phase["fault_t"], phase.get("undo_t"), phase["t0"], phase["t_end"]
    longest = max(runs, key=lambda r: outage_s(r, interval), default=None)
    after_fault = [r for r in runs if r[1] >= fault_t]
    recovery = max((r[1] - fault_t for r in after_fault), default=0.0)
    conns: list[Connection] = phase["connections"]
    failed = [c for c in between(conns, fault_t, t_end + 1.0) if not c.ok]
    failed_before = [c for c in between(conns, t0, fault_t) if not c.ok]
    intervals: list[Interval] = phase["intervals"]
    base_bps = window_bps(intervals, t0 + 1.0, fault_t)
    held_until = undo_t if undo_t is not None else min(t_end, fault_t + phase.get("hold", 0.0))
    fault_bps = window_bps(intervals, fault_t, held_until) if held_until > fault_t else None
    base = [i for i in intervals if t0 + 1.0 <= i.start < fault_t]
    after = [i for i in intervals if i.start >= fault_t - 1e-6]
    stream = phase.get("stream") or {}
    return {
        "fault": phase["fault"], "target": phase.get("target"),
        "ping_sent": len(pings), "ping_lost": sum(p.rtt_ms is None for p in pings),
        "ping_lost_after_fault": sum(r[2] for r in after_fault),
        "outage_ms": round(outage_s(longest, interval) * 1000, 1) if longest else 0.0,
        "outages": len(runs),
        "recovery_s": round(recovery, 3),
        "rtt_ms_median": _median([p.rtt_ms for p in pings if p.rtt_ms is not None]),
        "connections": len(conns), "connections_failed": len(failed),
        "connect_timeout_s": phase.get("connect_timeout"),
        "connections_slow": sum(1 for c in conns if c.ok and (c.latency_us or 0) > 1_000_000),
        "connections_failed_before_fault": len(failed_before),
        "connect_fail_span_s": round(max(c.t for c in failed) - min(c.t for c in failed), 3) if failed else 0.0,
        "stream_survived": bool(intervals) and not stream.get("error") and
                           (intervals[-1].end >= t_end - 1.0),
        "stream_error": stream.get("error"),
        "stream_longest_stall_s": round(longest_stall(after, stall_threshold(base)), 3) if base else None,
        "stream_baseline_bps": base_bps, "stream_fault_bps": fault_bps,
        "stream_fault_ratio": fault_bps / base_bps if base_bps and fault_bps is not None else None,
        "stream_retransmits": stream.get("retransmits"),
    }


def _median(xs: list[float]) -> float | None:
    return round(statistics.median(xs), 3) if xs else None


# fault -> [(figure, target text, test)]
def _checks(fault: str) -> list[tuple[str, str, Any]]:
    outage = ("outage_ms", f"< {OUTAGE_TARGET_S * 1000:.0f} ms", lambda v: v < OUTAGE_TARGET_S * 1000)
    zero_lost = ("ping_lost", "0 lost", lambda v: v == 0)
    zero_failed = ("connections_failed", "0 failed", lambda v: v == 0)
    table: dict[str, list[tuple[str, str, Any]]] = {
        "spine-link": [outage],
        "leaf-uplink": [outage],
        "controller": [zero_lost, zero_failed],
        "controller+spine-link": [outage],
        "agent-kill": [zero_lost, ("connect_fail_span_s", f"<= {CONNECT_FAIL_SPAN_TARGET_S:g} s",
                                   lambda v: v <= CONNECT_FAIL_SPAN_TARGET_S)],
        "forwarder-kill": [outage, ("stream_survived", "the stream survives", lambda v: v is True)],
        "loss": [zero_failed],
    }
    return table.get(fault, [])


def targets(figures: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for key, text, test in _checks(figures["fault"]):
        value = figures.get(key)
        out.append({"figure": key, "value": value, "target": text, "met": value is not None and bool(test(value))})
    return out


def summarize(phases: Sequence[dict], config: dict[str, Any]) -> dict[str, Any]:
    per = {}
    for p in phases:
        f = phase_figures(p)
        f["targets"] = targets(f)
        per[p["fault"]] = f
    all_targets = [t for f in per.values() for t in f["targets"]]
    loss = per.get("loss")
    return {"faults": per, "targets_met": all(t["met"] for t in all_targets) if all_targets else None,
            "targets_not_met": [f"{name}: {t['figure']} {t['value']} ({t['target']})"
                                for name, f in per.items() for t in f["targets"] if not t["met"]],
            "loss_throughput_ratio": loss["stream_fault_ratio"] if loss else None,
            "ping_interval": config.get("ping_interval")}


def _fmt(v: Any, spec: str = "") -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "NO"
    return format(v, spec) if spec else str(v)


def table_lines(summary: dict[str, Any]) -> list[str]:
    lines = [f"{'fault':22} {'target':16} {'outage ms':>9} {'lost':>6} {'recover s':>9} {'conn failed':>11} "
             f"{'fail span s':>11} {'stream':>6} {'stall s':>7} {'Mb/s fault/base':>15}"]
    for name, f in summary["faults"].items():
        mbps = (f"{f['stream_fault_bps'] / 1e6:.0f}/{f['stream_baseline_bps'] / 1e6:.0f}"
                if f["stream_fault_bps"] is not None and f["stream_baseline_bps"] else "-")
        lines.append(f"{name:22} {_fmt(f['target']):16} {f['outage_ms']:>9.0f} "
                     f"{f['ping_lost']:>3}/{f['ping_sent']:<4} {f['recovery_s']:>7.2f} "
                     f"{f['connections_failed']:>5}/{f['connections']:<5} {f['connect_fail_span_s']:>11.2f} "
                     f"{_fmt(f['stream_survived']):>6} {_fmt(f['stream_longest_stall_s'], '.2f'):>7} {mbps:>15}")
    return lines


def summary_lines(summary: dict[str, Any]) -> list[str]:
    lines = table_lines(summary)
    for name, f in summary["faults"].items():
        for t in f["targets"]:
            lines.append(f"target {name}: {t['figure']} {_fmt(t['value'])} ({t['target']}): "
                         f"{'met' if t['met'] else 'NOT met'}")
    loss = summary["faults"].get("loss")
    if loss:
        ratio = summary.get("loss_throughput_ratio")
        lines.append(f"loss: stream throughput {_fmt(ratio and round(ratio, 2))} x its lossless start, "
                     f"{loss['stream_retransmits'] or 0} retransmits; {loss['connections_slow']} connections took "
                     f"> 1 s (a SYN retransmitted), {loss['connections_failed']} none within "
                     f"{_fmt(loss['connect_timeout_s'])} s")
    return lines


# --- rows for the CSV files -------------------------------------------------------------------------
PING_FIELDS = ("fault", "seq", "t", "rtt_ms")
CONNECTION_FIELDS = ("fault", "seq", "t", "outcome", "latency_us")
INTERVAL_FIELDS = ("fault", "start", "end", "bytes")


def ping_rows(phases: Sequence[dict]) -> list[dict]:
    return [{"fault": p["fault"], "seq": x.seq, "t": round(x.sent - p["t0"], 4), "rtt_ms": x.rtt_ms}
            for p in phases for x in p["pings"]]


def connection_rows(phases: Sequence[dict]) -> list[dict]:
    return [{"fault": p["fault"], "seq": c.seq, "t": round(c.t - p["t0"], 4), "outcome": c.outcome,
             "latency_us": c.latency_us} for p in phases for c in p["connections"]]


def interval_rows(phases: Sequence[dict]) -> list[dict]:
    return [{"fault": p["fault"], "start": round(i.start - p["t0"], 4), "end": round(i.end - p["t0"], 4),
             "bytes": i.bytes} for p in phases for i in p["intervals"]]


def phase_record(p: dict) -> dict:
    """A phase for phases.json, without the per-packet lists (those are in the CSV files)."""
    return {k: v for k, v in p.items() if k not in ("pings", "connections", "intervals")}


# --- plots ------------------------------------------------------------------------------------------
def plot_overview(summary: dict[str, Any], path: Path) -> None:
    fig, axes = plots.figure(2)
    names = list(summary["faults"])
    axes[0].bar(names, [summary["faults"][n]["outage_ms"] for n in names], color="tab:red")
    axes[0].axhline(OUTAGE_TARGET_S * 1000, color="grey", ls="--", lw=1)
    plots.label(axes[0], "fault", "longest ping outage (ms)", "outage per fault (dashed: 1 s target)")
    axes[1].bar(names, [summary["faults"][n]["connections_failed"] for n in names], color="tab:orange")
    plots.label(axes[1], "fault", "connections failed (count)", "new connections that failed (20/s offered)")
    for ax in axes:                  # slanted and anchored at their right end: long names do not run together
        plots.plt.setp(ax.get_xticklabels(), rotation=30, ha="right", rotation_mode="anchor")
    plots.save(fig, path, "faults: outage and failed connections")


def plot_timeline(phase: dict[str, Any], events: Sequence[dict], path: Path) -> None:
    """One fault's timeline: ping RTT and losses, stream throughput, connections; fault events marked."""
    t0 = phase["t0"]
    fig, axes = plots.plt.subplots(3, 1, figsize=(10, 7), sharex=True)
    ok = [(p.sent - t0, p.rtt_ms) for p in phase["pings"] if p.rtt_ms is not None]
    lost = [p.sent - t0 for p in phase["pings"] if p.rtt_ms is None]
    if ok:
        axes[0].plot(*zip(*ok, strict=True), ".", ms=2, color="tab:blue", label="reply")
    if lost:
        axes[0].plot(lost, [0] * len(lost), "|", ms=12, color="tab:red", label=f"lost ({len(lost)})")
    axes[0].set_ylabel("ping RTT (ms)")
    axes[0].legend(loc="upper right", fontsize=8)
    iv = phase["intervals"]
    if iv:
        axes[1].step([i.start - t0 for i in iv], [i.bytes * 8 / max(i.end - i.start, 1e-3) / 1e6 for i in iv],
                     where="post", color="tab:green")
    axes[1].set_ylabel("stream Mbit/s")
    conns = phase["connections"]
    axes[2].plot([c.t - t0 for c in conns if c.ok], [(c.latency_us or 0) / 1000 for c in conns if c.ok], ".",
                 ms=3, color="tab:green", label="connected")
    bad = [c.t - t0 for c in conns if not c.ok]
    if bad:
        axes[2].plot(bad, [0] * len(bad), "x", color="tab:red", label=f"failed ({len(bad)})")
    axes[2].set_ylabel("connect ms")
    axes[2].set_xlabel("s since the phase began")
    axes[2].legend(loc="upper right", fontsize=8)
    for e in events:
        x = e["monotonic"] - t0
        if 0 <= x <= phase["t_end"] - t0 + 1:
            for ax in axes:
                ax.axvline(x, color="grey", ls="--", lw=0.8)
            axes[0].annotate(f"{e.get('action')} {e.get('target', '')}", (x, 1), xycoords=("data", "axes fraction"),
                             fontsize=7, rotation=90, va="top", ha="right")
    plots.save(fig, path, f"fault {phase['fault']} ({phase.get('target') or ''})")
