"""Fabric forwarding decisions, pure: fabric description + port states in, flow/group entries out.

The os-ken app (controllers/vnc.py) only translates these plain values into OpenFlow 1.3 messages,
so every forwarding decision is unit-tested without a switch (the faucet valve/fake-table split).

Forwarding: servers share one underlay subnet; the leaves answer their ARP with the real target
MAC (proxy ARP), so switches route on the IPv4 destination alone and never rewrite MACs.
- leaf:  local server /32 -> its port; remote server /32 -> select group of the destination leaf.
- spine: server /32 -> the port towards that server's leaf.
- both, below: a packet to an address no host has but whose destination MAC is a host's (a server
  that routes outside via the gateway, the gateway that routes a floating IP back to its server:
  testbed/gateway.py) goes where that host's /32 goes: the fabric routes it by its next hop.
The select group of destination leaf D on leaf L has one bucket per spine S whose links L-S and
S-D are both up. A bucket's watch_port lets OVS drop the local half at once; the remote half
(S-D) is only known to the controller, which rewrites the group on port status.

ARP is answered by the leaf itself, one responder flow per server address (as a real L3 leaf answers
locally, and as OpenStack Neutron's OVS agent does): the switch turns the request into the reply and
sends it back out of the port it came in on. So the data plane needs no running controller: servers
whose neighbour entries expire re-resolve them from the leaf while the controller is down (when the
controller answered ARP, an overlay ping stopped 30-35 s into a controller pause). ARP the fabric has
no answer for (an address no server has, a server asking about its own address, replies) is dropped
in the leaf: the controller had nothing to answer either, and a packet-in per such frame would only
load it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TypeAlias, TypedDict

COOKIE = 0x7674_0000_0000_0001
ETH_IPV4 = 0x0800
ETH_ARP = 0x0806
ARP_REQUEST = 1
ARP_REPLY = 2
PRIO_ARP_SELF = 320    # a server asking about its own address (gratuitous ARP, probes): no answer
PRIO_ARP_ANSWER = 310  # a request for a server's address: answered by the leaf
PRIO_ARP = 300         # every other ARP frame: dropped (the match of the old to-controller flow, so
                       # a leaf programmed by an older controller gets it replaced in place)
PRIO_LOCAL = 200
PRIO_REMOTE = 100
PRIO_NEXTHOP = 50      # an IPv4 packet to no host's address, sent to a host's MAC as its next hop
PRIO_MISS = 0

MatchValue: TypeAlias = int | str
# ("output", port) | ("group", id) | ("in_port",): out of the port the packet came in on
# | ("move", src field, dst field): copy a whole field | ("set", field, value)
# Field names are os-ken's OXM keyword names, as in Flow.match.
FlowAction: TypeAlias = tuple[str] | tuple[str, int] | tuple[str, str, MatchValue]


# The parts of the fabric description (testbed/fabric.py `describe`, the controller's JSON file) that
# the decisions read; the description carries more.
class Port(TypedDict):
    kind: str                   # "fabric" | "server"
    peer: str                   # the switch or server at the other end


class Switch(TypedDict):
    name: str
    dpid: int
    role: str                   # "leaf" | "spine"
    ports: dict[str, Port]      # port number (as a string: JSON keys) -> port


class Server(TypedDict):
    ip: str
    mac: str
    leaf: str
    leaf_port: int


class Fabric(TypedDict, total=False):
    switches: list[Switch]
    servers: list[Server]
    gateway: Server             # a gateway topology's router toward the external network (testbed/gateway.py)
    baremetal: list[Server]     # hosts without a vrouter, VXLAN tunnel endpoints (testbed/baremetal.py)


@dataclass(frozen=True)
class Flow:
    priority: int
    match: tuple[tuple[str, MatchValue], ...]  # sorted (field, value) pairs, os-ken OFPMatch keyword names
    actions: tuple[FlowAction, ...]  # empty = drop

    @property
    def match_dict(self) -> dict[str, MatchValue]:
        return dict(self.match)


@dataclass(frozen=True)
class Bucket:
    watch_port: int
    out_port: int


@dataclass(frozen=True)
class Group:
    group_id: int
    buckets: tuple[Bucket, ...]


# RFC 2992 style hash-threshold input: the 5-tuple. UDP ports matter: overlay tunnels (MPLSoUDP,
# VXLAN) carry their per-flow entropy in the outer UDP source port, and OVS's default select-group
# hash for OpenFlow 1.3 ignores them (measured: 16 UDP streams all took one spine). The hash is the
# datapath's (selection_method=dp_hash, algorithm 0 = the IP 5-tuple, ports included), not
# selection_method=hash with fields: that one hashes in the slow path, so every megaflow must match
# the 5-tuple exactly and each new tunnel source port is an upcall; a vrouter releasing a burst of
# new flows (issue 11: ~2,000 at a flood's onset) then cost as many upcalls in the leaf's one
# ovs-vswitchd thread, whose ports overflowed and dropped a neighbour's pings. With dp_hash the
# megaflows match the hash's low bits, a handful per group (10-26 upcalls per onset, measured).
SELECTION = "selection_method=dp_hash,selection_method_param=0"


def group_spec(group: Group) -> str:
    """The group in ovs-ofctl (OpenFlow 1.5) syntax, as one `add_or_mod` line of an add-groups file."""
    spec = f"add_or_mod group_id={group.group_id},type=select,{SELECTION}"
    for i, b in enumerate(group.buckets):
        spec += f",bucket=bucket_id:{i},watch_port:{b.watch_port},actions=output:{b.out_port}"
    return spec


def _flow(priority: int, actions: tuple[FlowAction, ...], **match: MatchValue) -> Flow:
    return Flow(priority, tuple(sorted(match.items())), actions)


def arp_answer(ip: str, mac: str) -> tuple[FlowAction, ...]:
    """Turn an ARP request for `ip` into the reply `ip is at mac`, back to the asker (Neutron's
    ARP responder): Ethernet to the sender from `mac`, op reply, the sender's addresses become the
    target's, `mac`/`ip` the sender's."""
    return (("move", "eth_src", "eth_dst"), ("set", "eth_src", mac),
            ("set", "arp_op", ARP_REPLY),
            ("move", "arp_sha", "arp_tha"), ("set", "arp_sha", mac),
            ("move", "arp_spa", "arp_tpa"), ("set", "arp_spa", ip),
            ("in_port",))


class FabricLogic:
    """Holds the fabric description and the last known state of every switch port."""

    def __init__(self, fabric: Fabric) -> None:
        self.by_dpid = {sw["dpid"]: sw for sw in fabric["switches"]}
        # The gateway and the bare-metal hosts are more hosts of the fabric: routed, ARP answered and
        # reached by their MAC alike.
        self.servers = fabric["servers"] + ([fabric["gateway"]] if fabric.get("gateway") else []) + \
            list(fabric.get("baremetal", []))
        self.leaves = [sw for sw in fabric["switches"] if sw["role"] == "leaf"]
        self.spines = [sw for sw in fabric["switches"] if sw["role"] == "spine"]
        self.group_of_leaf = {leaf["name"]: i for i, leaf in enumerate(self.leaves, 1)}
        # (switch name, peer name) -> local port number, for fabric links
        self.port_to: dict[tuple[str, str], int] = {}
        for sw in fabric["switches"]:
            for port, info in sw["ports"].items():
                if info["kind"] == "fabric":
                    self.port_to[(sw["name"], info["peer"])] = int(port)
        self.down: set[tuple[str, int]] = set()

    # --- port state -------------------------------------------------------------------------
    def set_port(self, dpid: int, port: int, up: bool) -> bool:
        """Record a port's state; True if it changed."""
        sw = self.by_dpid.get(dpid)
        if sw is None or str(port) not in sw["ports"]:
            return False
        key = (sw["name"], port)
        was_up = key not in self.down
        if up:
            self.down.discard(key)
        else:
            self.down.add(key)
        return was_up != up

    def link_up(self, a: str, b: str) -> bool:
        pa, pb = self.port_to.get((a, b)), self.port_to.get((b, a))
        if pa is None or pb is None:
            return False
        return (a, pa) not in self.down and (b, pb) not in self.down

    # --- entries per switch -----------------------------------------------------------------
    def flows(self, dpid: int) -> list[Flow]:
        sw = self.by_dpid[dpid]
        out = [_flow(PRIO_MISS, ())]
        if sw["role"] == "leaf":
            out.append(_flow(PRIO_ARP, (), eth_type=ETH_ARP))
            for srv in self.servers:
                out.append(_flow(PRIO_ARP_ANSWER, arp_answer(srv["ip"], srv["mac"]), eth_type=ETH_ARP,
                                 arp_op=ARP_REQUEST, arp_tpa=srv["ip"]))
                if srv["leaf"] == sw["name"]:
                    out.append(_flow(PRIO_ARP_SELF, (), eth_type=ETH_ARP, in_port=srv["leaf_port"],
                                     arp_tpa=srv["ip"]))
                    out.append(_flow(PRIO_LOCAL, (("output", srv["leaf_port"]),),
                                     eth_type=ETH_IPV4, ipv4_dst=srv["ip"]))
                    out.append(_flow(PRIO_NEXTHOP, (("output", srv["leaf_port"]),), eth_type=ETH_IPV4,
                                     eth_dst=srv["mac"]))
                else:
                    gid = self.group_of_leaf[srv["leaf"]]
                    out.append(_flow(PRIO_REMOTE, (("group", gid),), eth_type=ETH_IPV4, ipv4_dst=srv["ip"]))
                    out.append(_flow(PRIO_NEXTHOP, (("group", gid),), eth_type=ETH_IPV4, eth_dst=srv["mac"]))
        else:
            for srv in self.servers:
                port = self.port_to.get((sw["name"], srv["leaf"]))
                if port is not None:
                    out.append(_flow(PRIO_LOCAL, (("output", port),), eth_type=ETH_IPV4, ipv4_dst=srv["ip"]))
                    out.append(_flow(PRIO_NEXTHOP, (("output", port),), eth_type=ETH_IPV4, eth_dst=srv["mac"]))
        return out

    def groups(self, dpid: int) -> list[Group]:
        sw = self.by_dpid[dpid]
        if sw["role"] != "leaf":
            return []
        out: list[Group] = []
        for dst in self.leaves:
            if dst["name"] == sw["name"]:
                continue
            buckets: list[Bucket] = []
            for spine in self.spines:
                if self.link_up(sw["name"], spine["name"]) and self.link_up(spine["name"], dst["name"]):
                    port = self.port_to[(sw["name"], spine["name"])]
                    buckets.append(Bucket(port, port))
            out.append(Group(self.group_of_leaf[dst["name"]], tuple(buckets)))
        return out
