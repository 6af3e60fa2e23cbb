"""TAP devices that are a VM's network interface, owned by the forwarder.

The device is persistent: when the forwarder dies the VM keeps its interface (address, routes), and a
restarted forwarder re-attaches by name. The device usually lives in the VM's network namespace, so
attaching means entering that namespace around the open of /dev/net/tun (the tun driver binds the file
to the namespace of the process that opened it) and coming back.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import struct

TUNSETIFF = 0x400454CA
TUNSETPERSIST = 0x400454CB
TUNSETOFFLOAD = 0x400454D0
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000  # every read/write then carries a 10-byte virtio_net_hdr
IFF_MULTI_QUEUE = 0x0100  # one fd per queue (the multi-core vrouter's kernel mode)
TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6 = 0x1, 0x2, 0x4
OFFLOADS = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6
# A frame read from a vnet-header TAP: 10-byte header + up to 14 + 65535 bytes (a TSO super-frame).
READ_SIZE = 10 + 14 + 65535
# Frames read from one TAP per loop round (NAPI's weight): a VM that floods gets this many per round
# like every other VM, whatever its rate, so the others' packets never wait behind its backlog.
VIF_WEIGHT = 64
CLONE_NEWNET = 0x40000000
IFNAMSIZ = 16

_libc = ctypes.CDLL(None, use_errno=True)


class TapError(Exception):
    """A TAP device could not be created or attached; the message says which and why, `errno` the
    kernel's reason when there is one."""

    def __init__(self, message: str, errno: int | None = None):
        super().__init__(message)
        self.errno = errno


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise TapError(f"setns failed: {os.strerror(err)}")


def netns_path(netns: int | str) -> str:
    """A pid names the namespace of that process; a string is a path such as /run/netns/NAME.

    Named namespaces are bind mounts in the mount namespace where `ip netns add` ran: a process in
    another mount namespace (a Mininet host's) sees an empty file there, and setns fails (EINVAL).
    """
    return f"/proc/{netns}/ns/net" if isinstance(netns, int) else netns


@contextlib.contextmanager
def in_netns(netns: int | str | None):
    """Run the body in network namespace `netns` (pid or path; None: stay where we are).

    Only the calling thread switches; the forwarder is single-threaded, so that is the whole process.
    Sockets and TAP files opened inside stay bound to that namespace after we switch back.
    """
    if netns is None:
        yield
        return
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        try:
            target = os.open(netns_path(netns), os.O_RDONLY)
        except OSError as exc:
            raise TapError(f"no network namespace {netns_path(netns)}: {exc.strerror}") from None
        try:
            _setns(target)
        finally:
            os.close(target)
        try:
            yield
        finally:
            _setns(own)
    finally:
        os.close(own)


def open_tap(name: str, *, netns: int | str | None = None, vnet_hdr: bool = False,
             multi_queue: bool = False) -> int:
    """Create (or attach to) persistent TAP `name` in namespace `netns` (see in_netns); return a
    non-blocking fd (with `multi_queue`, one queue's: open it once per queue)."""
    if not name or len(name.encode()) >= IFNAMSIZ:
        raise TapError(f"bad TAP name {name!r}: 1..{IFNAMSIZ - 1} bytes")
    with in_netns(netns):
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        flags = IFF_TAP | IFF_NO_PI | (IFF_VNET_HDR if vnet_hdr else 0) | (IFF_MULTI_QUEUE if multi_queue else 0)
        try:
            fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", name.encode(), flags))
        except OSError as exc:
            raise TapError(f"TUNSETIFF {name}: {exc.strerror}", exc.errno) from None
        fcntl.ioctl(fd, TUNSETPERSIST, 1)
        if vnet_hdr:
            set_offloads(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def set_offloads(fd: int, on: bool) -> None:
    """Advertise (or withdraw) checksum offload and TSO on the TAP's device.

    On: the VM's kernel hands over 64 KB TCP super-frames with partial checksums. Off: it segments
    and checksums itself, so every frame is one MSS-sized packet with complete checksums (the
    packet-by-packet baseline). Frames written to the TAP may carry NEEDS_CSUM/GSO either way.
    """
    try:
        fcntl.ioctl(fd, TUNSETOFFLOAD, OFFLOADS if on else 0)
    except OSError as exc:
        raise TapError(f"TUNSETOFFLOAD: {exc.strerror}") from None


def destroy_tap(fd: int) -> None:
    """Drop persistence and close: the kernel removes the device (and its addresses) at once."""
    try:
        fcntl.ioctl(fd, TUNSETPERSIST, 0)
    except OSError:
        pass  # EBADFD: the device already went with its namespace
    finally:
        os.close(fd)


def read_frames(fd: int, max_frames: int = VIF_WEIGHT, bufsize: int = READ_SIZE) -> list[bytes]:
    """Up to `max_frames` frames without blocking (bounded so one busy VM cannot starve others)."""
    frames = []
    for _ in range(max_frames):
        try:
            frames.append(os.read(fd, bufsize))
        except BlockingIOError:
            break
    return frames


def write_frame(fd: int, frame: bytes) -> bool:
    """Write one frame; False when the device is down or its queue is full (the frame is lost, as on a NIC)."""
    try:
        os.write(fd, frame)
        return True
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EIO, errno.ENOBUFS):  # EIO: the VM's link is down
            return False
        raise


def write_vnet(fd: int, vnet: bytes, frame, tail=b"") -> bool:
    """Write one frame behind its virtio_net_hdr (a TAP opened with vnet_hdr=True); as write_frame.
    `tail` continues the frame (a merged GRO delivery's data, `ToVifParts.tail`) in the same writev."""
    try:
        os.writev(fd, (vnet, frame, tail) if tail else (vnet, frame))
        return True
    except OSError as exc:
        # EINVAL: the kernel refused the header (e.g. a GSO frame it cannot take); lost like a bad frame
        if exc.errno in (errno.EAGAIN, errno.EIO, errno.ENOBUFS, errno.EINVAL):
            return False
        raise
