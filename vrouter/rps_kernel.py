"""NIC plumbing for the multi-core vrouter: tunnel receive/send sockets, (multi-queue) TAPs, pinning.

Separate from `vrouter.tunnel`/`vrouter.tap` (the single forwarder's) because several processes share
one server's ports here:
- receive sockets are either one per NIC (read by the dispatcher) or, in kernel mode, one per worker
  with SO_REUSEPORT, so the kernel picks a worker by a hash of the OUTER 4-tuple;
- a raw GRE socket receives a copy of every GRE packet, so only one process may hold a reading one;
  every other raw GRE socket (the workers' senders) gets a BPF filter that drops everything;
- entropy source ports are bound by every worker that sends a flow's packets (SO_REUSEPORT), and
  nothing is ever sent to them;
- a TAP opened with IFF_MULTI_QUEUE gives one fd per queue; the VM's kernel picks the queue of each
  frame it sends (a flow hash, and the queue the flow's last received frame came from).
"""
from __future__ import annotations

import ctypes
import errno
import os
import socket
import struct

from vrouter import tap, tunnel
from vrouter.tunnel import IPPROTO_GRE, EntropySender

SO_ATTACH_FILTER = 26


class NicError(Exception):
    """A socket or TAP of the multi-core vrouter could not be opened; one line."""


def pin(cpu: int | None) -> None:
    """Pin this process to one CPU (psutil), or leave it floating for None."""
    if cpu is None:
        return
    import psutil
    try:
        psutil.Process().cpu_affinity([cpu])
    except (ValueError, OSError) as exc:
        raise NicError(f"cannot pin to CPU {cpu}: {exc}") from None


def drop_all_filter(sock: socket.socket) -> None:
    """Attach a one-instruction classic BPF program (``ret #0``): the socket receives nothing."""
    insn = ctypes.create_string_buffer(struct.pack("HBBI", 0x06, 0, 0, 0))
    prog = struct.pack("HL", 1, ctypes.addressof(insn))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, prog)


def open_rx(reuseport: bool, gre: bool = True) -> dict:
    """{socket: encap} receive sockets on UDP 6635 and 4789 (and raw GRE unless ``gre`` is False)."""
    try:
        return tunnel.open_rx(reuseport=reuseport, gre=gre)
    except OSError as exc:
        raise NicError(f"cannot open fabric receive sockets: {exc.strerror}") from None


def receive(sock: socket.socket, encap: str, counters, max_packets: int = 64) -> list:
    """Drain up to ``max_packets``: [(outer src, outer source port, payload as the core wants it)]."""
    out = []
    for _ in range(max_packets):
        try:
            data, (src, sport) = sock.recvfrom(65535)
        except BlockingIOError:
            break
        except OSError as exc:   # queued ICMP errors surface here; they are not packets
            if exc.errno in (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH):
                counters["rx_icmp_errors"] += 1
                continue
            raise
        if encap == "mplsogre":
            if len(data) < 20:
                counters["rx_runts"] += 1
                continue
            data = data[(data[0] & 0x0F) * 4:]   # raw sockets include the outer IPv4 header
        out.append((src, sport, data))
    counters[f"rx_{encap}"] += len(out)
    return out


class Sender(EntropySender):
    """Send-only tunnel sockets of one worker: entropy-port UDP pool and a deaf raw GRE socket."""

    REUSEPORT = True    # another worker may send other flows with the same entropy port

    def __init__(self, local_ip: str, pool_size: int = 512):
        super().__init__(local_ip, pool_size)
        self._gre = socket.socket(socket.AF_INET, socket.SOCK_RAW, IPPROTO_GRE)
        drop_all_filter(self._gre)
        self._gre.setblocking(False)
        self._udp_fallback = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._udp_fallback.setblocking(False)

    def close(self) -> None:
        for s in [self._gre, self._udp_fallback, *self._pool.values()]:
            s.close()
        self._pool.clear()

    def _fallback(self, encap: str) -> socket.socket:
        return self._udp_fallback

def _open_queue(name: str, netns, multi_queue: bool) -> int:
    fd = tap.open_tap(name, netns=netns, multi_queue=multi_queue)
    try:
        # Frames are read without a virtio_net_hdr here: withdraw the offloads a single forwarder with
        # vnet headers may have advertised, so the VM segments and completes checksums itself.
        tap.set_offloads(fd, False)
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_queues(name: str, queues: int, netns=None) -> list:
    """``queues`` fds of TAP ``name`` (multi-queue when more than one; one plain fd otherwise)."""
    fds = []
    try:
        for _ in range(queues):
            fds.append(_open_queue(name, netns, queues > 1))
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    return fds


def attach_vm_interface(spec, netns, network, queues: int, mtu: int) -> list:
    """Queue fds for VM interface ``spec``: re-attach if the TAP exists with the same kind (single or
    multi-queue), else create it (again) and configure it in the VM's namespace as the forwarder does
    (``mtu``: the VM MTU that leaves room for the encapsulation, `vrouter.offload.vm_mtu`)."""
    from vrouter.forwarder import _ip, configure_vm_interface, set_vm_mtu, vm_interface_exists
    if vm_interface_exists(spec.name, netns):
        try:
            fds = open_queues(spec.name, queues, netns)
        except tap.TapError as exc:
            if exc.errno != errno.EINVAL:    # EINVAL: single <-> multi-queue flags differ: re-create
                raise
            with tap.in_netns(netns):
                _ip("link", "del", spec.name)
        else:
            try:
                set_vm_mtu(spec.name, netns, mtu)
            except BaseException:
                for fd in fds:
                    os.close(fd)
                raise
            return fds
    fds = open_queues(spec.name, queues)
    try:
        configure_vm_interface(spec, netns, network, mtu)
    except BaseException:
        for fd in fds[1:]:
            os.close(fd)
        tap.destroy_tap(fds[0])
        raise
    return fds
