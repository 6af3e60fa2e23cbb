"""The overlay schema's flooding: the storm limit users set, and the vrouter config's flood lists.

Part of the overlay schema (vrouter/core/schema.py, at its size limit: this is its continuation), used
by the three entry points the same way: a topology's ``flood:`` section (testbed validate), the VNC's
run-time changes (``testbed net flood``) and a vrouter config's ``flood`` (the VNC computes it,
controllers/vnc_flood.py; core/flood.py acts on it). docs/topology-format.md, "Broadcast and
multicast", states the rules for users:

- ``flood: {enabled, rate, burst, mac_age}``: flooding on (the default) or off; each VM's flood frames
  (broadcast, IPv4 multicast, ARP for an address no route has, unknown unicast) pass a token bucket of
  ``rate`` frames per second (> 0) and ``burst`` frames (>= 1); learned MACs age after ``mac_age`` s.
- A vrouter config's ``flood.networks``: per network with local members, its L2 label (what the
  vrouter receives an Ethernet frame on over MPLS: an MPLS label that is no network's id and no other
  network's L2 label) and its flood endpoints, ``{peer, encap, label}`` each: the underlay address of
  another server (or, later, a bare-metal VTEP) and the label or VNI to send the copy with.

L2 labels: Tungsten Fabric gives each network an L2 label next to its L3 one; here the VNC allocates
them (``l2_labels``) from L2_LABEL_BASE up, so they never meet a network id in the MPLS range.
Pure (a core module): plain values in, normalised values or problems out.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .codec.ipv4 import int_to_ip
from .codec.mpls import MAX_LABEL
from .schema import ENCAPS, MAX_FLOW_INT, Network, Problems, address, choice, items, mapping, network_id

SETTING_KEYS = ("enabled", "rate", "burst", "mac_age")
DEFAULTS: dict[str, Any] = {"enabled": True, "rate": 200.0, "burst": 400, "mac_age": 300.0}
CONFIG_KEYS = ("rate", "burst", "mac_age", "networks")
NETWORK_KEYS = ("network", "label", "endpoints")
ENDPOINT_KEYS = ("peer", "encap", "label")
MAX_RATE = 1_000_000.0
L2_LABEL_BASE = 1 << 19         # the upper half of the MPLS label space holds the L2 labels
MAC_TABLE_MAX = 4096            # learned MACs per network on one vrouter (the oldest goes first)


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def settings(p: Problems, where: str, item: object) -> dict[str, Any] | None:
    """The flood settings given in ``item`` (absent ones keep their defaults), normalised."""
    m = mapping(p, where, item, SETTING_KEYS)
    if m is None:
        return None
    out: dict[str, Any] = {}
    for key, value in m.items():
        problem = _problem(key, value)
        if problem is not None:
            p.add(f"{where}.{key}", problem)
        elif key in SETTING_KEYS:
            out[key] = float(value) if key in ("rate", "mac_age") else value
    return out


def _problem(key: str, value: object) -> str | None:
    if key == "enabled":
        return None if isinstance(value, bool) else f"expected true or false, got {value!r}"
    if key == "burst":
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_FLOW_INT:
            return f"expected a whole number of frames in 1..{MAX_FLOW_INT}, got {value!r}"
        return None
    if key == "rate":
        if not _number(value) or not 0 < value <= MAX_RATE:  # type: ignore[operator]  # a number by then
            return f"expected frames per second in (0, {MAX_RATE:.0f}], got {value!r}"
        return None
    if key == "mac_age" and (not _number(value) or value <= 0):  # type: ignore[operator]
        return f"expected a positive number of seconds, got {value!r}"
    return None


def l2_labels(ids: Mapping[str, int]) -> dict[str, int]:
    """Network name -> its L2 label: L2_LABEL_BASE + id where that is free, else the first free label
    above L2_LABEL_BASE; never a network id, never another network's (deterministic: by id)."""
    taken = set(ids.values())
    out: dict[str, int] = {}
    free = L2_LABEL_BASE
    for name, nid in sorted(ids.items(), key=lambda kv: kv[1]):
        label = L2_LABEL_BASE + nid
        if label > MAX_LABEL or label in taken:
            while free in taken:
                free += 1
            label = free
        if label > MAX_LABEL:
            raise ValueError("no free MPLS label left for an L2 label")
        taken.add(label)
        out[name] = label
    return out


# ---- the vrouter config's flood section

@dataclass(frozen=True)
class Endpoint:
    """Where a flood copy goes: an underlay address, the encapsulation, the label (MPLS) or VNI."""
    peer: str
    encap: str
    label: int


@dataclass(frozen=True)
class FloodNetwork:
    network: str
    label: int                          # the L2 label this vrouter receives the network's frames on
    endpoints: tuple[Endpoint, ...]


@dataclass(frozen=True)
class FloodConfig:
    rate: float
    burst: int
    mac_age: float
    networks: tuple[FloodNetwork, ...]

    @property
    def peers(self) -> frozenset[str]:
        return frozenset(e.peer for n in self.networks for e in n.endpoints)


def vrouter_flood(p: Problems, where: str, item: object, networks: Mapping[str, Network],
                  underlay: str) -> FloodConfig | None:
    """A vrouter config's ``flood`` (``networks``: the config's, by name; ``underlay``: its own address)."""
    m = mapping(p, where, item, CONFIG_KEYS, ("networks",))
    if m is None:
        return None
    given = settings(p, where, {k: v for k, v in m.items() if k in SETTING_KEYS}) or {}
    s = {**DEFAULTS, **given}
    ids = {n.id: n.name for n in networks.values()}
    out: list[FloodNetwork] = []
    labels: dict[int, str] = {}
    for i, raw in enumerate(items(p, f"{where}.networks", m.get("networks"))):
        at = f"{where}.networks[{i}]"
        n = mapping(p, at, raw, NETWORK_KEYS, ("network", "label"))
        if n is None:
            continue
        name = n.get("network")
        if not isinstance(name, str) or name not in networks:
            p.add(f"{at}.network", f"unknown virtual network {name!r}")
            continue
        if any(f.network == name for f in out):
            p.add(f"{at}.network", f"network {name!r} has a flood list already")
            continue
        label = network_id(p, f"{at}.label", n.get("label"), "mplsoudp")
        if label is not None and (label in ids or label in labels):
            p.add(f"{at}.label", f"L2 label {label} is already used by network {ids.get(label) or labels[label]!r}")
            label = None
        if label is None:
            continue
        labels[label] = name
        out.append(FloodNetwork(name, label, _endpoints(p, f"{at}.endpoints", n.get("endpoints"), underlay)))
    return FloodConfig(float(s["rate"]), int(s["burst"]), float(s["mac_age"]), tuple(out))


def _endpoints(p: Problems, where: str, value: object, underlay: str) -> tuple[Endpoint, ...]:
    out: list[Endpoint] = []
    for j, raw in enumerate(items(p, where, value)):
        at = f"{where}[{j}]"
        e = mapping(p, at, raw, ENDPOINT_KEYS, ENDPOINT_KEYS)
        if e is None or any(k not in e for k in ENDPOINT_KEYS):
            continue
        peer = address(p, f"{at}.peer", e["peer"])
        encap = choice(p, f"{at}.encap", e["encap"], ENCAPS, "an encapsulation")
        label = network_id(p, f"{at}.label", e["label"], encap) if encap is not None else None
        if peer is None or encap is None or label is None:
            continue
        if int_to_ip(peer) == underlay:
            p.add(f"{at}.peer", f"{int_to_ip(peer)} is this vrouter's own address")
        elif any(o.peer == int_to_ip(peer) and o.encap == encap for o in out):
            p.add(f"{at}.peer", f"duplicate endpoint {int_to_ip(peer)} ({encap})")
        else:
            out.append(Endpoint(int_to_ip(peer), encap, label))
    return tuple(out)
