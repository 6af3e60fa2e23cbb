"""The operator's tables of a running vrouter (`testbed vr SERVER flow -l | flow -r | vif --list |
rt --dump | nh --list | dropstats | stats | paths | nat`), with columns modelled on Tungsten Fabric's vrouter
utilities; `flow -r`'s rates come from successive `pressure` samples (flow_rates, pure). A
multi-core vrouter's answers carry a worker column (flows) and a per-worker section (stats): the
same tables show them per worker."""
from __future__ import annotations

from vrouter.core.drops import REASONS


def _nh_text(nh) -> str:
    if not nh:
        return "-"
    kind = nh.get("type")
    if kind == "vif":
        return f"vif {nh.get('vif')}"
    if kind == "tunnel":
        return f"{nh.get('encap')} {nh.get('peer')} label {nh.get('label')}"
    if kind == "composite":
        return f"composite {nh.get('service')} [{', '.join(m['member'] for m in nh.get('members', []))}]"
    return str(kind)


def _flow_table(flows: list[dict]) -> str:
    action_letter = {"forward": "F", "drop": "D", "hold": "H", "nat": "N"}
    by_key = {(f["vrf"], f["proto"], f["src"], f["dst"], f["sport"], f["dport"]): f["index"] for f in flows}
    vrf_of = {f["index"]: f["vrf"] for f in flows}
    lines = [f"Flow table: {len(flows)} entries",
             "Action:F=Forward, D=Drop, H=Hold, N=NAT; Role: F=forward entry, R=reverse entry (installed before use)",
             "NAT: the source and destination a NAT entry's packets leave with (floating IP or source NAT)",
             "",
             f"{'Index':>14}  {'Source:Port/Destination:Port':<44}{'Proto(V)':<12}",
             "-" * 72]
    for f in sorted(flows, key=lambda f: f["index"]):
        rindex = f.get("reverse_index")
        if rindex is None and f.get("has_reverse"):
            rindex = by_key.get((f["vrf"], f["proto"], f["dst"], f["src"], f["dport"], f["sport"]))
        idx = f"{f['index']}<=>{rindex}" if rindex is not None else f"{f['index']}"
        lines.append(f"{idx:>14}  {f['src'] + ':' + str(f['sport']):<44}{f['proto'] + ' (' + str(f['vrf']) + ')':<12}")
        lines.append(f"{'':>14}  {f['dst'] + ':' + str(f['dport']):<44}")
        extra = []
        if rindex is not None and vrf_of.get(rindex, f["vrf"]) != f["vrf"]:
            extra.append(f"Vrf:{f['vrf']}->{vrf_of[rindex]} (between networks)")     # its pair's instance
        if f.get("reason"):
            extra.append(f"Drop:{f['reason']}")
        if f.get("tcp_state"):
            extra.append(f"TCP:{f['tcp_state']}")
        if f.get("entropy_sport"):
            extra.append(f"UdpSrcPort {f['entropy_sport']}")
        if f.get("member"):
            extra.append(f"Member:{f['member']}" + (f" (pinned to {f['pin']})" if f.get("pin") else ""))
        role = {"forward": "F", "reverse": "R"}.get(f.get("role"), "-")
        lines.append(f"{'':>16}(Action:{action_letter.get(f.get('action'), '?')}, Role:{role}, "
                     f"Nh:{_nh_text(f.get('nexthop'))}, Stats:{f.get('packets', 0)}/{f.get('bytes', 0)}, "
                     f"Idle:{f.get('idle', 0):.1f}s{', ' if extra else ''}{', '.join(extra)})")
        nat = f.get("nat")
        if nat:
            lines.append(f"{'':>16}(NAT {nat['kind']}: {nat['src']}:{nat['sport']} -> {nat['dst']}:{nat['dport']}, "
                         f"out {nat['out']})")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def format_vifs(vifs: list[dict]) -> str:
    lines = ["Vrouter Interface Table", ""]
    for i, v in enumerate(vifs):
        lines.append(f"vif0/{i:<6}OS: {v['name']}  NetNS: {v.get('netns') or '-'}")
        lines.append(f"{'':11}Type:Virtual HWaddr:{v['mac']} IPaddr:{v['ip']}")
        lines.append(f"{'':11}Vrf:{v['vrf']} ({v['network']}) State:{v['state']}")
        lines.append(f"{'':11}RX packets:{v['rx_packets']}  bytes:{v['rx_bytes']}")
        lines.append(f"{'':11}TX packets:{v['tx_packets']}  bytes:{v['tx_bytes']}")
        lines.append("")
    if not vifs:
        lines.append("(no interfaces)")
    return "\n".join(lines).rstrip() + "\n"


def format_routes(table: dict) -> str:
    lines = [f"Vrouter inet4 routing table {table['vrf']} ({table['name']})",
             f"{'Destination':<22}{'PPL':<6}{'Flags':<8}{'Label':<8}Nexthop"]
    for r in table["routes"]:
        nh = r["nexthop"] or {}
        label = nh.get("label", "-") if nh.get("type") == "tunnel" else "-"
        flags = {"tunnel": "LP", "vif": "P", "receive": "P", "discard": "P", "composite": "CP"}.get(nh.get("type"), "")
        leaked = f"  (network {r['network']}, by policy)" if r.get("network") else ""
        lines.append(f"{r['prefix']:<22}{r['prefix'].split('/')[1]:<6}{flags:<8}{label!s:<8}{_nh_text(nh)}{leaked}")
    return "\n".join(lines) + "\n"


def format_nexthops(nhs: list[dict]) -> str:
    lines = ["Id    Type       Fmly     Details"]
    type_names = {"vif": "Encap", "tunnel": "Tunnel", "receive": "Receive", "discard": "Discard",
                  "composite": "Composite"}
    for nh in nhs:
        kind = nh.get("type")
        if kind == "vif":
            detail = f"Oif:{nh.get('vif')}"
        elif kind == "tunnel":
            detail = (f"{(nh.get('encap') or '').upper()} Dip:{nh.get('peer')} Label:{nh.get('label')} "
                      f"Dmac:{nh.get('mac', '-')}" + (" Probe:off" if nh.get("probe") is False else ""))
        else:
            detail = ""
        if kind == "composite":
            detail = f"Service:{nh.get('service')} Members:{len(nh.get('members', []))}"
        lines.append(f"{nh['id']:<6}{type_names.get(kind, str(kind)):<11}AF_INET  {detail}  "
                     f"Vrf:{','.join(map(str, nh['vrfs']))}")
        for m in nh.get("members", []) if kind == "composite" else []:
            lines.append(f"{'':6}  member {m['member']:<12} {_nh_text(m):<36} Flows:{m.get('flows', 0)} "
                         f"To:{m.get('packets_to', 0)}/{m.get('bytes_to', 0)} "
                         f"From:{m.get('packets_from', 0)}/{m.get('bytes_from', 0)}")
    return "\n".join(lines) + "\n"


def format_dropstats(drops: dict) -> str:
    width = max([len(k) for k in drops] + [10]) + 2
    lines = [f"{k:<{width}}{v:>10}" for k, v in drops.items()]
    nonzero = [k for k, v in drops.items() if v and k in REASONS]
    if nonzero:
        lines += ["", "Why:"] + [f"  {k}: {REASONS[k]}" for k in nonzero]
    return "\n".join(lines) + "\n"


def _counter_sections(stats: dict) -> str:
    lines = [f"server {stats['server']}  generation {stats['generation']}  mode {stats['mode']}  "
             f"agent {'connected' if stats.get('agent_connected') else 'DISCONNECTED'}"]
    for section in ("pipeline", "forwarder", "tunnels", "agent", "slowpath_rtt_us", "gro", "gso"):
        values = stats.get(section) or {}
        lines.append(f"{section}:")
        lines += [f"  {k:<28}{v}" for k, v in sorted(values.items())] or ["  (none)"]
    return "\n".join(lines) + "\n"


def format_stats(stats: dict) -> str:
    text = _counter_sections(stats)
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
        return _flow_table(flows)
    # Indexes are per shard: show each worker's table on its own, Index<=>RIndex within it.
    parts = []
    for w in sorted({f["worker"] for f in flows}):
        shard = [f for f in flows if f["worker"] == w]
        parts.append(f"Worker {w} (CPU {w}): " + _flow_table(shard))
    return f"Flow tables of {len(parts)} workers, {len(flows)} entries\n\n" + "\n".join(parts)


# ---------------------------------------------------------------- flow -r: the live setup rate
# Counters of the `pressure` answer that only grow (until a `reset` or a forwarder restart).
TEARDOWN_COUNTERS = ("evictions", "unreplied_aged")


def _delta(prev: dict | None, cur: dict, key: str) -> int | None:
    a, b = (prev or {}).get(key), cur.get(key)
    if not isinstance(a, (int, float)) or not isinstance(b, (int, float)) or b < a:
        return None  # unknown, or the counters went back to zero (reset, restarted forwarder)
    return b - a


def flow_rates(prev: dict | None, cur: dict, elapsed: float | None = None) -> dict:
    """Rates per second between two `pressure` samples: current setup (installs), average setup
    (installs over the forwarder's uptime) and teardown (evictions + unreplied entries aged out).

    The interval is the forwarder's own uptime difference when both samples have one, else
    `elapsed` (the caller's clock). A counter that went down (reset, restarted forwarder) gives
    None for its rate and `counters_reset` True."""
    up0, up1 = (prev or {}).get("uptime"), cur.get("uptime")
    interval = up1 - up0 if isinstance(up0, (int, float)) and isinstance(up1, (int, float)) else elapsed
    restarted = isinstance(interval, (int, float)) and interval <= 0
    ok = isinstance(interval, (int, float)) and interval > 0

    def rate(key: str) -> float | None:
        d = _delta(prev, cur, key)
        return d / interval if ok and d is not None else None

    installs, uptime = cur.get("installs"), cur.get("uptime")
    average = installs / uptime if isinstance(installs, int) and isinstance(uptime, (int, float)) and uptime > 0 \
        else None
    parts = {k: rate(k) for k in TEARDOWN_COUNTERS}
    teardown = sum(v for v in parts.values() if v is not None) if any(v is not None for v in parts.values()) \
        else None
    reset = restarted or any(
        isinstance((prev or {}).get(k), (int, float)) and isinstance(cur.get(k), (int, float)) and cur[k] < prev[k]
        for k in ("installs", *TEARDOWN_COUNTERS))
    return {"interval": interval if ok else None, "setup": rate("installs"), "setup_average": average,
            "teardown": teardown, **parts, "counters_reset": bool(reset)}


def _num(v, fmt: str = "{:.0f}") -> str:
    return "-" if v is None else fmt.format(v)


def _owner_rows(title: str, owners: dict, prev: dict, with_held: bool) -> list[str]:
    head = f"  {title:<18}{'entries':>9}{'limit':>9}" + (f"{'held':>7}" if with_held else "") + \
        f"{'blocked':>9}{'refused':>9}{'new':>7}"
    lines = [head]
    for name, o in sorted(owners.items()):
        before = (prev.get(name) or {}).get("refused")
        new = o.get("refused", 0) - before if isinstance(before, int) and o.get("refused", 0) >= before else None
        lines.append(f"  {name:<18}{_num(o.get('entries')):>9}{_num(o.get('limit')):>9}"
                     + (f"{_num(o.get('held')):>7}" if with_held else "")
                     + f"{'YES' if o.get('blocked') else 'no':>9}{_num(o.get('refused')):>9}{_num(new, '+{}'):>7}")
    return lines if owners else [head, "  (none)"]


def format_flow_rate(server: str, cur: dict, rates: dict, prev: dict | None = None) -> str:
    """One block of `testbed vr SERVER flow -r` (modelled on Tungsten Fabric's `flow -r`)."""
    prev = prev or {}
    entries, capacity = cur.get("entries"), cur.get("capacity")
    share = f" ({entries / capacity:.1%})" if isinstance(entries, int) and capacity else ""
    tokens = cur.get("tokens")
    if tokens is None:
        bucket = "no cap"
    else:
        bucket = f"{tokens:.0f} / {_num(cur.get('burst_tokens'))} left (refill {_num(cur.get('setup_rate'))}/s)"
    lines = [f"{server}  uptime {_num(cur.get('uptime'), '{:.1f} s')}  interval "
             f"{_num(rates.get('interval'), '{:.2f} s')}" + ("  (counters were reset)" if rates.get("counters_reset")
                                                             else ""),
             f"  setup      current {_num(rates.get('setup')):>8}/s   average {_num(rates.get('setup_average')):>8}/s"
             f"   installs {_num(cur.get('installs'))}",
             f"  teardown   current {_num(rates.get('teardown')):>8}/s   (evicted {_num(rates.get('evictions'))}/s, "
             f"unreplied aged {_num(rates.get('unreplied_aged'))}/s)",
             f"  entries    {_num(entries)} / {_num(capacity)}{share}   held {_num(cur.get('held'))} / "
             f"{_num(cur.get('held_limit'))}   unreplied {_num(cur.get('unreplied'))}",
             f"  evictions  {_num(cur.get('evictions'))}   unreplied aged {_num(cur.get('unreplied_aged'))}   "
             f"punts queued {_num(cur.get('punts_queued'))}   burst tokens {bucket}"]
    lines += _owner_rows("VM (owner)", cur.get("vms") or {}, prev.get("vms") or {}, True)
    lines += _owner_rows("network", cur.get("networks") or {}, prev.get("networks") or {}, False)
    return "\n".join(lines) + "\n"


def format_paths(view: dict) -> str:
    """`vr SERVER paths`: path repair's slots per tunnel peer (the `paths` introspection op)."""
    if not view.get("enabled"):
        return f"Path repair off: {view.get('why', 'not running')}\n"
    lines = [f"Path repair: {view['slots']} slots per peer, a probe round every {view['interval'] * 1000:.0f} ms, "
             f"dead after {view['dead_after']} unanswered",
             f"rounds {view['rounds']}, probes sent {view['probes_sent']}, messages received "
             f"{view['messages_received']}, deaths {view['deaths']}, revivals {view['revivals']} (back home "
             f"{view.get('homecomings', 0)}), re-rolls {view['rerolls']}, flows moved {view['flows_moved']}; "
             f"reports to the VNC: sent "
             f"{view.get('reports_sent', 0)}, waiting {view.get('reports_waiting', 0)}, dropped "
             f"{view.get('reports_dropped', 0)}"]
    if not view["paths"]:
        lines.append("no tunnel peer in use")
    for p in view["paths"]:
        state = "probing (flows)" if p["wants"] else "answering" if p["answering"] else "idle"
        heard = "never" if p["heard_ago"] is None else f"{p['heard_ago']:.1f}s ago"
        lines += ["", f"Peer {p['peer']} {p['encap']}: {state}, {p['flows']} flows, {p['dead']} dead slots, "
                      f"{p['flows_moved']} flows moved, round {p['round']} (acknowledged {p['acknowledged']}), "
                      f"heard {heard}",
                  f"  {'Slot':>4} {'Port':>6} {'Probe':>6} {'Home':>6} {'State':<6} {'Flows':>6} {'Sent':>7} "
                  f"{'Answered':>9} {'Misses':>6} {'Died':>5} {'Revived':>7}"]
        for s in p["slots"]:
            misses = "-" if s["misses"] is None else str(s["misses"])
            lines.append(f"  {s['slot']:>4} {s['port']:>6} {s['probe_port']:>6} {s.get('home', '-'):>6} "
                         f"{'alive' if s['alive'] else 'DEAD':<6} "
                         f"{s['flows']:>6} {s['sent']:>7} {s['answered']:>9} {misses:>6} {s['died']:>5} "
                         f"{s['revived']:>7}")
    return "\n".join(lines) + "\n"


def format_nat(view: dict) -> str:
    """`vr SERVER nat`: this server's floating IPs and source NAT, SNAT ports per protocol (the `nat` op)."""
    if not view.get("enabled"):
        return f"NAT off: {view.get('why', 'not configured')}\n"
    fips = ", ".join(f"{f['address']} (vif {f['vif']})" for f in view["floating_ips"]) or "none on this server"
    lines = [f"NAT: floating range {view['floating']}, {view['nat_flows']} NAT flow entries",
             f"Floating IPs: {fips}"]
    if view["snat_address"] is None or not view["snat_networks"]:
        lines.append("Source NAT: off (no network of this server has it)")
    else:
        first, last = view["snat_ports"]
        lines += [f"Source NAT: networks {', '.join(view['snat_networks'])} -> {view['snat_address']}, "
                  f"ports {first}-{last}",
                  f"  {'Proto':<6} {'In use':>7} {'Free':>7}"]
        lines += [f"  {p:<6} {n:>7} {view['ports_free'][p]:>7}" for p, n in view["ports_in_use"].items()]
    return "\n".join(lines) + "\n"


def format_mirror(view: dict) -> str:
    """`vr SERVER mirror`: this vrouter's mirror sessions and their counters (the `mirror` op)."""
    sessions = view["sessions"]
    if not sessions:
        return "no mirror sessions on this server\n"
    lines = [f"{'Session':<12} {'Id':>4} {'Source':<28} {'Dir':<8} {'To':<20} {'Rate/s':>8} {'Copies':>8} "
             f"{'Bytes':>10} {'Drops':>7} {'Cut':>5}"]
    for s in sessions:
        (kind, value), = s["source"].items()
        src = f"{kind} " + (",".join(f"{k}={v}" for k, v in value.items()) if isinstance(value, dict) else value)
        to = f"analyzer {s['to']['analyzer']}" if "analyzer" in s["to"] else "pcap"
        lines.append(f"{s['name']:<12} {s['id']:>4} {src:<28} {s['direction']:<8} {to:<20} {s['rate']:>8g} "
                     f"{s['copies']:>8} {s['bytes']:>10} {s['drops']:>7} {s['truncated']:>5}")
    lines.append(f"pcap files: {view['pcap_dir']}/<session>-<server>.pcap (write errors {view['pcap_errors']}, "
                 f"copies without a sink {view['no_sink']})")
    return "\n".join(lines) + "\n"


def format_baremetal(view: dict) -> str:
    """`vr SERVER baremetal`: the bare-metal hosts this vrouter routes to, and its answers to their ARP."""
    hosts = view["hosts"]
    lines = [f"{'Network':<10} {'Prefix':<18} {'VTEP':<15} {'VNI':>8} {'MAC':<17} Flood"] if hosts else \
        ["no bare-metal host routed on this server"]
    lines += [f"{h['network']:<10} {h['prefix']:<18} {h['vtep']:<15} {h['vni']:>8} {h['mac']:<17} "
              f"{'yes' if h['flood_endpoint'] else 'no'}" for h in hosts]
    lines.append(f"ARP of the hosts answered here (fabric_arp_replies): {view['fabric_arp_replies']}")
    return "\n".join(lines) + "\n"
