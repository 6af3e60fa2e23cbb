"""The arithmetic of `testbed bench flowsetup` (testbed/bench_flowsetup.py runs it): end-to-end flow
setup rates from vrouter samples, the stop rule of the rate sweep, the summary against Tungsten
Fabric's release gate, and the report. Pure: samples in, figures and lines out, so all of it is
tested without a testbed.

A sample of one vrouter is {"t": the bench's monotonic clock, "pressure": the forwarder's `pressure`
answer (testbed.vr.read_pressure), "drops": the
`dropstats` answer or None, "vifs": {tap: {rx_packets, tx_packets, ...}}}. A step has four per vrouter:
"before" the generators start, "a" and "b" around the measuring window while they send, "after"
they stopped and the vrouter settled.
"""
from __future__ import annotations

import math
from typing import Any

TARGET = 10_000          # flows/s: Tungsten Fabric's highest release QA gate for policy flows per node
GOAL = 20_000
RATES = (2_000, 5_000, 10_000, 20_000, 40_000)
QUICK_RATES = (2_000, 10_000, 40_000)
RISE = 1.05              # a step whose best is not 5% above the best before it: the rate stopped rising...
SATURATED = 0.9          # ...if it is also well below what was offered (not noise of a step that kept up)
SLOW_PATH_SHARE = 0.5    # slow-path drops above this share of the flows sent: the slow path is the limit
TABLE_SHARE = 0.45       # flows per step at most this share of the capacity (each flow: up to 2 entries)
MIN_WINDOW = 0.5
# Drops that say the slow path did not keep up: a decision came too late, or held entries hit their limits.
SLOW_PATH_REASONS = ("hold_timeout", "hold_queue_full", "held_limit", "vm_held_limit", "setup_queue_stale")


def generators_for(offered: float, one_rate: float | None, most: int) -> int:
    """Generators to reach `offered` when one reaches `one_rate` unpaced (80% of it, for headroom)."""
    if not one_rate or one_rate <= 0:
        return 1
    return max(1, min(most, math.ceil(offered / (0.8 * one_rate))))


def step_window(offered: float, capacity: int, window: float, lead: float, tail: float) -> float:
    """The measuring window: `window`, shortened so that the step's flows fit the table."""
    fit = TABLE_SHARE * capacity / offered - lead - tail
    return round(max(MIN_WINDOW, min(window, fit)), 3)


def _delta(s0: dict, s1: dict, key: str) -> int | None:
    a, b = s0["pressure"].get(key), s1["pressure"].get(key)
    if not isinstance(a, int) or not isinstance(b, int):
        return None
    return b - a


def elapsed(s0: dict, s1: dict) -> float:
    """Seconds between two samples: the forwarder's uptime when both have it, else the bench's clock."""
    u0, u1 = s0["pressure"].get("uptime"), s1["pressure"].get("uptime")
    if isinstance(u0, (int, float)) and isinstance(u1, (int, float)) and u1 > u0:
        return u1 - u0
    return s1["t"] - s0["t"]


def setups(s0: dict, s1: dict) -> int:
    """Flows whose two entries got installed between two samples: installs, but no more than half the
    entries written (an install whose reverse found no room wrote one)."""
    installs = _delta(s0, s1, "installs") or 0
    entries = _delta(s0, s1, "entries_installed")
    return installs if entries is None else min(installs, entries // 2)


def _vif_delta(s0: dict, s1: dict, taps: list[str], key: str) -> int:
    return sum(s1["vifs"].get(t, {}).get(key, 0) - s0["vifs"].get(t, {}).get(key, 0) for t in taps)


def drops_delta(s0: dict, s1: dict) -> dict[str, int]:
    before, after = s0.get("drops") or {}, s1.get("drops") or {}
    return {k: v - before.get(k, 0) for k, v in sorted(after.items()) if v - before.get(k, 0) > 0}


def udp_errors(snmp: str) -> dict[str, int]:
    """InErrors and RcvbufErrors of the `Udp:` lines of /proc/net/snmp (datagrams a full socket lost)."""
    rows = [line.split()[1:] for line in snmp.splitlines() if line.startswith("Udp:")]
    if len(rows) < 2:
        return {}
    values = dict(zip(rows[0], rows[1], strict=False))
    return {k: int(values[k]) for k in ("InErrors", "RcvbufErrors") if k in values}


def vrouter_figures(step: dict[str, dict], taps: list[str]) -> dict[str, Any]:
    """One vrouter's figures of one step: `step` maps "before", "a", "b", "after" to its samples.
    Rates are over the window (a -> b), counts over the whole step (before -> after)."""
    a, b, s0, s1 = step["a"], step["b"], step["before"], step["after"]
    dt = elapsed(a, b)

    def per_s(n: int) -> float | None:
        return round(n / dt, 1) if dt > 0 else None

    lost = {k: v - s0.get("udp", {}).get(k, 0) for k, v in s1.get("udp", {}).items()}
    return {"setup_rate": per_s(setups(a, b)), "window_s": round(dt, 3), "setups": setups(s0, s1),
            "vm_rx_rate": per_s(_vif_delta(a, b, taps, "rx_packets")),
            "vm_tx_rate": per_s(_vif_delta(a, b, taps, "tx_packets")),
            "vm_rx_packets": _vif_delta(s0, s1, taps, "rx_packets"),
            "vm_tx_packets": _vif_delta(s0, s1, taps, "tx_packets"),
            "udp_rcvbuf_errors": lost.get("RcvbufErrors"),
            "drops": drops_delta(s0, s1), "entries_after": s1["pressure"].get("entries")}


def step_figures(offered: float, window: float, generators: list[dict], vrouters: dict[str, dict]) -> dict[str, Any]:
    """The step's row: what the generators sent and each vrouter's figures (vrouter_figures)."""
    sent = sum(g.get("sent", 0) for g in generators)
    rate = sum(g.get("rate", 0.0) for g in generators)
    drops: dict[str, int] = {}
    for v in vrouters.values():
        for k, n in v["drops"].items():
            drops[k] = drops.get(k, 0) + n
    slow = sum(n for k, n in drops.items() if k in SLOW_PATH_REASONS)
    return {"offered": offered, "window": window, "generators": len(generators), "sent": sent,
            "sent_rate": round(rate, 1),
            "generator_errors": sum(g.get("errors", 0) for g in generators),
            "vrouters": vrouters, "drops": drops, "slow_path_drops": slow,
            "achieved": min((v["setup_rate"] or 0.0 for v in vrouters.values()), default=0.0)}


def should_stop(steps: list[dict]) -> str | None:
    """Why the sweep ends after the last step, or None to go on."""
    last = steps[-1]
    if last["sent"] and last["slow_path_drops"] > SLOW_PATH_SHARE * last["sent"]:
        return (f"slow-path drops ({last['slow_path_drops']}) are more than {SLOW_PATH_SHARE:.0%} of the "
                f"flows sent ({last['sent']})")
    if len(steps) > 1:
        best = max(s["achieved"] for s in steps[:-1])
        if last["achieved"] < RISE * best and last["achieved"] < SATURATED * last["offered"]:
            return (f"the achieved rate stopped rising ({last['achieved']:.0f}/s at {last['offered']:.0f}/s "
                    f"offered, best before {best:.0f}/s)")
    return None


def summary(steps: list[dict], roles: dict[str, str]) -> dict[str, Any]:
    """Best setup rate per vrouter (and the offered rate it came at); flows_per_s is the best step's
    end-to-end rate, the lower of the two vrouters' rates in one step (never above the lower of
    their bests, which comes from different steps and is given too); the targets are on it."""
    per: dict[str, Any] = {}
    for server, role in roles.items():
        rates = [(s["vrouters"][server]["setup_rate"] or 0.0, s["offered"]) for s in steps]
        best, at = max(rates, default=(0.0, None))
        per[server] = {"role": role, "best_setup_rate": best, "at_offered": at}
    end_to_end, at = max(((s["achieved"], s["offered"]) for s in steps), default=(0.0, None))
    return {"flows_per_s": round(end_to_end), "at_offered": at,
            "flows_per_s_is": "the best step's end-to-end rate: the lower of the sending and the receiving "
                              "vrouter's setup rate in that step",
            "lower_of_bests": round(min((v["best_setup_rate"] for v in per.values()), default=0.0)),
            "per_vrouter": per,
            "targets_met": {f">= {TARGET:,} flows/s (Tungsten Fabric's release gate)": end_to_end >= TARGET,
                            f">= {GOAL:,} flows/s (goal)": end_to_end >= GOAL}}


def limit_hint(step: dict, roles: dict[str, str]) -> str:
    """What held a step back, from its counts: unread datagrams, slow-path drops, a full table."""
    sender = step["vrouters"][next(iter(roles))]
    unread = step["sent"] - sender["vm_rx_packets"]
    hints = []
    if step["sent"] and unread > 0.05 * step["sent"]:
        hints.append(f"the sending forwarder did not read {unread} of {step['sent']} datagrams from the VMs' TAPs")
    if step["slow_path_drops"]:
        hints.append(f"{step['slow_path_drops']} drops because the slow path did not keep up")
    if step["drops"].get("flow_table_full"):
        hints.append(f"{step['drops']['flow_table_full']} drops because the flow table was full")
    lost = [v["udp_rcvbuf_errors"] for v in step["vrouters"].values() if v.get("udp_rcvbuf_errors")]
    if lost:
        hints.append(f"{sum(lost)} datagrams lost to full UDP sockets")
    return "; ".join(hints) or "nothing lost: every datagram read was set up"


def _drops_text(drops: dict[str, int]) -> str:
    return ", ".join(f"{k}={n}" for k, n in sorted(drops.items(), key=lambda kv: -kv[1])) or "-"


def step_header(roles: dict[str, str]) -> str:
    snd, rcv = list(roles)
    return (f"{'offered/s':>10}{'gens':>5}{'win s':>6}{'sent/s':>9}{'read/s':>9}"
            f"{'setup/s ' + snd:>15}{'setup/s ' + rcv:>15}{'deliv/s':>9}{'unread':>8}{'sockloss':>9}  drops")


def step_line(step: dict, roles: dict[str, str]) -> str:
    """One row of the per-step table. read/s: datagrams the sending vrouter read from its VMs, deliv/s:
    the receiving vrouter wrote to its VMs (both in the window); unread: sent but never read from the
    TAPs; sockloss: datagrams the receiving server's full UDP sockets lost (the whole step)."""
    snd, rcv = (step["vrouters"][s] for s in roles)
    unread = step["sent"] - snd["vm_rx_packets"]
    return (f"{step['offered']:>10.0f}{step['generators']:>5}{step['window']:>6.2f}{step['sent_rate']:>9.0f}"
            f"{_fmt(snd['vm_rx_rate']):>9}"
            f"{_fmt(snd['setup_rate']):>15}{_fmt(rcv['setup_rate']):>15}{_fmt(rcv['vm_tx_rate']):>9}{unread:>8}"
            f"{_fmt(rcv['udp_rcvbuf_errors']):>9}  {_drops_text(step['drops'])}")


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f}"


def report_lines(r: dict) -> list[str]:
    """The settings, the step table and the verdict of one run."""
    s, roles = r["settings"], r["roles"]
    lines = [f"{r['topology']}: generators in {', '.join(s['senders'])} -> {', '.join(s['receivers'])} "
             f"(vrouters {' -> '.join(roles)}), {s['mode']} mode, one UDP datagram per new flow",
             f"flow table capacity {s['capacity']} ({s['capacity_source']}); tables flushed between steps; "
             f"measuring window {s['window']:g} s after {s['lead']:g} s (shorter where a step's flows would not "
             f"fit {TABLE_SHARE:.0%} of the table)",
             f"flow limits: {s['limits_note']}",
             f"one generator, unpaced, in {s['senders'][0]}: {_fmt(r['generator_max_rate'])} datagrams/s "
             f"(up to {s['max_generators']} at once)",
             step_header(roles)]
    lines += [step_line(step, roles) for step in r["steps"]]
    lines.append(f"sweep ended: {r['stopped']}")
    if r["steps"]:
        lines.append(f"last step ({r['steps'][-1]['offered']:.0f}/s offered): {limit_hint(r['steps'][-1], roles)}")
    for server, v in r["per_vrouter"].items():
        lines.append(f"best setup rate of {server} ({v['role']}): {v['best_setup_rate']:.0f} flows/s "
                     f"at {_fmt(v['at_offered'])}/s offered")
    lines.append(f"end-to-end setup rate (both vrouters, best step): {r['flows_per_s']} flows/s "
                 f"at {_fmt(r['at_offered'])}/s offered")
    lines += [f"target {name}: {'met' if ok else 'NOT met'}" for name, ok in r["targets_met"].items()]
    return lines
