"""Build the Mininet network of a fabric description (testbed/fabric.py) and check it is programmed.

Mininet configures a link with a shell command per step in a node's shell (create the pair, bring
each end up, set a MAC in three steps, the address, ...): about 8 round trips per server, which in a
fabric of 128 servers were most of the fabric's bring-up. Here the veth pairs are created and their
switch ends brought up with one `ip -batch` in the root namespace, and each server's end configured
with one command line in the server (`Server.config`); Mininet keeps its node and interface objects
as usual (its CLI, `host.IP()`, teardown).
"""
from __future__ import annotations

import ipaddress
import resource
import socket
import subprocess
import time

from controllers.fabric_logic import COOKIE, FabricLogic
from testbed import baremetal, gateway

OVS_TIMEOUT = ["--timeout=10"]


def _mininet():
    from mininet.log import setLogLevel
    from mininet.net import Mininet

    # Mininet.init() would raise system-wide limits and sysctls; we only need more fds ourselves.
    Mininet.inited = True
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 8192 <= hard or hard == resource.RLIM_INFINITY:
        resource.setrlimit(resource.RLIMIT_NOFILE, (8192, hard))
    setLogLevel("output")  # Mininet CLI and pingAll print at this level
    return Mininet


def _remote_controller():
    """Mininet's RemoteController, checked with a Python connect instead of `telnet`: telnet's output
    can carry the controller's binary OpenFlow HELLO (a random xid), and Mininet decodes a node's
    output as strict UTF-8, so the check itself crashed a bring-up now and then (UnicodeDecodeError)."""
    from mininet.log import warn
    from mininet.node import RemoteController

    class TcpCheckedController(RemoteController):
        def isListening(self, ip, port):
            try:
                socket.create_connection((ip, port), timeout=2.0).close()
            except OSError as exc:
                warn(f"Unable to contact the remote controller at {ip}:{port}: {exc}\n")
                return False
            return True

    return TcpCheckedController


# No IPv6 autoconfiguration: it only adds noise to captures and port counters. Shell builtins: no
# program started per host.
NO_IPV6 = ("echo 1 > /proc/sys/net/ipv6/conf/all/disable_ipv6; "
           "echo 1 > /proc/sys/net/ipv6/conf/default/disable_ipv6")


class NetworkError(Exception):
    pass


def _batched_classes(pending: list):
    """A Mininet Link whose veth pair is only noted in `pending` (created later, all at once), and a
    server Host configured with one command."""
    from mininet.link import Link
    from mininet.node import Host

    class BatchedLink(Link):
        def makeIntfPair(self, intfname1, intfname2, addr1=None, addr2=None, node1=None, node2=None,
                         deleteIntfs=True):
            pending.append((intfname1, intfname2, node2))

    class Server(Host):
        def config(self, mac=None, ip=None, defaultRoute=None, lo="up", **_params):
            intf = self.defaultIntf()
            # The userspace datapath never completes partial checksums: without `tx off` TCP is dead.
            out = self.cmd(f"ip link set dev {intf} address {mac} && ip addr add {ip} dev {intf} && "
                           f"ip link set dev {intf} up && ip link set dev lo up; "
                           f"ethtool -K {intf} tx off >/dev/null 2>&1; {NO_IPV6}")
            if out.strip():
                raise NetworkError(f"configuring {self.name} ({intf} {mac} {ip}): {out.strip()}")
            intf.mac = mac
            intf.ip, intf.prefixLen = ip.split("/")
            return {}

    return BatchedLink, Server


def _make_pairs(pending: list) -> None:
    """Create the noted veth pairs in one `ip -batch`: the first end stays in the root namespace
    (a switch port) and comes up, the second goes to its node's namespace (or stays: switch-switch)."""
    lines = []
    for root_end, other_end, other in pending:
        there = f" netns {other.pid}" if other.inNamespace else ""
        lines.append(f"link add name {root_end} type veth peer name {other_end}{there}")
        lines.append(f"link set dev {root_end} up")
        if not other.inNamespace:
            lines.append(f"link set dev {other_end} up")
    r = subprocess.run(["ip", "-batch", "-"], input="\n".join(lines) + "\n", capture_output=True, text=True)
    if r.returncode != 0:
        raise NetworkError(f"creating the fabric's links: {r.stderr.strip()}")


def build(desc: dict, ofp_port: int, progress=None):
    """Create and start the network; returns the started Mininet object."""
    from mininet.link import Link
    from mininet.node import Host, OVSSwitch

    Mininet = _mininet()
    pending: list = []
    BatchedLink, Server = _batched_classes(pending)
    say = progress or (lambda msg: None)
    plen = ipaddress.IPv4Network(desc["underlay"]).prefixlen
    net = Mininet(topo=None, build=False, controller=None, switch=OVSSwitch, host=Host, link=Link,
                  autoSetMacs=False, autoStaticArp=False, waitConnected=False, ipBase=desc["underlay"])
    net.addController(f"{desc['prefix']}-c0", controller=_remote_controller(), ip="127.0.0.1", port=ofp_port)
    nodes = {}
    for sw in desc["switches"]:
        nodes[sw["name"]] = net.addSwitch(sw["bridge"], cls=OVSSwitch, dpid=f"{sw['dpid']:016x}",
                                          datapath="user", protocols="OpenFlow13,OpenFlow15", failMode="secure")
    for srv in desc["servers"]:
        nodes[srv["name"]] = net.addHost(srv["name"], cls=Server, ip=f"{srv['ip']}/{plen}", mac=srv["mac"])
    by_name = {sw["name"]: sw for sw in desc["switches"]}
    servers = {s["name"]: s for s in desc["servers"]}

    def intf(switch: str, port: int) -> str:  # named by fabric.describe
        return by_name[switch]["ports"][str(port)]["intf"]

    say(f"creating {len(desc['links'])} links")
    # up=None: Mininet brings no end up by itself (a command each); _make_pairs and Server.config do.
    for link in desc["links"]:
        a, b = link["a"], link["b"]
        if b in servers:  # the switch port is the pair's root end
            net.addLink(nodes[a], nodes[b], port1=link["a_port"], port2=0, intfName1=intf(a, link["a_port"]),
                        intfName2=servers[b]["intf"], cls=BatchedLink, up=None)
        else:
            net.addLink(nodes[a], nodes[b], port1=link["a_port"], port2=link["b_port"], cls=BatchedLink,
                        intfName1=intf(a, link["a_port"]), intfName2=intf(b, link["b_port"]), up=None)
    _make_pairs(pending)
    if desc.get("gateway"):
        gateway.build(net, desc, plen, nodes)
    baremetal.build(net, desc, plen, nodes)
    say(f"configuring {len(desc['servers'])} servers")
    net.build()
    say(f"starting {len(desc['switches'])} switches (userspace datapath)")
    net.start()
    return net


def our_flow_count(bridge: str) -> int:
    r = subprocess.run(["ovs-ofctl", "-O", "OpenFlow13", *OVS_TIMEOUT, "dump-flows", bridge,
                        f"cookie={COOKIE:#x}/-1"], capture_output=True, text=True)
    if r.returncode != 0:
        return -1
    return sum(1 for line in r.stdout.splitlines() if "cookie=" in line)


def wait_programmed(desc: dict, timeout: float = 60.0, progress=None) -> None:
    """Block until every switch holds all the controller's flows (so it is connected and forwarding)."""
    logic = FabricLogic(desc)
    want = {sw["bridge"]: len(logic.flows(sw["dpid"])) for sw in desc["switches"]}
    deadline = time.monotonic() + timeout
    pending = dict(want)
    while pending:
        for bridge in list(pending):
            if our_flow_count(bridge) >= want[bridge]:
                del pending[bridge]
        if not pending:
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"switches not programmed by the controller after {timeout:.0f} s: "
                               f"{', '.join(sorted(pending))}")
        if progress:
            progress(f"waiting for the controller: {len(want) - len(pending)}/{len(want)} switches ready")
        time.sleep(0.3)
