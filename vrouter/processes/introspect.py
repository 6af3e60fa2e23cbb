"""Answers introspection requests (vrouter/io/introspect.py has the protocol) inside a vrouter process.

One handler for every kind of vrouter: what only the packet side knows (flows, drop counters, VIF
counters, round trips, statistics) it asks the forwarder's engine, which answers from its one
datapath or from all its workers' shards; the rest (configuration, VIFs, routes) is the shell's.
"""
from __future__ import annotations

from vrouter.core import baremetal, ecmp, explain
from vrouter.core.coalesce import MAX_DEFER_US, Coalesce
from vrouter.core.codec.ipv4 import int_to_ip, ip_to_int
from vrouter.core.priority import MAX_RT_PRIORITY
from vrouter.core.vrf import build_instances
from vrouter.io.introspect import OPS, IntrospectError


def _microseconds(req, key):
    """A loop setting of `set` (spin_us, defer_us, warm_us): microseconds in the bound of --spin-us,
    --defer-us and --warm-us (launch.microseconds)."""
    v = req[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= MAX_DEFER_US:
        raise IntrospectError(f"set: {key} must be 0..{MAX_DEFER_US} microseconds, got {v!r}")
    return v


class Introspector:
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

    def _engine(self):
        """The engine, once it has a configuration to answer from."""
        engine = self.fwd.engine
        if not engine.configured:
            raise self._unconfigured()
        return engine

    def _flows(self, req):
        return self._engine().flows()

    def _dropstats(self, req):
        return self._engine().drop_stats()

    def _rtts(self, req):
        """Recent slow-path round trips (punt sent -> decision installed) in us, oldest first."""
        return [round(x, 1) for x in self.fwd.engine.rtts()]

    def _punts(self, req):
        """The most recent punts (first packets sent to the slow path), oldest first."""
        out = []
        for when, r in self.fwd.agent.recent:
            out.append({"time": when, "vrf": r.get("vrf"), "proto": r.get("proto"),
                        "src": int_to_ip(r["src"]) if isinstance(r.get("src"), int) else r.get("src"),
                        "dst": int_to_ip(r["dst"]) if isinstance(r.get("dst"), int) else r.get("dst"),
                        "sport": r.get("sport"), "dport": r.get("dport"), "ingress": r.get("ingress"),
                        "tcp_flags": r.get("tcp_flags")})
        return out[-int(req.get("last", len(out))):]

    def _pressure(self, req):
        """The flow table under pressure, the slow-path channel, and the forwarder's uptime (from which
        and successive "installs" a client derives setup rates)."""
        return {**self._engine().pressure(), "uptime": round(self.fwd.clock() - self.fwd.started, 3)}

    def _paths(self, req):
        """Path repair: every tunnel peer's path slots, their ports and health (core/paths.py)."""
        return self._engine().paths()

    def _nat(self, req):
        """Floating IPs and source NAT: the settings and the SNAT ports in use (core/nat.py)."""
        return self._engine().nat()

    def _flood(self, req):
        """Flooding: the storm limit, and per network its flood list, MAC table, counters (core/flood.py)."""
        engine = self._engine()
        if not hasattr(engine, "datapath"):
            raise IntrospectError(f"vrouter {self.fwd.server}: flood needs the single forwarder "
                                  "(this one runs worker processes, each with its own MAC tables)")
        flood = engine.datapath.pipeline.flood
        if flood is None:
            return {"enabled": False, "why": "flooding is off in this vrouter's configuration (flood: enabled false)"}
        return flood.describe(self.fwd.clock())

    def _mirror(self, req):
        """Mirror sessions (core/mirror.py): source, sink, copies, bytes, drops (rate bound), truncated."""
        dp = getattr(self._engine(), "datapath", None)
        if dp is None:
            raise IntrospectError("mirror counters are kept per worker: shown by the single forwarder only")
        sink = dp.mirror_sink
        return {"sessions": dp.pipeline.mirror.describe(), "no_sink": dp.counters["mirror_no_sink"],
                "pcap_dir": f"{self.fwd.rundir}/mirror", "pcap_errors": sink.errors if sink else 0}

    def _baremetal(self, req):
        """Bare-metal hosts here (core/baremetal.py `view`): their routes' VXLAN next hops, whether they
        are flood endpoints, and the answers to the ARP they flood (core/fabric_arp.py)."""
        routes = [(ri.name, f"{int_to_ip(net)}/{plen}", nh) for ri in self._instances().values()
                  for net, plen, nh in ri.fib.routes()]
        return baremetal.view(routes, self.fwd.config.flood, self._engine().stats()["pipeline"])

    def _records(self, req):
        """Flow records (vrouter/io/flowlog.py): counters and file; {"flush": true} writes what waits now."""
        flush = req.get("flush", False)
        if not isinstance(flush, bool):
            raise IntrospectError(f"records: flush must be true or false, got {flush!r}")
        engine = self._engine()
        if not hasattr(engine, "datapath"):
            return engine.records(flush)            # the workers' shards
        dp = engine.datapath
        if flush:
            dp.flowlog.drain(dp.pipeline)
        return dp.flowlog.stats(dp.pipeline)

    def _stamp(self, req):
        """Latency stamps of ICMP echoes (vrouter/core/latency.py): {"on": true|false} switches them,
        {"take": true} returns (and forgets) those taken so far. Single forwarder only."""
        engine = self._engine()
        if not hasattr(engine, "set_stamping"):
            raise IntrospectError(f"vrouter {self.fwd.server}: latency stamps need the single forwarder "
                                  "(this one runs worker processes)")
        if "on" in req and not isinstance(req["on"], bool):
            raise IntrospectError(f"stamp: on must be true or false, got {req['on']!r}")
        taken = engine.take_stamps() if req.get("take") else []     # before switching: off forgets them
        if "on" in req:
            engine.set_stamping(req["on"], self.fwd.tunnels)
        return {"stamps": taken, "on": engine.datapath.stamps is not None}

    def _explain(self, req):
        """One packet's way through this vrouter, read-only (vrouter/core/explain.py)."""
        engine = self._engine()
        if not hasattr(engine, "datapath"):
            raise IntrospectError(f"vrouter {self.fwd.server}: explain needs the single forwarder "
                                  "(this one runs worker processes, each with its own flow table)")
        pipe = engine.datapath.pipeline
        try:
            proto, sport, dport = (int(req[k]) for k in ("proto", "sport", "dport"))
            src, dst = ip_to_int(str(req["src"])), ip_to_int(str(req["dst"]))
            if req.get("at") == "vif":
                out = explain.from_vif(pipe, str(req["vif"]), proto, src, dst, sport, dport)
            elif req.get("at") == "fabric":
                out = explain.from_fabric(pipe, str(req["outer_src"]), str(req["encap"]), int(req["label"]),
                                          proto, src, dst, sport, dport)
            else:
                raise IntrospectError("explain: at must be 'vif' or 'fabric'")
        except (KeyError, TypeError, ValueError) as exc:
            raise IntrospectError(f"explain: bad request ({type(exc).__name__}: {exc})") from None
        return {**out, "generation": self.fwd.generation, "mode": pipe.config.flow.mode}

    def _stats(self, req):
        f = self.fwd
        return {"server": f.server, "generation": f.generation,
                "mode": f.config.flow.mode if f.config else None, "spin": f.spin.stats(),
                "priority": f.priority.stats(), "warm": f.warm.stats(), "coalesce": f.coalesce.stats(),
                **f.engine.stats()}

    def _set(self, req):
        args = {k: req[k] for k in ("gro", "gso") if k in req}
        loop = {k: req[k] for k in ("spin_us", "defer_us", "warm_us") if k in req}
        prio = req.get("rt_priority")
        if not args and not loop and prio is None:
            raise IntrospectError("set: give gro and/or gso (true or false), spin_us, defer_us or warm_us "
                                  "(microseconds), "
                                  f"rt_priority (0..{MAX_RT_PRIORITY})")
        if prio is not None and (isinstance(prio, bool) or not isinstance(prio, int)
                                 or not 0 <= prio <= MAX_RT_PRIORITY):
            raise IntrospectError(f"set: rt_priority must be a whole number 0..{MAX_RT_PRIORITY}, got {prio!r}")
        for k, v in args.items():
            if not isinstance(v, bool):
                raise IntrospectError(f"set: {k} must be true or false, got {v!r}")
        for k in loop:
            _microseconds(loop, k)          # every value checked before anything changes
        out = self.fwd.set_offloads(**args) if args else {}
        if "spin_us" in loop:
            out["spin"] = self.fwd.set_spin(loop["spin_us"])
        if "defer_us" in loop:
            self.fwd.coalesce = Coalesce(loop["defer_us"])
            out["coalesce"] = self.fwd.coalesce.stats()
        if "warm_us" in loop:
            out["warm"] = self.fwd.set_warm(loop["warm_us"])
        if prio is not None:
            out["priority"] = self.fwd.set_priority(prio)
        return out

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
        counters = f.engine.vif_counters()
        out = []
        for spec in f.config.vifs:
            port = f.vifs.get(spec.name)
            c = counters.get(spec.name, {}) if port else {}
            out.append({
                "name": spec.name, "network": spec.network, "vrf": ids.get(spec.network),
                "mac": ":".join(f"{b:02x}" for b in spec.mac), "ip": int_to_ip(spec.ip),
                "state": "up" if port else f.pending.get(spec.name, "down"),
                "netns": port.netns if port else None,
                **{k: c.get(k, 0) for k in ("rx_packets", "rx_bytes", "tx_packets", "tx_bytes", "rx_super_frames")},
            })
        return out

    def _instances(self):
        if self.fwd.config is None:
            raise self._unconfigured()
        return build_instances(self.fwd.config)

    def _routes(self, req):
        want = req.get("vrf")
        instances = self._instances()
        for ri in instances.values():
            if str(want) in (str(ri.id), ri.name):
                # A route of a network connected by policy names that network (rt --dump shows it).
                routes = [{"prefix": f"{int_to_ip(net)}/{plen}", "nexthop": nh,
                           **({"network": other.name} if (other := ri.network_of(net)) else {})}
                          for net, plen, nh in ri.fib.routes()]
                routes.sort(key=lambda r: (ip_to_int(r["prefix"].split("/")[0]), r["prefix"]))
                return {"vrf": ri.id, "name": ri.name, "routes": routes}
        known = ", ".join(f"{ri.id} ({ri.name})" for ri in instances.values()) or "none"
        raise IntrospectError(f"no routing instance {want!r} on {self.fwd.server} (known: {known})")

    def _nexthops(self, req):
        """The next hops; a composite's members carry their counters over the live flow table."""
        instances = self._instances()
        counters = ecmp.member_counters(self.fwd.engine.flows()) if self.fwd.engine.configured else {}
        return nexthop_table(instances, counters)


def nexthop_table(instances, counters=None) -> list[dict]:
    """Distinct next hops with stable ids (sorted), each with the routing instances that use it; a
    composite's members with ``counters`` (``ecmp.member_counters``: flows, packets/bytes to and from)."""
    seen: dict = {}
    for ri in instances.values():
        for _net, _plen, nh in ri.fib.routes():
            key = tuple(sorted((k, str(v)) for k, v in nh.items()))
            entry = seen.setdefault(key, {**nh, "vrfs": set()})
            entry["vrfs"].add(ri.id)
    out = []
    for i, key in enumerate(sorted(seen), 1):
        entry = seen[key]
        out.append({"id": i, **{k: v for k, v in entry.items() if k != "vrfs"}, "vrfs": sorted(entry["vrfs"])})
        if entry.get("type") == ecmp.COMPOSITE:
            zero = dict.fromkeys(("flows", "packets_to", "bytes_to", "packets_from", "bytes_from"), 0)
            out[-1]["members"] = [{**m, **(counters or {}).get(m["member"], zero)} for m in entry["members"]]
    return out
