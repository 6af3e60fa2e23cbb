"""Fault decisions, pure: which interfaces a link name means, what an impairment's values are and
which `tc` commands make it, what the recorded state holds and what `clear` must undo.

testbed/faults.py is the thin shell that runs the commands, sends the signals and keeps the state
file; everything here takes the fabric description (testbed/fabric.py, `fabric.json` in the run dir)
and plain values, and returns plain values, so it is unit-tested without root or a testbed.

Links are named by their two ends in either order (`leaf1-spine2`, `spine2-leaf1`, `srv1-leaf1`).
Cutting a link downs its switch-side interfaces, which live in the root namespace: both ends of a
fabric link (both switches report PORT_DOWN + LINK_DOWN, like a pulled cable seen from both sides),
the leaf's end of an access link. The server keeps its own interface admin-up and sees NO-CARRIER,
as a server's NIC does when its cable is cut: its route stays (flagged linkdown) and what it sends
is dropped silently. Downing the server's end too would flush the server's routes through it and
give its programs ENETUNREACH at once, which no cut cable does.

Impairments act on an interface's egress, so one direction of a link is its sender's interface
and both directions are both ends. One shape for every impairment: an HTB root (the rate; far above
anything the userspace datapath can carry when no rate is asked for), a netem child for delay and
jitter, and for loss a classic-BPF filter that drops packets at random with TC_ACT_SHOT. Loss is
not netem's: kernels without sch_netem (this project's VM has none) still get loss and rate, and a
drop in the filter, like netem's, is silent to the sender's socket (HTB reports it as "bypass"), as
a loss on a wire is; only delay and jitter need netem.
"""
from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any

# --- errors -----------------------------------------------------------------------------------


class FaultError(Exception):
    """A fault could not be applied or undone; one line for the user."""


class FaultInputError(FaultError):
    """A link, server, process or value that is not valid (every error of this module)."""


# --- links -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class End:
    """One end of a link: the node (switch or server) and its interface there."""
    node: str
    intf: str
    server: str | None = None  # None: the interface is in the root namespace; else in this server's


@dataclass(frozen=True)
class Link:
    name: str  # canonical: the fabric description's order for fabric links, server first for access
    kind: str  # "fabric" | "access"
    ends: tuple[End, End]

    def end(self, node: str) -> End:
        for e in self.ends:
            if e.node == node:
                return e
        raise FaultInputError(f"{node!r} is not an end of link {self.name} (its ends: "
                         f"{self.ends[0].node}, {self.ends[1].node})")

    def other(self, node: str) -> End:
        mine = self.end(node)
        return self.ends[1] if mine is self.ends[0] else self.ends[0]

    @property
    def cut_ends(self) -> tuple[End, ...]:
        """The interfaces a cut takes down: the switch-side ones (module docstring)."""
        return tuple(e for e in self.ends if e.server is None)


def links(desc: dict[str, Any]) -> dict[str, Link]:
    """Every link of a fabric description, by canonical name."""
    switches = {sw["name"]: sw for sw in desc["switches"]}
    servers = {s["name"]: s for s in desc["servers"]}
    out: dict[str, Link] = {}
    for ln in desc["links"]:
        a, b = ln["a"], ln["b"]
        a_end = End(a, switches[a]["ports"][str(ln["a_port"])]["intf"])
        if b in servers:
            srv = End(b, servers[b]["intf"], server=b)
            link = Link(f"{b}-{a}", "access", (srv, a_end))
        else:
            link = Link(f"{a}-{b}", "fabric", (a_end, End(b, switches[b]["ports"][str(ln["b_port"])]["intf"])))
        out[link.name] = link
    return out


def resolve_link(desc: dict[str, Any], text: str) -> Link:
    """`leaf1-spine2`, `spine2-leaf1` or `srv1-leaf1` -> the Link; a one-line error listing the known
    links otherwise."""
    known = links(desc)
    by_ends = {frozenset((lk.ends[0].node, lk.ends[1].node)): lk for lk in known.values()}
    nodes = [n for n in str(text).split("-") if n]
    if len(nodes) == 2 and frozenset(nodes) in by_ends:
        return by_ends[frozenset(nodes)]
    raise FaultInputError(f"unknown link {text!r}: the links are {', '.join(known)}")


def server_names(desc: dict[str, Any]) -> list[str]:
    return [s["name"] for s in desc["servers"]]


def resolve_server(desc: dict[str, Any], name: str) -> str:
    names = server_names(desc)
    if name not in names:
        raise FaultInputError(f"unknown server {name!r}: the servers are {', '.join(names)}")
    return name


# --- processes --------------------------------------------------------------------------------

ROLES = ("controller", "agent", "forwarder")


def check_process(desc: dict[str, Any], role: str, server: str | None = None) -> tuple[str, str | None]:
    """A testbed process as (role, server): the controller has none, a vrouter's agent and
    forwarder need a known server. testbed/faults.py turns it into the supervisor's name."""
    if role not in ROLES:
        raise FaultInputError(f"unknown process {role!r}: one of {', '.join(ROLES)}")
    if role == "controller":
        if server is not None:
            raise FaultInputError("the controller is one for the whole testbed: name no server")
        return role, None
    if server is None:
        raise FaultInputError(f"which server's {role}? the servers are {', '.join(server_names(desc))}")
    return role, resolve_server(desc, server)


# --- values -----------------------------------------------------------------------------------

_NUMBER = r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)"
_TIME_UNITS = {"us": 1, "usec": 1, "ms": 1000, "msec": 1000, "s": 1_000_000, "sec": 1_000_000}
_RATE_UNITS = {"bit": 1, "kbit": 10**3, "mbit": 10**6, "gbit": 10**9, "tbit": 10**12}
_BYTE_RATE_UNITS = ("bps", "kbps", "mbps", "gbps", "tbps")
MAX_DELAY_US = 60_000_000
MIN_RATE_BPS = 10_000         # below, an HTB bucket of two full frames lasts longer than tc can say
MAX_RATE_BPS = 100 * 10**9
UNLIMITED_BPS = MAX_RATE_BPS  # the HTB class when no rate is asked for
MTU_FRAME = 1514
QUANTUM = 60_000              # HTB's per-round bytes; explicit, else it warns at high rates


def parse_time(value: str | float | int, what: str = "delay") -> int:
    """'10ms', '500us', '1.5s' or a bare number of milliseconds -> microseconds."""
    if isinstance(value, bool):
        raise FaultInputError(f"{what} {value!r}: give a time such as 10ms")
    if isinstance(value, int | float):
        us = float(value) * 1000
    else:
        m = re.fullmatch(_NUMBER + r"\s*([a-z]*)", str(value).strip().lower())
        if not m or m.group(2) not in ("", *_TIME_UNITS):
            raise FaultInputError(f"{what} {value!r}: give a time such as 10ms, 500us or 1s")
        us = float(m.group(1)) * _TIME_UNITS.get(m.group(2) or "ms", 1000)
    if not math.isfinite(us) or us < 0 or us > MAX_DELAY_US:
        raise FaultInputError(f"{what} {value!r}: not between 0 and {MAX_DELAY_US // 1_000_000} s")
    return round(us)


def parse_percent(value: str | float | int, what: str = "loss") -> float:
    """'1%', '0.5%', '1' or 1.0 -> percent (0..100)."""
    if isinstance(value, bool):
        raise FaultInputError(f"{what} {value!r}: give a percentage such as 1%")
    if isinstance(value, int | float):
        pct = float(value)
    else:
        m = re.fullmatch(r"(-?" + _NUMBER + r")\s*%?", str(value).strip())
        if not m:
            raise FaultInputError(f"{what} {value!r}: give a percentage such as 1% or 0.5%")
        pct = float(m.group(1))
    if not math.isfinite(pct) or not 0 <= pct <= 100:
        raise FaultInputError(f"{what} {value!r}: not between 0% and 100%")
    return pct


def parse_rate(value: str | float | int) -> int:
    """'100mbit', '1gbit', '500kbit' or a bare number of bit/s -> bit/s."""
    if isinstance(value, bool):
        raise FaultInputError(f"rate {value!r}: give a rate such as 100mbit")
    if isinstance(value, int | float):
        bps = float(value)
    else:
        text = str(value).strip().lower()
        m = re.fullmatch(_NUMBER + r"\s*([a-z]*)", text)
        if m and m.group(2) in _BYTE_RATE_UNITS:
            raise FaultInputError(f"rate {value!r}: give bits per second (kbit, mbit, gbit): "
                             f"to tc, {m.group(2)} means bytes per second")
        if not m or m.group(2) not in ("", *_RATE_UNITS):
            raise FaultInputError(f"rate {value!r}: give a rate such as 100mbit, 1gbit or 500kbit")
        bps = float(m.group(1)) * _RATE_UNITS.get(m.group(2) or "bit", 1)
    if not math.isfinite(bps) or not MIN_RATE_BPS <= bps <= MAX_RATE_BPS:
        raise FaultInputError(f"rate {value!r}: not between {fmt_rate(MIN_RATE_BPS)} and {fmt_rate(MAX_RATE_BPS)}")
    return round(bps)


def parse_limit(value: str | int) -> int:
    try:
        n = int(str(value).strip())
    except ValueError:
        raise FaultInputError(f"limit {value!r}: give a number of packets") from None
    if not 1 <= n <= 1_000_000:
        raise FaultInputError(f"limit {value!r}: not between 1 and 1000000 packets")
    return n


def fmt_time(us: int) -> str:
    if us % 1_000_000 == 0 and us:
        return f"{us // 1_000_000}s"
    if us % 1000 == 0:
        return f"{us // 1000}ms"
    return f"{us}us"


def fmt_rate(bps: int) -> str:
    for unit, mult in (("gbit", 10**9), ("mbit", 10**6), ("kbit", 10**3)):
        if bps >= mult and bps % mult == 0:
            return f"{bps // mult}{unit}"
    return f"{bps}bit"


def fmt_percent(pct: float) -> str:
    return f"{pct:g}%"


# --- impairments ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Impairment:
    delay_us: int = 0
    jitter_us: int = 0
    loss_pct: float = 0.0
    rate_bps: int | None = None
    limit: int | None = None  # queue length in packets (netem's with a delay, else the class's fifo)

    def __str__(self) -> str:
        parts = []
        if self.delay_us:
            parts.append(f"delay {fmt_time(self.delay_us)}")
        if self.jitter_us:
            parts.append(f"jitter {fmt_time(self.jitter_us)}")
        if self.loss_pct:
            parts.append(f"loss {fmt_percent(self.loss_pct)}")
        if self.rate_bps:
            parts.append(f"rate {fmt_rate(self.rate_bps)}")
        if self.limit:
            parts.append(f"limit {self.limit}")
        return " ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Impairment:
        return cls(**{k: d[k] for k in ("delay_us", "jitter_us", "loss_pct", "rate_bps", "limit") if k in d})


def impairment(delay: str | float | None = None, jitter: str | float | None = None,
               loss: str | float | None = None, rate: str | float | None = None,
               limit: str | int | None = None) -> Impairment:
    """Parse and check an impairment's values (None: not asked for)."""
    spec = Impairment(delay_us=parse_time(delay, "delay") if delay is not None else 0,
                      jitter_us=parse_time(jitter, "jitter") if jitter is not None else 0,
                      loss_pct=parse_percent(loss) if loss is not None else 0.0,
                      rate_bps=parse_rate(rate) if rate is not None else None,
                      limit=parse_limit(limit) if limit is not None else None)
    if spec.jitter_us and not spec.delay_us:
        raise FaultInputError("jitter varies a delay: give --delay too")
    if not (spec.delay_us or spec.loss_pct or spec.rate_bps):
        raise FaultInputError("nothing to impair: give at least one of delay, jitter, loss, rate (non-zero)")
    return spec


def needs_netem(spec: Impairment) -> bool:
    return bool(spec.delay_us)


# Classic BPF (the cls_bpf "bytecode" form: `count,code jt jf k,...`): the filter runs in
# direct-action mode, so what it returns is the verdict: TC_ACT_SHOT drops, TC_ACT_UNSPEC (-1)
# lets HTB put the packet in its default class.
_BPF_LD_W_ABS, _BPF_JGE_K, _BPF_RET_K = 0x20, 0x35, 0x06
_SKF_AD_RANDOM = (-0x1000 + 56) & 0xFFFFFFFF  # the `ld rand` extension: a random 32-bit number
TC_ACT_SHOT = 2
TC_ACT_UNSPEC = 0xFFFFFFFF


def loss_threshold(pct: float) -> int | None:
    """Drop when a random u32 is below this; None: drop everything (100%)."""
    if pct >= 100:
        return None
    return max(1, min(round(pct / 100 * 2**32), 2**32 - 1))


def loss_bytecode(pct: float) -> str:
    threshold = loss_threshold(pct)
    if threshold is None:
        prog = [(_BPF_RET_K, 0, 0, TC_ACT_SHOT)]
    else:
        prog = [(_BPF_LD_W_ABS, 0, 0, _SKF_AD_RANDOM),
                (_BPF_JGE_K, 0, 1, threshold),      # random >= threshold: keep, else drop
                (_BPF_RET_K, 0, 0, TC_ACT_UNSPEC),
                (_BPF_RET_K, 0, 0, TC_ACT_SHOT)]
    return ",".join([str(len(prog))] + [f"{c} {jt} {jf} {k}" for c, jt, jf, k in prog])


def htb_burst(rate_bps: int) -> int:
    """Bytes the HTB class may send at once: 1 ms at its rate, at least two full frames."""
    return max(2 * MTU_FRAME, math.ceil(rate_bps / 8 / 1000))


def tc_clear(intf: str) -> list[str]:
    """Remove whatever root qdisc the interface has (back to the veth's default, noqueue)."""
    return ["tc", "qdisc", "del", "dev", intf, "root"]


def tc_apply(intf: str, spec: Impairment) -> list[list[str]]:
    """The tc commands that put `spec` on `intf`'s egress (after tc_clear, whose failure when
    nothing is installed is expected)."""
    rate = spec.rate_bps or UNLIMITED_BPS
    burst = str(htb_burst(rate))
    cmds = [["tc", "qdisc", "add", "dev", intf, "root", "handle", "1:", "htb", "default", "1"],
            ["tc", "class", "add", "dev", intf, "parent", "1:", "classid", "1:1", "htb",
             "rate", f"{rate}bit", "ceil", f"{rate}bit", "burst", burst, "cburst", burst, "quantum", str(QUANTUM)]]
    if spec.delay_us:
        netem = ["tc", "qdisc", "add", "dev", intf, "parent", "1:1", "handle", "10:", "netem",
                 "delay", f"{spec.delay_us}us"]
        if spec.jitter_us:
            netem.append(f"{spec.jitter_us}us")
        if spec.limit:
            netem += ["limit", str(spec.limit)]
        cmds.append(netem)
    elif spec.limit:
        cmds.append(["tc", "qdisc", "add", "dev", intf, "parent", "1:1", "handle", "10:", "pfifo",
                     "limit", str(spec.limit)])
    if spec.loss_pct:
        cmds.append(["tc", "filter", "add", "dev", intf, "parent", "1:", "protocol", "all", "prio", "1",
                     "bpf", "da", "bytecode", loss_bytecode(spec.loss_pct)])
    return cmds


def directions(link: Link, sender: str | None) -> list[tuple[End, End]]:
    """(sending end, receiving end) pairs an impairment covers: both, or only `sender`'s egress."""
    if sender is None:
        return [(link.ends[0], link.ends[1]), (link.ends[1], link.ends[0])]
    return [(link.end(sender), link.other(sender))]


# --- recorded state ---------------------------------------------------------------------------
# Kept as JSON in the run dir (testbed/faults.py), so `list` and `clear` work from any process:
#   {"run": <the run's start time>, "links": {name: {"ends": [[node, intf], ...], "since": t}},
#    "impairments": {"<link>:<sender>": {"link", "sender", "receiver", "intf", "server", "spec", "since"}},
#    "paused": {process name: {"procs": [{"pid", "create_time"}, ...], "since": t}}}


def empty_state(run: float | None) -> dict[str, Any]:
    return {"run": run, "links": {}, "impairments": {}, "paused": {}}


def current(state: dict[str, Any] | None, run: float | None) -> dict[str, Any]:
    """The recorded state if it belongs to this run; a state left by an earlier run with this
    prefix (its links, qdiscs and processes went with it) counts for nothing."""
    if not state or state.get("run") != run:
        return empty_state(run)
    out = empty_state(run)
    for key in ("links", "impairments", "paused"):
        out[key] = dict(state.get(key) or {})
    return out


def impairment_key(link: str, sender: str) -> str:
    return f"{link}:{sender}"


def with_link(state: dict[str, Any], link: Link, down: bool, now: float) -> dict[str, Any]:
    out = current(state, state.get("run"))
    if down:
        out["links"][link.name] = {"ends": [[e.node, e.intf] for e in link.cut_ends], "since": now}
    else:
        out["links"].pop(link.name, None)
    return out


def with_impairment(state: dict[str, Any], link: Link, sender: str | None, spec: Impairment | None,
                    now: float) -> dict[str, Any]:
    """Record (spec) or forget (None) the impairment of the directions `sender` selects."""
    out = current(state, state.get("run"))
    for src, dst in directions(link, sender):
        key = impairment_key(link.name, src.node)
        if spec is None:
            out["impairments"].pop(key, None)
        else:
            out["impairments"][key] = {"link": link.name, "sender": src.node, "receiver": dst.node,
                                       "intf": src.intf, "server": src.server, "spec": spec.to_dict(),
                                       "since": now}
    return out


def with_paused(state: dict[str, Any], name: str, procs: list[dict[str, Any]] | None,
                now: float) -> dict[str, Any]:
    out = current(state, state.get("run"))
    if procs is None:
        out["paused"].pop(name, None)
    else:
        out["paused"][name] = {"procs": procs, "since": now}
    return out


@dataclass(frozen=True)
class Undo:
    """One step of `clear`: resume a paused process, remove an impairment, bring a link up."""
    kind: str    # "resume" | "unimpair" | "link-up"
    target: str  # process name | impairment key | link name
    detail: dict[str, Any] = field(default_factory=dict)


def undo_plan(state: dict[str, Any]) -> list[Undo]:
    """What `clear` undoes, in order: processes first (a paused controller would miss the port
    status of the links coming back), then impairments, then links."""
    plan = [Undo("resume", name, {"procs": rec["procs"]}) for name, rec in sorted(state["paused"].items())]
    plan += [Undo("unimpair", key, {"intf": rec["intf"], "server": rec["server"], "link": rec["link"],
                                    "sender": rec["sender"]})
             for key, rec in sorted(state["impairments"].items())]
    plan += [Undo("link-up", name, {"ends": rec["ends"]}) for name, rec in sorted(state["links"].items())]
    return plan


def is_empty(state: dict[str, Any]) -> bool:
    return not (state["links"] or state["impairments"] or state["paused"])


def summary_lines(state: dict[str, Any]) -> list[str]:
    """One line per active fault, for `testbed fault list`."""
    lines = [f"link {name} down ({', '.join(intf for _node, intf in rec['ends'])} down)"
             for name, rec in sorted(state["links"].items())]
    for _key, rec in sorted(state["impairments"].items()):
        where = f"{rec['intf']}" + (f" in {rec['server']}" if rec["server"] else "")
        lines.append(f"impair {rec['link']} {rec['sender']}->{rec['receiver']}: "
                     f"{Impairment.from_dict(rec['spec'])} (egress of {where})")
    for name, rec in sorted(state["paused"].items()):
        pids = ", ".join(str(p["pid"]) for p in rec["procs"])
        lines.append(f"paused {name} (pid {pids})")
    return lines
