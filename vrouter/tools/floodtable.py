"""`testbed vr SERVER flood`: the `flood` introspection op as text (vrouter/core/flood.py's view).

Its own module: vrouter/tools/tables.py is shared by several features; this one is flooding's alone.
"""
from __future__ import annotations

COLUMNS = ("from_vms", "from_fabric", "to_vms", "to_tunnels", "unicast", "unknown_unicast", "storm_drops",
           "learned", "aged")


def format_flood(view: dict) -> str:
    if not view.get("enabled"):
        return f"Flooding off: {view.get('why', 'not configured')}\n"
    lines = [f"Flooding: storm limit {view['rate']:g} frames/s per VM, burst {view['burst']}, "
             f"MACs age after {view['mac_age']:g} s"]
    if view.get("tokens"):
        lines.append("Tokens left: " + ", ".join(f"{v} {t:g}" for v, t in view["tokens"].items()))
    for n in view["networks"]:
        ends = ", ".join(f"{e['peer']} {e['encap']} label {e['label']}" for e in n["endpoints"]) or "none"
        lines += ["", f"Network {n['network']} (vrf {n['vrf']}, L2 label {n['label']})",
                  f"  local members: {', '.join(n['members']) or 'none'}",
                  f"  flood endpoints: {ends}",
                  "  " + "  ".join(f"{k} {n['counters'].get(k, 0)}" for k in COLUMNS),
                  f"  {'MAC':<17}  {'Where':<34} {'Age':>7}"]
        for m in n["macs"]:
            where = f"vif {m['vif']}" if m["local"] else f"{m['peer']} {m['encap']} label {m['label']}"
            age = "-" if m["local"] else f"{m['age']:.1f}s"
            lines.append(f"  {m['mac']:<17}  {where:<34} {age:>7}")
    return "\n".join(lines) + "\n"
