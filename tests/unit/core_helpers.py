"""Shared builders for the vrouter core unit tests: configs of two servers and packet makers."""
import copy

from vrouter.core.actions import ToTunnel
from vrouter.core.codec import ethernet, ipv4, l4
from vrouter.core.codec.ipv4 import ip_to_int
from vrouter.core.config import VROUTER_MAC, VrouterConfig
from vrouter.core.pipeline import Pipeline
from vrouter.core.slowpath import SlowPath

SRV1, SRV2 = "10.0.1.1", "10.0.2.1"
VM1_MAC, VM2_MAC, VM3_MAC = "02:00:00:00:01:0b", "02:00:00:00:01:0c", "02:00:00:00:01:0d"
VM1, VM2, VM3 = "192.168.1.11", "192.168.1.12", "192.168.1.13"


def server_dict(name, mode="proactive", encap="mplsoudp", policies=None, flow=None):
    """srv1 hosts tr-red1 (VM1) and tr-red3 (VM3); srv2 hosts tr-red2 (VM2). Network red, id 100.

    Network blue (id 200) reuses red's addresses: srv1 has tr-blue1 with VM1's address too, and
    blue's VM2 address lives on srv2 as well.
    """
    me, other = (SRV1, SRV2) if name == "srv1" else (SRV2, SRV1)
    if name == "srv1":
        vifs = [{"name": "tr-red1", "network": "red", "mac": VM1_MAC, "ip": VM1},
                {"name": "tr-red3", "network": "red", "mac": VM3_MAC, "ip": VM3},
                {"name": "tr-blue1", "network": "blue", "mac": "02:00:00:00:02:0b", "ip": VM1}]
        remote = [VM2]
    else:
        vifs = [{"name": "tr-red2", "network": "red", "mac": VM2_MAC, "ip": VM2},
                {"name": "tr-blue2", "network": "blue", "mac": "02:00:00:00:02:0c", "ip": VM2}]
        remote = [VM1, VM3]
    routes = []
    for net, label in (("red", 100), ("blue", 200)):
        for addr in remote:
            if net == "blue" and addr == VM3:
                continue
            routes.append({"network": net, "prefix": addr + "/32",
                           "nexthop": {"type": "tunnel", "peer": other, "label": label, "encap": encap}})
    d = {
        "server": name, "underlay_ip": me, "encapsulation": encap,
        "networks": [{"name": "red", "id": 100, "subnets": ["192.168.1.0/24"], "gateway": "192.168.1.1"},
                     {"name": "blue", "id": 200, "subnets": ["192.168.1.0/24"]}],
        "vifs": vifs, "routes": routes, "peers": [other],
        "policies": copy.deepcopy(policies or []),
        "flow": {"mode": mode, **(flow or {})},
    }
    return d


def server(name, **kw):
    return VrouterConfig.from_dict(server_dict(name, **kw))


class Pair:
    """Two vrouters back to back, each with its agent's slow path, wired like the real shells."""

    def __init__(self, configs=None, **kw):
        """``configs``: server name -> VrouterConfig (any number of servers); else srv1 and srv2 of
        ``server(name, **kw)``."""
        self.cfg = configs or {n: server(n, **kw) for n in ("srv1", "srv2")}
        self.pipe = {n: Pipeline(c) for n, c in self.cfg.items()}
        self.slow = {n: SlowPath(c) for n, c in self.cfg.items()}
        self.punts = dict.fromkeys(self.cfg, 0)
        self.underlay = {c.underlay_ip: n for n, c in self.cfg.items()}
        self.address = {n: c.underlay_ip for n, c in self.cfg.items()}

    def run(self, srv, actions, now):
        """Resolve actions like the shells would: tunnels cross the fabric, then the punts queued
        meanwhile go to the agent at once. Returns the terminal actions (ToVif / Drop) in order."""
        out = []
        for a in actions:
            if isinstance(a, ToTunnel):
                dst = self.underlay[a.peer]
                out += self.run(dst, self.pipe[dst].from_fabric(self.address[srv], a.encap, a.payload, now), now)
            else:
                out.append(a)
        for request in self.pipe[srv].take_punts(now):
            self.punts[srv] += 1
            decision = self.slow[srv].decide(request, now)
            out += self.run(srv, self.pipe[srv].install(decision, now), now)
        return out

    def send(self, srv, vif, frame, now=0.0):
        return self.run(srv, self.pipe[srv].from_vif(vif, frame, now), now)


def punted(pipe, actions, now=0.0):
    """The one punt request a miss queued (its packet returned no action), else AssertionError."""
    assert actions == [], actions
    (request,) = pipe.take_punts(now)
    return request


def tcp_frame(src, dst, sport, dport, flags, src_mac=VM1_MAC, payload=b"", ttl=64, options=b"", seq=0, ack=0):
    seg = l4.build_tcp(ip_to_int(src), ip_to_int(dst), sport, dport, payload, seq=seq, ack=ack, flags=flags)
    return ethernet.build(VROUTER_MAC, ethernet.mac_to_bytes(src_mac), ethernet.ETH_P_IP) + \
        ipv4.build(ip_to_int(src), ip_to_int(dst), ipv4.IPPROTO_TCP, seg, ttl=ttl, options=options)


def udp_frame(src, dst, sport, dport, src_mac=VM1_MAC, payload=b"x", ttl=64):
    seg = l4.build_udp(ip_to_int(src), ip_to_int(dst), sport, dport, payload)
    return ethernet.build(VROUTER_MAC, ethernet.mac_to_bytes(src_mac), ethernet.ETH_P_IP) + \
        ipv4.build(ip_to_int(src), ip_to_int(dst), ipv4.IPPROTO_UDP, seg, ttl=ttl)


def icmp_frame(src, dst, ident=7, seq=1, type_=8, src_mac=VM1_MAC, payload=b"ping"):
    msg = l4.build_icmp(type_, 0, ident, seq, payload)
    return ethernet.build(VROUTER_MAC, ethernet.mac_to_bytes(src_mac), ethernet.ETH_P_IP) + \
        ipv4.build(ip_to_int(src), ip_to_int(dst), ipv4.IPPROTO_ICMP, msg)
