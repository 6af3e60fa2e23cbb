"""Introspection of a running vrouter: the forwarder's request handler, a client, and table formatting.

Protocol (msgpack maps on the stream socket `<rundir>/vr/<server>/introspect.sock`, version 1):
    request  {"op": OP, ...args}       reply {"ok": true, "result": ...} | {"ok": false, "error": "one line"}
    OP        args          result
    flows     -             list of flow dicts (Pipeline.flows())
    vifs      -             list of {name, network, vrf, mac, ip, state, rx_packets, ...}
    routes    vrf (name|id) {"vrf": id, "name": network, "routes": [{prefix, nexthop}]}
    nexthops  -             list of {id, type, ...} (distinct next hops of every routing instance)
    dropstats -             {reason: count}
    stats     -             {"generation", "mode", "pipeline", "forwarder", "tunnels", "agent"}
    config    -             {"generation", "config"} as last pushed by the agent
    punts     last          the most recent punts (time, vrf, proto, src, dst, ports, ...), oldest first
    rtts      -             recent slow-path round trips (punt sent -> decision installed) in us
    reset     -             flush: empty flow table, zeroed counters (forwarder and agent)
    set       gro, gso      switch GRO / GSO on or off at run time (booleans, either or both);
                            result {"gro": bool, "gso": bool}
`stats` also has "gro" (deliveries, segments, segments_per_delivery, merged_*, histogram of segments
per delivery, flush reasons), "gso" (UDP_SEGMENT sends, segments, segments_per_send, fallback) and
"vm_mtu" (vrouter/offload.py).
`stats.agent.decisions` is the number of punts the agent's slow path handled (piggybacked on every
decision, so it is current once the flow's entries are installed); `stats.forwarder.punts` counts
punts sent. Python: `query(rundir, server, op, **args)`.
"""
from __future__ import annotations

from vrouter.io import ipc
from vrouter.core.codec.ipv4 import int_to_ip, ip_to_int

PROTOCOL_VERSION = 1
OPS = ("flows", "vifs", "routes", "nexthops", "dropstats", "stats", "config", "reset", "punts", "rtts", "set")


class IntrospectError(Exception):
    """The vrouter refused a request or could not be reached; one line."""


def query(rundir, server, op, timeout=5.0, **args):
    """Ask server's forwarder; returns the result or raises IntrospectError."""
    try:
        reply = ipc.request(ipc.introspect_socket(rundir, server), {"op": op, "v": PROTOCOL_VERSION, **args},
                            timeout=timeout)
    except ipc.IpcError as exc:
        raise IntrospectError(str(exc)) from None
    if not reply.get("ok"):
        raise IntrospectError(reply.get("error", "vrouter refused the request"))
    return reply["result"]


class Introspector:
    """Answers introspection requests from the forwarder's state (runs inside the forwarder)."""

    def __init__(self, forwarder):
        self.fwd = forwarder

    def handle(self, req) -> dict:
        op = req.get("op") if isinstance(req, dict) else None
        if op not in OPS:
            return {"ok": False, "error": f"unknown request {op!r} (known: {', '.join(OPS)})"}
        try:
            return {"ok": True, "result": getattr(self, f"_{op}")(req)}
        except IntrospectError as exc:
            return {"ok": False, "error": str(exc)}

    def _unconfigured(self) -> IntrospectError:
        return IntrospectError(f"vrouter {self.fwd.server} has no configuration yet (agent not connected?)")

    def _need_pipeline(self):
        if self.fwd.pipeline is None:
            raise self._unconfigured()
        return self.fwd.pipeline

    def _flows(self, req):
        return self._need_pipeline().flows(self.fwd.clock())

    def _rtts(self, req):
        """Recent slow-path round trips (punt sent -> decision installed) in us, oldest first."""
        return [round(x, 1) for x in self.fwd.slowpath_rtt_us]

    def _punts(self, req):
        """The most recent punts (first packets sent to the slow path), oldest first."""
        out = []
        for when, r in self.fwd.recent_punts:
            out.append({"time": when, "vrf": r.get("vrf"), "proto": r.get("proto"),
                        "src": int_to_ip(r["src"]) if isinstance(r.get("src"), int) else r.get("src"),
                        "dst": int_to_ip(r["dst"]) if isinstance(r.get("dst"), int) else r.get("dst"),
                        "sport": r.get("sport"), "dport": r.get("dport"), "ingress": r.get("ingress"),
                        "tcp_flags": r.get("tcp_flags")})
        return out[-int(req.get("last", len(out))):]

    def _dropstats(self, req):
        return self._need_pipeline().drop_stats()

    def _stats(self, req):
        f = self.fwd
        return {"server": f.server, "generation": f.generation,
                "mode": f.config.flow.mode if f.config else None,
                "pipeline": f.pipeline.stats() if f.pipeline else {},
                "forwarder": dict(f.counters), "tunnels": dict(f.tunnels.counters) if f.tunnels else {},
                "agent": dict(f.agent_stats), "agent_connected": f.agent is not None,
                "slowpath_rtt_us": _summary(f.slowpath_rtt_us),
                **f.offloads.stats(f.tunnels.counters if f.tunnels else {})}

    def _set(self, req):
        args = {k: req[k] for k in ("gro", "gso") if k in req}
        if not args:
            raise IntrospectError("set: give gro and/or gso (true or false)")
        for k, v in args.items():
            if not isinstance(v, bool):
                raise IntrospectError(f"set: {k} must be true or false, got {v!r}")
        return self.fwd.set_offloads(**args)

    def _config(self, req):
        return {"generation": self.fwd.generation, "config": self.fwd.config_dict}

    def _reset(self, req):
        self.fwd.reset()
        self.fwd.request_agent_reset()
        return {"reset": True}

    def _vifs(self, req):
        f = self.fwd
        if f.config is None:
            return []
        ids = {n.name: n.id for n in f.config.networks}
        out = []
        for spec in f.config.vifs:
            port = f.vifs.get(spec.name)
            counters = dict(port.counters) if port else {}
            out.append({
                "name": spec.name, "network": spec.network, "vrf": ids.get(spec.network),
                "mac": ":".join(f"{b:02x}" for b in spec.mac), "ip": int_to_ip(spec.ip),
                "state": "up" if port else f.pending.get(spec.name, "down"),
                "netns": port.netns if port else None,
                **{k: counters.get(k, 0)
                   for k in ("rx_packets", "rx_bytes", "tx_packets", "tx_bytes", "rx_super_frames")},
            })
        return out

    def _instances(self):
        from vrouter.core.vrf import build_instances
        if self.fwd.config is None:
            raise self._unconfigured()
        return build_instances(self.fwd.config)

    def _routes(self, req):
        want = req.get("vrf")
        instances = self._instances()
        for ri in instances.values():
            if str(want) in (str(ri.id), ri.name):
                routes = [{"prefix": f"{int_to_ip(net)}/{plen}", "nexthop": nh} for net, plen, nh in ri.fib.routes()]
                routes.sort(key=lambda r: (ip_to_int(r["prefix"].split("/")[0]), r["prefix"]))
                return {"vrf": ri.id, "name": ri.name, "routes": routes}
        known = ", ".join(f"{ri.id} ({ri.name})" for ri in instances.values()) or "none"
        raise IntrospectError(f"no routing instance {want!r} on {self.fwd.server} (known: {known})")

    def _nexthops(self, req):
        return nexthop_table(self._instances())


def nexthop_table(instances) -> list[dict]:
    """Distinct next hops with stable ids (sorted), each with the routing instances that use it."""
    seen = {}
    for ri in instances.values():
        for _net, _plen, nh in ri.fib.routes():
            key = tuple(sorted((k, str(v)) for k, v in nh.items()))
            entry = seen.setdefault(key, {**nh, "vrfs": set()})
            entry["vrfs"].add(ri.id)
    out = []
    for i, key in enumerate(sorted(seen), 1):
        entry = seen[key]
        out.append({"id": i, **{k: v for k, v in entry.items() if k != "vrfs"}, "vrfs": sorted(entry["vrfs"])})
    return out


# --- formatting (columns modelled on Tungsten Fabric's vrouter utilities) ---------------------
def _nh_text(nh) -> str:
    if not nh:
        return "-"
    kind = nh.get("type")
    if kind == "vif":
        return f"vif {nh.get('vif')}"
    if kind == "tunnel":
        return f"{nh.get('encap')} {nh.get('peer')} label {nh.get('label')}"
    return str(kind)


def format_flows(flows: list[dict]) -> str:
    action_letter = {"forward": "F", "drop": "D", "hold": "H"}
    by_key = {(f["vrf"], f["proto"], f["src"], f["dst"], f["sport"], f["dport"]): f["index"] for f in flows}
    lines = [f"Flow table: {len(flows)} entries",
             "Action:F=Forward, D=Drop, H=Hold; Role: F=forward entry, R=reverse entry (installed before use)",
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
        if f.get("reason"):
            extra.append(f"Drop:{f['reason']}")
        if f.get("tcp_state"):
            extra.append(f"TCP:{f['tcp_state']}")
        if f.get("entropy_sport"):
            extra.append(f"UdpSrcPort {f['entropy_sport']}")
        role = {"forward": "F", "reverse": "R"}.get(f.get("role"), "-")
        lines.append(f"{'':>16}(Action:{action_letter.get(f.get('action'), '?')}, Role:{role}, "
                     f"Nh:{_nh_text(f.get('nexthop'))}, Stats:{f.get('packets', 0)}/{f.get('bytes', 0)}, "
                     f"Idle:{f.get('idle', 0):.1f}s{', ' if extra else ''}{', '.join(extra)})")
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
        flags = {"tunnel": "LP", "vif": "P", "receive": "P", "discard": "P"}.get(nh.get("type"), "")
        lines.append(f"{r['prefix']:<22}{r['prefix'].split('/')[1]:<6}{flags:<8}{label!s:<8}{_nh_text(nh)}")
    return "\n".join(lines) + "\n"


def format_nexthops(nhs: list[dict]) -> str:
    lines = ["Id    Type     Fmly  Details"]
    type_names = {"vif": "Encap", "tunnel": "Tunnel", "receive": "Receive", "discard": "Discard"}
    for nh in nhs:
        kind = nh.get("type")
        if kind == "vif":
            detail = f"Oif:{nh.get('vif')}"
        elif kind == "tunnel":
            detail = (f"{(nh.get('encap') or '').upper()} Dip:{nh.get('peer')} Label:{nh.get('label')} "
                      f"Dmac:{nh.get('mac', '-')}")
        else:
            detail = ""
        lines.append(f"{nh['id']:<6}{type_names.get(kind, str(kind)):<9}AF_INET  {detail}  "
                     f"Vrf:{','.join(map(str, nh['vrfs']))}")
    return "\n".join(lines) + "\n"


def _summary(samples) -> dict:
    """Median and p90 of the recent slow-path round trips (punt sent -> decision installed), in us."""
    xs = sorted(samples)
    if not xs:
        return {"count": 0}
    return {"count": len(xs), "median": round(xs[len(xs) // 2], 1), "p90": round(xs[int(0.9 * (len(xs) - 1))], 1)}


def format_dropstats(drops: dict) -> str:
    from vrouter.core.drops import REASONS
    width = max([len(k) for k in drops] + [10]) + 2
    lines = [f"{k:<{width}}{v:>10}" for k, v in drops.items()]
    nonzero = [k for k, v in drops.items() if v and k in REASONS]
    if nonzero:
        lines += ["", "Why:"] + [f"  {k}: {REASONS[k]}" for k in nonzero]
    return "\n".join(lines) + "\n"


def format_stats(stats: dict) -> str:
    lines = [f"server {stats['server']}  generation {stats['generation']}  mode {stats['mode']}  "
             f"agent {'connected' if stats.get('agent_connected') else 'DISCONNECTED'}"]
    for section in ("pipeline", "forwarder", "tunnels", "agent", "slowpath_rtt_us", "gro", "gso"):
        values = stats.get(section) or {}
        lines.append(f"{section}:")
        lines += [f"  {k:<28}{v}" for k, v in sorted(values.items())] or ["  (none)"]
    return "\n".join(lines) + "\n"
