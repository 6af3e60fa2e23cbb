"""The introspection protocol of a running vrouter and its client (the handler runs in the
forwarder: vrouter/processes/introspect.py; the tables: vrouter/tools/tables.py).

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
    pressure  -             the flow table under pressure (`Pipeline.pressure`, summed over the workers
                            of a multi-core vrouter) + "uptime" (s since the forwarder started) +
                            "channel": the slow-path channel's counters (punt_batches, punts_sent,
                            largest_batch, sends_blocked, queued, in_flight, window, window_full,
                            decision_batches, decisions_waiting, punts_lost, punts_undecided,
                            punts_unanswered, agent_connected)
    paths     -             path repair (vrouter/core/paths.py): {"enabled", "slots", "interval", "dead_after",
                            counters (rounds, probes_sent, messages_received, deaths, revivals, homecomings,
                            rerolls, flows_moved, ...), "paths": per (peer, encap) its slots (port its flows
                            use, probe_port, home, alive, flows, sent, answered, misses, died, revived) and totals,
                            "reports_waiting" / "reports_sent" / "reports_dropped" (events for the VNC)}
    explain   at, proto,    one packet's way through this vrouter, changing nothing (vrouter/core/explain.py,
              src, dst,     `testbed trace`): at "vif" with vif (its name), or at "fabric" with outer_src
              sport, dport  (underlay address), encap and label; addresses as strings, ICMP echo id in
                            both ports; result {"steps": [{kind, place, fields}], "outcome": {...},
                            "generation", "mode"}. Single forwarder only.
    nat       -             floating IPs and source NAT (`Nat.state`, vrouter/core/nat.py): {"enabled"
                            (false: "why"), "floating" (the range), "floating_ips" [{vif, address}],
                            "snat_address", "snat_networks", "snat_ports" [first, last], "ports_in_use"
                            and "ports_free" {tcp, udp, icmp}, "nat_flows" (entries with a translation)}
    flood     -             flooding (vrouter/core/flood.py, `Flood.describe`): {"enabled" (false: "why"),
                            "rate", "burst", "mac_age", "tokens" {vif: left}, "networks": per network its
                            "label", "members", "endpoints" [{peer, encap, label}], "macs" [{mac, vif |
                            peer/encap/label, local, age}], "counters"}. Single forwarder only.
    records   flush         flow records (vrouter/core/flowrecords.py, vrouter/io/flowlog.py): {"enabled",
                            "records", "lost", "queued", "kept", "refusals", "written", "write_errors",
                            "file"} (a multi-core vrouter: summed, "files" and "workers"); flush true
                            writes what waits to <rundir>/flows/ now
`stats` also has "gro" (deliveries, segments, segments_per_delivery, merged_*, histogram of segments
per delivery, flush reasons), "gso" (UDP_SEGMENT sends, segments, segments_per_send, fallback) and
"vm_mtu" (vrouter/core/offload.py).
`stats.agent.decisions` is the number of punts the agent's slow path handled (piggybacked on every
decision, so it is current once the flow's entries are installed); `stats.forwarder.punts` counts
punts sent. Python: `query(rundir, server, op, **args)`.
"""
from __future__ import annotations

from vrouter.io import ipc

PROTOCOL_VERSION = 1
OPS = ("flows", "vifs", "routes", "nexthops", "dropstats", "stats", "config", "reset", "punts", "rtts", "set",
       "pressure", "paths", "nat", "stamp", "explain",
       "flood", "mirror", "records", "baremetal")


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


def summary(samples) -> dict:
    """Median and p90 of the recent slow-path round trips (punt sent -> decision installed), in us."""
    xs = sorted(samples)
    if not xs:
        return {"count": 0}
    return {"count": len(xs), "median": round(xs[len(xs) // 2], 1), "p90": round(xs[int(0.9 * (len(xs) - 1))], 1)}
