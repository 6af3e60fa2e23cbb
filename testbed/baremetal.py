"""Bare-metal hosts in the testbed: the fabric side of the `baremetal:` section, the Mininet host with
its Linux VXLAN device, and the shell that applies the VNC's forwarding entries inside it.

Why: a bare-metal host (or a top-of-rack switch's VTEP) runs no vrouter; it joins one virtual network
through a standard `ip link add ... type vxlan` device. Its overlay side is checked by the schema's
continuation (vrouter/core/baremetal.py); here the fabric side (its leaf, its underlay address, like a
server's or the gateway's). The VNC computes the host's entries (controllers/vnc_baremetal.py);
`sync` reads the device's fdb and neighbour tables and applies only the differences (`diff`, pure), so
a VM added or removed at run time (`testbed net add-vm` / `rm-vm`, `overlay.add_vm`) updates the host
without touching what is already right, and a neighbour entry the kernel learned by ARP (answered by
the vrouter, vrouter/core/fabric_arp.py) is kept while it names the right MAC.
"""
from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

from controllers.vnc_baremetal import FLOOD_MAC
from vrouter.core import baremetal, schema
from vrouter.core.codec.ipv4 import int_to_ip, mask
from vrouter.core.codec.outer import VXLAN_PORT
from vrouter.core.offload import OVERHEAD, UNDERLAY_MTU
from vrouter.core.schema import Problems


@dataclass(frozen=True)
class BareMetalHost:
    name: str
    leaf: str
    address: str            # underlay
    network: str
    overlay_address: str
    mac: str                # its VXLAN device's


def check(p: Problems, value: object, networks: dict, names: dict, leaves: set[str], underlay: schema.Prefix | None,
          addresses: dict[int, str], taken: dict, macs: dict) -> list[BareMetalHost]:
    """The `baremetal:` section: the overlay side by the schema (core/baremetal.py), then the fabric
    side: `leaf` a leaf, `address` a host address of the underlay that no server or gateway has."""
    out = []
    for i, item in enumerate(schema.items(p, "baremetal", value)):
        where = f"baremetal[{i}]"
        host = baremetal.host(p, where, item, networks, names, taken, macs)
        if not isinstance(item, dict):
            continue
        leaf = item.get("leaf")
        if "leaf" in item and leaf not in leaves:
            p.add(f"{where}.leaf", f"{leaf!r} is not a leaf of this topology")
            continue
        if host is None or underlay is None:
            continue
        text = int_to_ip(host.address)
        net, plen = underlay
        if not schema.inside(host.address, underlay):
            p.add(f"{where}.address", f"{text} is outside the underlay {schema.prefix_text(underlay)}")
        elif plen < 31 and host.address in (net, net | ~mask(plen) & 0xFFFFFFFF):
            p.add(f"{where}.address", f"{text} is the network or broadcast address of {schema.prefix_text(underlay)}")
        elif host.address in addresses:
            p.add(f"{where}.address", f"{text} is already used by {addresses[host.address]}")
        else:
            addresses[host.address] = f"bare-metal host {host.name!r}"
            out.append(BareMetalHost(host.name, str(leaf), text, host.network, int_to_ip(host.overlay_address),
                                     host.mac))
    return out


def describe(host: BareMetalHost, index: int, prefix: str, leaf_port: int, leaf_intf: str, mac: str) -> dict:
    """A host's part of the fabric description (testbed/fabric.py): shaped like a server's, so the
    fabric routes to its underlay address and answers ARP for it (controllers/fabric_logic.py)."""
    return {"name": host.name, "ip": host.address, "mac": mac, "intf": f"{prefix}-m{index}", "leaf": host.leaf,
            "leaf_port": leaf_port, "leaf_intf": leaf_intf, "network": host.network,
            "overlay_address": host.overlay_address, "overlay_mac": host.mac}


def build(net, desc: dict, plen: int, nodes: dict) -> None:
    """Add the hosts to a Mininet network being built (testbed/network.py), one link to their leaf."""
    for h in desc.get("baremetal", ()):
        nodes[h["name"]] = net.addHost(h["name"], ip=f"{h['ip']}/{plen}", mac=h["mac"])
        net.addLink(nodes[h["name"]], nodes[h["leaf"]], port1=0, port2=h["leaf_port"], intfName1=h["intf"],
                    intfName2=h["leaf_intf"])


def setup_commands(h: dict, record: dict, plen: int) -> list[str]:
    """The host's VXLAN device: standard Linux, no vrouter. Its MTU is the VMs' (the underlay's less
    VXLAN's overhead, vrouter/core/offload.py); checksums are filled in by software (a veth's
    offloaded checksum would reach the vrouter's socket unfilled)."""
    dev = record["device"]
    return ["sysctl -qw net.ipv6.conf.all.disable_ipv6=1", f"ethtool -K {h['intf']} tx off >/dev/null 2>&1",
            f"ip link add {dev} type vxlan id {record['vni']} local {h['ip']} dstport {VXLAN_PORT} nolearning",
            f"ip link set {dev} address {record['mac']} mtu {UNDERLAY_MTU - OVERHEAD['vxlan']}",
            f"ethtool -K {dev} tx off >/dev/null 2>&1",
            f"ip addr add {record['overlay_address']}/{plen} dev {dev}", f"ip link set {dev} up"]


def overlay_plen(address: str, networks: list[dict]) -> int:
    """The prefix length of the subnet of `networks` (the VNC's records) that holds `address`."""
    ip = schema.parse_address(address)
    for n in networks:
        for s in n["subnets"]:
            pfx = schema.parse_cidr(s)
            if pfx is not None and ip is not None and schema.inside(ip, pfx):
                return pfx[1]
    return 32


# ---- the entries as differences (pure)
def parse_fdb(text: str) -> set[tuple[str, str]]:
    """`bridge fdb show dev D`: the (MAC, destination) entries (the device's own addresses have no dst)."""
    out = set()
    for line in text.splitlines():
        parts = line.split()
        if "dst" in parts and parts.index("dst") + 1 < len(parts):
            out.add((parts[0].lower(), parts[parts.index("dst") + 1]))
    return out


def parse_neigh(text: str) -> dict[str, tuple[str | None, str]]:
    """`ip neigh show dev D`: address -> (MAC or None, state)."""
    out = {}
    for line in text.splitlines():
        parts = line.split()
        if not parts or schema.parse_address(parts[0]) is None:
            continue
        mac = parts[parts.index("lladdr") + 1].lower() if "lladdr" in parts[:-1] else None
        out[parts[0]] = (mac, parts[-1])
    return out


def diff(fdb_now: set[tuple[str, str]], neigh_now: dict[str, tuple[str | None, str]], want: dict) -> list[str]:
    """The commands that turn the device's entries into the VNC's (`want`: its record of the host):
    flood entries appended or deleted one destination at a time, a VM MAC's entry replaced (it may
    have moved) or deleted, a neighbour entry set permanent unless it already names the right MAC
    (one the kernel learned by ARP stays), our permanent entries of gone VMs deleted."""
    dev = want["device"]
    fdb = {(m, d) for m, d in want["fdb"]}
    macs = {m for m, _ in fdb if m != FLOOD_MAC}
    cmds = [f"bridge fdb del {m} dev {dev} dst {d}" for m, d in sorted(fdb_now - fdb)
            if m == FLOOD_MAC or m not in macs]
    for m, d in sorted(fdb - fdb_now):
        verb = "append" if m == FLOOD_MAC else "replace"
        cmds.append(f"bridge fdb {verb} {m} dev {dev} dst {d}")
    neigh = dict(want["neigh"])
    cmds += [f"ip neigh del {ip} dev {dev}" for ip, (_, state) in sorted(neigh_now.items())
             if ip not in neigh and state == "PERMANENT"]
    cmds += [f"ip neigh replace {ip} lladdr {mac} dev {dev} nud permanent" for ip, mac in want["neigh"]
             if neigh_now.get(ip, (None, ""))[0] != mac]
    return cmds


# ---- the shell: commands in the host's namespace
def sync(run, record: dict) -> list[str]:
    """Apply the VNC's entries for one host as differences; ``run(shell command) -> output`` runs in the
    host's namespace. Returns the commands applied."""
    dev = record["device"]
    cmds = diff(parse_fdb(run(f"bridge fdb show dev {dev}")), parse_neigh(run(f"ip neigh show dev {dev}")), record)
    for c in cmds:
        run(c)
    return cmds


def join(run, h: dict, record: dict, networks: list[dict]) -> None:
    """A host joins its network: its VXLAN device (`h`: its fabric description), then its entries."""
    for c in setup_commands(h, record, overlay_plen(record["overlay_address"], networks)):
        run(c)
    sync(run, record)


def leave(run, record: dict) -> None:
    """A host taken out (`net baremetal rm`): its VXLAN device goes, with its fdb and neighbour entries."""
    run(f"ip link del {record['device']}")


def configure(net, desc: dict, dump: dict) -> None:
    """After the overlay started: each joined host's VXLAN device, then its entries (testbed/overlay.py)."""
    records = {r["name"]: r for r in dump.get("baremetal", [])}
    for h in desc.get("baremetal", ()):
        if h["name"] in records:
            join(net[h["name"]].cmd, h, records[h["name"]], dump["networks"])


def ns_runner(rundir: Path, name: str):
    """``run(cmd) -> output`` inside a host's namespace from another process (the CLI), through the
    namespace handle the testbed holds (testbed/namespaces.py)."""
    handle = Path(rundir) / "netns" / name

    def run(cmd: str) -> str:
        r = subprocess.run(["nsenter", f"--net={handle}", "sh", "-c", cmd], capture_output=True, text=True)
        return r.stdout + r.stderr
    return run


def sync_rundir(rundir: Path, dump: dict) -> dict[str, list[str]]:
    """Every host of a running testbed brought to the VNC's entries (`dump`: the VNC's); name -> commands."""
    fabric = json.loads((Path(rundir) / "fabric.json").read_text())
    records = {r["name"]: r for r in dump.get("baremetal", [])}
    return {h["name"]: sync(ns_runner(rundir, h["name"]), records[h["name"]]) for h in fabric.get("baremetal", ())
            if h["name"] in records}
