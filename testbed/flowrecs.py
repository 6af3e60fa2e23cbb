"""Reading a run's flow records: the JSON lines the vrouters write to ``<rundir>/flows/`` (one file per
forwarder, one per worker of a multi-core vrouter; vrouter/io/flowlog.py), their filters and the
summary `testbed flows` prints. The experiments use the same functions (testbed never imports them).

A record (docs/vrouter-core.md, "Flow records"): kind "flow" (one ended pair: network, 5-tuple of the
direction first seen, packets/bytes and rpackets/rbytes of the other direction, start and end in wall
time, decision/rule/reason of each direction, end_reason, vif/vm, server) or kind "refused" (admission
refusals of one network, VM interface and reason in one tick: ``flows`` of them).
"""
from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from vrouter.core.drops import REASONS
from vrouter.core.flowrecords import DECISIONS, END_REASONS, REFUSED
from vrouter.core.schema import PROTOCOLS
from vrouter.io.flowlog import flows_dir

TOP_TALKERS = 5
_SINCE_RE = re.compile(r"(\d+(?:\.\d+)?)([smh]?)")
_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0}


class RecordsError(ValueError):
    """A bad filter or unreadable records; one line."""


def read(rundir: str | Path, offsets: dict[str, int] | None = None) -> tuple[list[dict[str, Any]], int]:
    """Every record of the run (with ``offsets``: from those byte offsets of the files on, see
    testbed/measure/flowrecs.py), oldest end first, and how many lines could not be read (a vrouter
    killed in the middle of a write leaves half a line)."""
    out, bad = [], 0
    for path in sorted(flows_dir(rundir).glob("*.jsonl")):
        try:
            with path.open("rb") as f:
                f.seek((offsets or {}).get(path.name, 0))
                text = f.read().decode("utf-8", errors="replace")
        except OSError as exc:
            raise RecordsError(f"cannot read {path}: {exc}") from None
        for line in text.splitlines():
            try:
                r = json.loads(line)
            except ValueError:
                bad += 1
                continue
            if isinstance(r, dict) and "kind" in r:
                out.append(r)
            else:
                bad += 1
    out.sort(key=lambda r: (r.get("end", 0), r.get("server", "")))
    return out, bad


def since_seconds(text: str) -> float:
    """``--since``: '90', '90s', '5m', '1h' -> seconds."""
    m = _SINCE_RE.fullmatch(text.strip())
    if not m:
        raise RecordsError(f"--since {text!r}: give a duration like 90, 90s, 5m or 1h")
    return float(m.group(1)) * _UNITS[m.group(2)]


def proto_name(text: str) -> str:
    t = text.lower()
    if t in PROTOCOLS and t != "any":
        return t
    if t.isdigit() and 0 <= int(t) <= 255:
        return {str(v): k for k, v in PROTOCOLS.items() if v is not None}.get(t, t)
    raise RecordsError(f"--proto {text!r}: give tcp, udp, icmp or a protocol number 0..255")


def check_reason(text: str) -> str:
    """An end reason, or a drop / refusal reason (vrouter/core/drops.py names)."""
    if text in END_REASONS or text in REASONS or text == REFUSED:
        return text
    raise RecordsError(f"--reason {text!r}: not an end reason ({', '.join(END_REASONS)}) nor a drop reason "
                       "(testbed vr SERVER dropstats lists them)")


def check_decision(text: str) -> str:
    if text not in DECISIONS:
        raise RecordsError(f"--decision {text!r}: give one of {', '.join(DECISIONS)}")
    return text


def vm_addresses(rundir: str | Path) -> dict[str, tuple[str, str]]:
    """VM name -> (network, address), from the run's topology file (best effort: VMs added at run
    time are matched by the records' own ``vm`` field only)."""
    try:
        doc = yaml.safe_load((Path(rundir) / "topology.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        return {}
    return {str(v.get("name")): (str(v.get("network")), str(v.get("address")))
            for v in doc.get("vms") or [] if isinstance(v, dict)}


def select(records: Iterable[dict[str, Any]], *, network: str | None = None, vm: str | None = None,
           vm_address: tuple[str, str] | None = None, proto: str | None = None, port: int | None = None,
           reason: str | None = None, decision: str | None = None, after: float | None = None,
           server: str | None = None) -> list[dict[str, Any]]:
    """The records every given filter matches. ``vm``: owned by that VM, or (``vm_address``: its
    network and address) to or from it; ``reason``: the end reason or either direction's drop reason;
    ``decision``: either direction's; ``after``: ended at or after this wall time."""
    out = []
    for r in records:
        if network is not None and r.get("network") != network:
            continue
        if server is not None and r.get("server") != server:
            continue
        if vm is not None and r.get("vm") != vm and not (
                vm_address is not None and r.get("network") == vm_address[0]
                and vm_address[1] in (r.get("src"), r.get("dst"))):
            continue
        if proto is not None and r.get("proto") != proto:
            continue
        if port is not None and port not in (r.get("sport"), r.get("dport")):
            continue
        if reason is not None and reason not in (r.get("end_reason"), r.get("reason"), r.get("rreason")):
            continue
        if decision is not None and decision not in (r.get("decision"), r.get("rdecision")):
            continue
        if after is not None and r.get("end", 0) < after:
            continue
        out.append(r)
    return out


def summary(records: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Per network, per decision and per end reason: flows, packets and bytes (both directions);
    refusals per network and reason; the top talkers (source -> destination by bytes)."""
    def zero() -> dict[str, int]:
        return {"flows": 0, "packets": 0, "bytes": 0}
    by: dict[str, defaultdict[str, dict[str, int]]] = {k: defaultdict(zero) for k in
                                                       ("network", "decision", "end_reason")}
    refused: Counter[str] = Counter()
    talkers: Counter[tuple[str, str, str]] = Counter()
    total = zero()
    for r in records:
        if r.get("kind") == REFUSED:
            refused[f"{r.get('network')}/{r.get('vif')}/{r.get('reason')}"] += int(r.get("flows", 0))
            continue
        pk = int(r.get("packets", 0)) + int(r.get("rpackets", 0))
        by_ = int(r.get("bytes", 0)) + int(r.get("rbytes", 0))
        for k in by:
            row = by[k][str(r.get(k))]
            row["flows"] += 1
            row["packets"] += pk
            row["bytes"] += by_
        total["flows"] += 1
        total["packets"] += pk
        total["bytes"] += by_
        talkers[(str(r.get("network")), str(r.get("src")), str(r.get("dst")))] += by_
    return {"total": total, **{f"by_{k}": dict(sorted(v.items())) for k, v in by.items()},
            "refused": dict(sorted(refused.items())),
            "top_talkers": [{"network": n, "src": s, "dst": d, "bytes": b}
                            for (n, s, d), b in talkers.most_common(TOP_TALKERS)]}
