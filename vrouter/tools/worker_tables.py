"""Tables for a multi-core vrouter (`testbed vr SERVER stats | flow -l`): the single-forwarder tables
of `vrouter.io.introspect` plus a per-worker section and a worker column; unchanged for one forwarder."""
from vrouter.io import introspect


def format_stats(stats: dict) -> str:
    text = introspect.format_stats(stats)
    workers = stats.get("workers")
    if not workers:
        return text
    steer = stats.get("steering", {})
    total = sum(w["packets"] for w in workers.values()) or 1
    lines = [f"workers ({steer.get('mode')} steering, fields {' '.join(steer.get('fields', []))}):",
             f"  {'cpu':>4}{'pid':>9}{'packets':>12}{'share':>8}{'bytes':>14}{'punts':>8}{'decisions':>11}"
             f"{'hits':>10}{'flows':>8}  agent"]
    for cpu, w in sorted(workers.items(), key=lambda kv: int(kv[0])):
        lines.append(f"  {cpu:>4}{w['pid']:>9}{w['packets']:>12}{w['packets'] / total:>8.1%}{w['bytes']:>14}"
                     f"{w['punts']:>8}{w['decisions']:>11}{w['hits']:>10}{w['flows']:>8}  "
                     f"{'yes' if w['agent_channel'] else 'NO'}")
    return text + "\n".join(lines) + "\n"


def format_flows(flows: list) -> str:
    if not flows or "worker" not in flows[0]:
        return introspect.format_flows(flows)
    # Indexes are per shard: show each worker's table on its own, Index<=>RIndex within it.
    parts = []
    for w in sorted({f["worker"] for f in flows}):
        shard = [f for f in flows if f["worker"] == w]
        parts.append(f"Worker {w} (CPU {w}): " + introspect.format_flows(shard))
    return f"Flow tables of {len(parts)} workers, {len(flows)} entries\n\n" + "\n".join(parts)
