"""A VM's interface: the TAP the vrouter serves it through, created and configured in its namespace.

Shared by the single forwarder (one queue) and the multi-core vrouter (one fd per worker on a
multi-queue TAP), so either can take over a VM the other served: a TAP that exists with the other
kind of queues is re-created, since the kernel refuses to attach across the two (EINVAL).
"""
from __future__ import annotations

import errno
import os
import socket
import subprocess

from vrouter.core.codec.ipv4 import int_to_ip
from vrouter.io import tap

# Packets the VM's interface queues for the vrouter (its txqueuelen; the kernel's default is 1000).
# A forwarder sharing two cores with the VMs' own programs is descheduled for tens of ms at times; a
# VM sending 100k packets/s fills 1000 in 10 ms and drops whatever it sends next, its established
# flows' packets included. 10,000 rides out ~100 ms at that rate (at most ~20 MB of buffers per VM).
VM_TXQUEUELEN = 10000


class VmSetupError(Exception):
    """The VM's interface could not be configured inside its namespace."""


def attach(spec, netns, network, mtu: int, queues: int = 1, offloads: bool = True) -> list:
    """Queue fds (one unless `queues` > 1) for VM interface `spec`, creating it on first use.

    A new TAP is created here (server namespace), moved into the VM's namespace, and given the VM's
    MAC, address, MTU and a default route via the network's gateway (the vrouter answers ARP for it),
    and the service addresses it is a member of (``set_services``). An existing one (vrouter restart)
    is only re-attached and given the MTU, which the configuration
    decides (`vrouter.core.offload.vm_mtu`). Every fd carries virtio_net_hdrs; `offloads` (the GSO switch)
    says whether the device advertises checksum offload and TSO.
    """
    if exists(spec.name, netns):
        try:
            fds = open_queues(spec.name, queues, netns, offloads)
        except tap.TapError as exc:
            if exc.errno != errno.EINVAL:
                raise
            with tap.in_netns(netns):
                _ip("link", "del", spec.name)
        else:
            try:
                set_mtu(spec.name, netns, mtu)
            except BaseException:
                _close(fds)
                raise
            return fds
    fds = open_queues(spec.name, queues, offloads=offloads)
    try:
        configure(spec, netns, network, mtu)
    except BaseException:
        _close(fds[1:])
        tap.destroy_tap(fds[0])
        raise
    return fds


def open_queues(name: str, queues: int, netns=None, offloads: bool = True) -> list:
    """``queues`` fds of TAP ``name`` (multi-queue when more than one; one plain fd otherwise), with
    virtio_net_hdr; ``offloads``: advertise checksum offload and TSO (`tap.set_offloads`)."""
    fds = []
    try:
        for _ in range(queues):
            fds.append(tap.open_tap(name, netns=netns, vnet_hdr=True, multi_queue=queues > 1))
            if not offloads:     # gso off: the VM segments and completes checksums itself
                tap.set_offloads(fds[-1], False)
    except BaseException:
        _close(fds)
        raise
    return fds


def exists(name: str, netns) -> bool:
    with tap.in_netns(netns):
        try:
            socket.if_nametoindex(name)
            return True
        except OSError:
            return False


def set_mtu(name: str, netns, mtu: int) -> None:
    with tap.in_netns(netns):
        _ip("link", "set", name, "mtu", str(mtu))


def configure(spec, netns, network, mtu: int) -> None:
    """Move the freshly created TAP `spec.name` into the VM's namespace and give it the VM's MAC,
    address, MTU and a default route via the network's gateway."""
    _ip("link", "set", spec.name, "netns", str(netns) if isinstance(netns, int) else os.path.basename(netns))
    ip = int_to_ip(spec.ip)
    plen = next((p for net, p in network.subnets if (spec.ip >> (32 - p)) == (net >> (32 - p))), 32)
    mac = ":".join(f"{b:02x}" for b in spec.mac)
    with tap.in_netns(netns):  # one `ip` for all: a server of many VMs starts one process per VM, not seven
        _ip_batch([("link", "set", "lo", "up"),
                   ("link", "set", spec.name, "address", mac),
                   ("link", "set", spec.name, "mtu", str(mtu)),
                   ("link", "set", spec.name, "txqueuelen", str(VM_TXQUEUELEN)),
                   ("addr", "add", f"{ip}/{plen}", "dev", spec.name),
                   *(("addr", "replace", f"{int_to_ip(a)}/32", "dev", spec.name) for a in spec.services),
                   ("link", "set", spec.name, "up"),
                   ("route", "replace", "default", "via", int_to_ip(network.gateway), "dev", spec.name)])


def set_services(name: str, netns, add, remove) -> None:
    """The service addresses (ints) a member VM answers for (vrouter/core/ecmp.py): each is a /32 on
    its interface, so the VM accepts connections to it and replies from it."""
    with tap.in_netns(netns):
        for addr in add:
            _ip("addr", "replace", f"{int_to_ip(addr)}/32", "dev", name)
        for addr in remove:
            # not checked: an address already gone (the VM's own doing) is what we wanted
            subprocess.run(("ip", "addr", "del", f"{int_to_ip(addr)}/32", "dev", name), capture_output=True)


def sync_services(old, spec, netns) -> str | None:
    """A member VM's service addresses follow its VIF spec (``old``: the spec it had, None for an
    interface attached now, e.g. after a vrouter restart); the error, if the addresses could not be set."""
    have = set(old.services) if old is not None else set()
    add, remove = set(spec.services) - have, have - set(spec.services)
    if not (add or remove):
        return None
    try:
        set_services(spec.name, netns, sorted(add), sorted(remove))
    except (tap.TapError, VmSetupError) as exc:
        return f"vif {spec.name}: service addresses not set: {exc}"
    return None


def _close(fds) -> None:
    for fd in fds:
        os.close(fd)


def _ip(*args):
    r = subprocess.run(("ip",) + args, capture_output=True, text=True)
    if r.returncode != 0:
        raise VmSetupError(f"ip {' '.join(args)}: {r.stderr.strip()}")


def _ip_batch(commands: list[tuple[str, ...]]) -> None:
    """`ip -batch`: stops at the first command that fails, which the error names."""
    lines = [" ".join(c) for c in commands]
    r = subprocess.run(("ip", "-batch", "-"), input="\n".join(lines) + "\n", capture_output=True, text=True)
    if r.returncode != 0:
        raise VmSetupError(f"ip -batch ({'; '.join(lines)}): {r.stderr.strip()}")
