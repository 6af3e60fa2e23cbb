"""Lab 4's check: the policy of network red in force on the running testbed, by the connections it
lets through and the ones its vrouters drop.

It tries every connection of the lab's table (README.md, step 3) from the VMs themselves: listeners
in the destination VMs, each attempt with a source port (ICMP: identifier) of its own
(testbed/measure/reach.py), so its flow entries can be found afterwards in both vrouters' tables, as
`testbed vr SRV flow -l` shows them. A connection that must fail must have been dropped by a vrouter
as policy_deny (not lost some other way); one that must work and did not is explained by the entry
that dropped it and the rule that decided it. Nothing is read from policy.yaml: it counts once it is
applied (`testbed net policy red --file ...`).
"""
import os
import random
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import yaml

from testbed.lab import Finding
from testbed.labkit import entries_of, listening, reach
from vrouter.core.codec.ipv4 import ip_to_int
from vrouter.core.config import VrouterConfig
from vrouter.core.policy import CompiledPolicy

NETWORK = "red"
TIMEOUT = 2.0                     # s an attempt waits: a SYN retransmission, two pings
SPORTS = (20000, 30000)           # below the kernel's ephemeral range, so no other socket has them


@dataclass(frozen=True)
class Conn:
    src: str
    proto: str
    dst: str
    port: int = 0
    why: str = ""

    def text(self) -> str:
        return f"{self.src} -> {self.dst} {self.proto}" + (f" {self.port}" if self.port else "")


MUST_WORK = (
    Conn("red1", "tcp", "red3", 8080, "the web application, bottom of its range"),
    Conn("red4", "tcp", "red3", 8089, "the web application, top of its range"),
    Conn("red3", "tcp", "red4", 5432, "the database, from the web server"),
    Conn("red2", "udp", "red4", 53, "DNS, for every VM (red2 too)"),
    Conn("red1", "tcp", "red4", 22, "SSH from red1"),
    Conn("red1", "icmp", "red3", 0, "ping between red1 and red3"),
    Conn("red3", "icmp", "red1", 0, "ping between red1 and red3"),
)
MUST_FAIL = (
    Conn("red2", "tcp", "red3", 8080, "red2 is quarantined: its exception comes before the subnet's rule"),
    Conn("red1", "tcp", "red3", 8090, "8090 is outside the web application's 8080-8089"),
    Conn("red1", "tcp", "red4", 5432, "only red3 may use the database"),
    Conn("red4", "tcp", "red1", 22, "SSH is one way: from red1, never to it"),
    Conn("red2", "icmp", "red1", 0, "only red1 and red3 ping each other"),
    Conn("red1", "udp", "red3", 53, "DNS is red4's, nothing else is allowed"),
)


@dataclass
class Attempt:
    conn: Conn
    key: tuple[str, str, str, int, int]          # proto, src, dst, sport, dport of its forward flow
    ok: bool
    entries: list[tuple[str, dict]]              # (server, flow entry) of its flow, either direction


_RUNS: dict[int, dict[Conn, Attempt]] = {}       # one run of the table per `lab check`


def _vms(ctx) -> dict[str, tuple[str, str]]:
    """VM -> (address, server), from the lab's topology."""
    doc = yaml.safe_load(ctx.lab.topology.read_text())
    return {v["name"]: (v["address"], v["server"]) for v in doc["vms"] if v["network"] == NETWORK}


def _attempts(ctx) -> dict[Conn, Attempt]:
    if id(ctx) in _RUNS:
        return _RUNS[id(ctx)]
    tb, vms = ctx.testbed, _vms(ctx)
    conns = MUST_WORK + MUST_FAIL
    ports: dict[str, tuple[list[int], list[int]]] = {}
    for c in conns:
        if c.proto != "icmp":
            tcp, udp = ports.setdefault(c.dst, ([], []))
            (tcp if c.proto == "tcp" else udp).append(c.port)
    base = random.randrange(*SPORTS)
    keys = [(c.proto, vms[c.src][0], vms[c.dst][0], base + i, c.port or base + i) for i, c in enumerate(conns)]

    def attempt(i: int) -> bool:
        c, (_, _, dst, sport, _) = conns[i], keys[i]
        return reach(tb, c.src, c.proto, dst, c.port, sport, TIMEOUT)

    with listening(tb, ports), ThreadPoolExecutor(4) as pool:
        oks = list(pool.map(attempt, range(len(conns))))
    flows = {srv: tb.vr(srv, "flows") for srv in sorted({s for _, s in vms.values()})}
    run = {}
    for c, key, ok in zip(conns, keys, oks, strict=True):
        servers = (vms[c.src][1], vms[c.dst][1])
        run[c] = Attempt(c, key, ok, [(s, e) for s in servers for e in entries_of(flows[s], *key)])
    _RUNS[id(ctx)] = run
    return run


def _rules(ctx) -> list[dict]:
    config = ctx.testbed.vr("srv1", "config")["config"]
    return next((p["rules"] for p in config["policies"] if p["network"] == NETWORK), [])


def _decided_by(ctx, a: Attempt) -> str:
    """Which rules of the policy in force let both directions of an attempt through (the vrouter's own
    evaluation, vrouter/core/policy.py, on the policy srv1 runs)."""
    config = VrouterConfig.from_dict(ctx.testbed.vr("srv1", "config")["config"])
    policy = CompiledPolicy(next((p for p in config.policies if p.network == NETWORK), None))
    rules = _rules(ctx)
    name, src, dst, sport, dport = a.key
    proto = {"icmp": 1, "tcp": 6, "udp": 17}[name]
    _, there = policy.evaluate(proto, ip_to_int(src), ip_to_int(dst), sport, dport)
    _, back = policy.evaluate(proto, ip_to_int(dst), ip_to_int(src), dport, sport)
    return f"allowed by {_rule_text(rules, there)}, its reply by {_rule_text(rules, back)}"


def _rule_text(rules: list[dict], index: int) -> str:
    if index is None or index < 0 or index >= len(rules):
        return "the default"
    r = rules[index]
    ports = "".join(f" {k.split('_')[0]} port {r[k]}" for k in ("src_port", "dst_port") if r.get(k))
    return f"rule {index} ({r['action']} {r['protocol']} {r['src']} -> {r['dst']}{ports})"


def _dropped(a: Attempt) -> list[tuple[str, dict]]:
    """The entries of the attempt that dropped its packets."""
    return [(s, e) for s, e in a.entries if e["action"] == "drop" and e["packets"] > 0]


def _where_dropped(a: Attempt, rules: list[dict]) -> str:
    found = _dropped(a)
    if not found:
        return "no vrouter dropped it in a flow entry"
    s, e = found[0]
    direction = "its first packet" if (e["src"], e["sport"]) == (a.key[1], a.key[3]) else "the reply"
    return (f"{s} dropped {direction} ({e['proto']} {e['src']}:{e['sport']} -> {e['dst']}:{e['dport']}, "
            f"{e['role']} entry) as {e['reason']}, decided by {_rule_text(rules, e['rule'])}")


def _apply(ctx) -> str:
    path = os.path.relpath(ctx.folder / "policy.yaml")
    return f"sudo testbed net policy {NETWORK} --file {ctx.folder / 'policy.yaml' if path.startswith('..') else path}"


def _look(ctx, a: Attempt) -> str:
    c, (proto, _, dst, _, _) = a.conn, a.key
    vms = _vms(ctx)
    servers = sorted({vms[c.src][1], vms[c.dst][1]})
    port = f" --dport {c.port}" if c.port else ""
    return (f"your policy.yaml, applied with '{_apply(ctx)}'; "
            f"'sudo testbed trace {c.src} --proto {proto} --dst {dst}{port} --reply'; "
            + "; ".join(f"'sudo testbed vr {s} flow -l'" for s in servers))


def check_allowed(ctx):
    """the connections that must work get through"""
    run, rules = _attempts(ctx), _rules(ctx)
    findings = []
    for c in MUST_WORK:
        a = run[c]
        if not a.ok:
            findings.append(Finding(f"{c.text()} ({c.why}) failed: {_where_dropped(a, rules)}", _look(ctx, a)))
    return findings


def check_refused(ctx):
    """the connections that must fail are dropped by a vrouter's policy (policy_deny)"""
    run, rules = _attempts(ctx), _rules(ctx)
    findings = []
    for c in MUST_FAIL:
        a = run[c]
        if a.ok:
            findings.append(Finding(f"{c.text()} got through ({_decided_by(ctx, a)}); it must not: {c.why}",
                                    _look(ctx, a)))
        elif not any(e["reason"] == "policy_deny" for _, e in _dropped(a)):
            servers = sorted({vm[1] for vm in _vms(ctx).values()})
            findings.append(Finding(f"{c.text()} failed, but not by the policy: {_where_dropped(a, rules)} (a "
                                    "drop reason other than policy_deny, or lost outside the vrouters)",
                                    "; ".join(f"'sudo testbed vr {s} dropstats'" for s in servers)))
    return findings


def solve(ctx):
    """Applies the student's (now the solution's) policy.yaml to network red."""
    r = ctx.testbed.testbed("net policy", NETWORK, "--file", str(ctx.folder / "policy.yaml"))
    if r.returncode:
        raise SystemExit(f"error: could not apply the policy: {r.stderr.strip() or r.stdout.strip()}")
