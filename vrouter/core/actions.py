"""What the pipeline asks its shell to do with a packet (frozen dataclasses, plain values inside),
and the punt request a new flow queues for the agent."""
from dataclasses import dataclass
from typing import TypedDict


class PuntRequest(TypedDict):
    """What the slow path needs to decide a new flow (plain values: it crosses to the agent by msgpack)."""
    vrf: int
    proto: int
    src: int
    dst: int
    sport: int
    dport: int
    ingress: str        # "vif" | "fabric" | "external"
    port: str           # the VIF name, the underlay address the packet came from, or "gateway"
    tcp_flags: int
    length: int
    owner: str          # the VM interface (or "fabric") the flow is charged to (docs/vrouter-core.md)


def punt_request(key: tuple[int, int, int, int, int, int], ingress: tuple[str, str], owner: str,
                 tcp_flags: int = 0, length: int = 0) -> PuntRequest:
    """The request of a new flow ``key`` (vrf, proto, src, dst, sport, dport) that entered at
    ``ingress`` (kind, port): what the pipeline queues and what ``testbed trace`` asks the slow path."""
    vrf, proto, src, dst, sport, dport = key
    return {"vrf": vrf, "proto": proto, "src": src, "dst": dst, "sport": sport, "dport": dport,
            "ingress": ingress[0], "port": ingress[1], "tcp_flags": tcp_flags, "length": length, "owner": owner}


@dataclass(frozen=True, slots=True)
class ToVif:
    """Write ``frame`` (a whole Ethernet frame) to the TAP of VM interface ``vif``."""
    vif: str
    frame: bytes


@dataclass(frozen=True, slots=True)
class ToVifParts:
    """Write the Ethernet frame ``frame + tail`` to the TAP of VM interface ``vif``: a merged GRO
    delivery decided on its head (``Pipeline.from_fabric`` with a tail), ``frame`` its Ethernet, IPv4
    and TCP headers and ``tail`` its data, written behind them in one writev rather than copied into
    one frame. A type of its own because a third field made every ToVif 60 ns slower to build."""
    vif: str
    frame: bytes
    tail: bytes


@dataclass(frozen=True, slots=True)
class ToTunnel:
    """Send ``payload`` to the underlay address ``peer``.

    ``payload`` starts after the outer UDP header (mplsoudp: MPLS stack + inner IPv4; vxlan: VXLAN
    header + inner Ethernet) or after the outer IPv4 header (mplsogre: GRE + MPLS + inner IPv4).
    ``sport`` is the outer UDP source port chosen for entropy (49152-65535).
    """
    peer: str
    encap: str
    sport: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class ToExternal:
    """Send the IPv4 packet ``packet`` out of the external port, toward the gateway, without a tunnel
    (a NAT flow leaving the default network, core/nat.py)."""
    packet: bytes


@dataclass(frozen=True, slots=True)
class Drop:
    """The packet is dropped; ``reason`` is a name from :mod:`vrouter.core.drops`."""
    reason: str


# A new flow's punt is not an action: its request waits in the pipeline's setup queue
# (Pipeline.take_punts), so the shell sends punts when its channel can carry them.
Action = ToVif | ToVifParts | ToTunnel | ToExternal | Drop
