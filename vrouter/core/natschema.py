"""The overlay schema's NAT part: floating IPs, source NAT and the default network, written once.

Why a module of its own: schema.py holds the other overlay rules and is near the size limit; these
checks are used the same three ways (topology files collect every problem, the VNC refuses a
run-time change at its first, the vrouter config likewise), with the same words.

The rules (docs/topology-format.md, "The gateway and NAT"):
- the floating range is a CIDR with host bits zero; its top addresses are the servers' SNAT
  addresses (the i-th server of the topology, from 1, gets the range's broadcast address minus i),
  so a floating IP is inside the range, not its network or broadcast address, not a server's SNAT
  address, and held by one VM at most; a VM has at most one floating IP;
- ``snat`` names networks (each once) whose VMs without a floating IP reach outside through their
  server's SNAT address, with their source port (ICMP echo: identifier) taken from ``SNAT_PORTS``.

Pure (a core module).
"""
from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from .codec.ipv4 import int_to_ip, mask
from .schema import Prefix, Problems, address, inside, items, mapping, prefix, prefix_text, reference

# The routing instance of the default network (the seed's default forwarding table): underlay and
# external destinations. 0 is no network's id (labels start at 16, VNIs at 1).
DEFAULT_VRF = 0
DEFAULT_NETWORK = "default"
SNAT_PORTS = (20000, 59999)          # translated source ports (and ICMP echo ids) per protocol
FLOATING_KEYS = ("vm", "address")
NAT_KEYS = ("floating", "snat_address", "snat_networks", "snat_ports", "floating_ips")


def snat_address(floating: Prefix, index: int) -> int:
    """The SNAT address of the ``index``-th server (from 1) of a topology: from the top of the range."""
    net, plen = floating
    return (net | ~mask(plen) & 0xFFFFFFFF) - index


def floating_range(p: Problems, where: str, value: object, servers: int) -> Prefix | None:
    """The floating range: a CIDR with room for the servers' SNAT addresses and floating IPs."""
    pfx = prefix(p, where, value, "198.51.100.0/24")
    if pfx is not None and (1 << (32 - pfx[1])) < servers + 3:
        p.add(where, f"{prefix_text(pfx)} is too small for {servers} SNAT addresses and a floating IP")
        return None
    return pfx


def floating_address(p: Problems, where: str, value: object, floating: Prefix, snat: Mapping[int, str],
                     held: Mapping[int, str]) -> int | None:
    """A floating IP: inside the range, not its network/broadcast address, nobody's SNAT address,
    and not held by another VM (``held``: address -> holder)."""
    ip = address(p, where, value)
    if ip is None:
        return None
    text, net, plen = int_to_ip(ip), *floating
    if not inside(ip, floating):
        p.add(where, f"{text} is outside the floating range {prefix_text(floating)}")
    elif ip in (net, net | ~mask(plen) & 0xFFFFFFFF):
        p.add(where, f"{text} is the network or broadcast address of {prefix_text(floating)}")
    elif ip in snat:
        p.add(where, f"{text} is the SNAT address of server {snat[ip]!r}")
    elif ip in held:
        p.add(where, f"{text} is already the floating IP of {held[ip]}")
    else:
        return ip
    return None


@dataclass(frozen=True)
class FloatingIp:
    vm: str          # the VM (topology, VNC) or its VIF (vrouter config)
    address: int


def floating_ips(p: Problems, where: str, value: object, vms: Collection[str], floating: Prefix,
                 snat: Mapping[int, str], what: str = "VM", key: str = "vm") -> list[FloatingIp]:
    """A list of {vm, address} (``key`` names the VM field: "vif" in a vrouter config)."""
    out: list[FloatingIp] = []
    held: dict[int, str] = {}
    owners: dict[str, str] = {}
    for i, item in enumerate(items(p, where, value)):
        at = f"{where}[{i}]"
        m = mapping(p, at, item, (key, "address"), (key, "address"))
        if m is None or key not in m or "address" not in m:
            continue
        vm = reference(p, f"{at}.{key}", m[key], vms, what)
        ip = floating_address(p, f"{at}.address", m["address"], floating, snat, held)
        if vm is None or ip is None:
            continue
        if vm in owners:
            p.add(f"{at}.{key}", f"{what} {vm!r} already has a floating IP ({owners[vm]})")
            continue
        held[ip], owners[vm] = f"{what} {vm!r}", int_to_ip(ip)
        out.append(FloatingIp(vm, ip))
    return out


def snat_networks(p: Problems, where: str, value: object, networks: Collection[str]) -> list[str]:
    """Names of networks with source NAT, each once."""
    out: list[str] = []
    for i, item in enumerate(items(p, where, value)):
        name = reference(p, f"{where}[{i}]", item, networks, "virtual network")
        if name is not None and name in out:
            p.add(f"{where}[{i}]", f"network {name!r} is listed twice")
        elif name is not None:
            out.append(name)
    return out


@dataclass(frozen=True)
class NatSettings:
    """A vrouter's NAT: its floating range, SNAT address and networks, its VIFs' floating IPs."""
    floating: Prefix
    snat_address: int | None
    snat_networks: tuple[str, ...]
    snat_ports: tuple[int, int]
    floating_ips: tuple[FloatingIp, ...]     # FloatingIp.vm is the VIF name here


def vrouter_nat(p: Problems, where: str, item: object, vifs: Collection[str],
                networks: Collection[str]) -> NatSettings | None:
    """The ``nat`` section of a vrouter config (what the VNC sends a server of a gateway topology)."""
    m = mapping(p, where, item, NAT_KEYS, ("floating",))
    if m is None or "floating" not in m:
        return None
    floating = prefix(p, f"{where}.floating", m["floating"], "198.51.100.0/24")
    if floating is None:
        return None
    snat: int | None = None
    if m.get("snat_address") is not None:
        snat = address(p, f"{where}.snat_address", m["snat_address"])
        if snat is not None and not inside(snat, floating):
            p.add(f"{where}.snat_address", f"{int_to_ip(snat)} is outside the floating range")
    ports = _ports(p, f"{where}.snat_ports", m.get("snat_ports", list(SNAT_PORTS)))
    fips = floating_ips(p, f"{where}.floating_ips", m.get("floating_ips"), vifs, floating,
                        {snat: "this server"} if snat is not None else {}, "vif", "vif")
    nets = snat_networks(p, f"{where}.snat_networks", m.get("snat_networks"), networks)
    if nets and snat is None:
        p.add(f"{where}.snat_networks", "source NAT needs snat_address")
    return NatSettings(floating, snat, tuple(nets), ports or SNAT_PORTS, tuple(fips))


def _ports(p: Problems, where: str, value: Any) -> tuple[int, int] | None:
    if not (isinstance(value, list | tuple) and len(value) == 2 and all(
            type(v) is int and 1 <= v <= 65535 for v in value) and value[0] <= value[1]):
        p.add(where, f"expected [first, last] ports in 1..65535, got {value!r}")
        return None
    return value[0], value[1]
