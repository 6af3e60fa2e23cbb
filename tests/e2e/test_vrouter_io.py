"""TAP and tunnel shells against the real kernel, in a private pair of namespaces (root, no Mininet)."""
import os
import select
import socket
import struct
import subprocess
import time
import uuid

import pytest

from vrouter.io import tap, tunnel

pytestmark = [pytest.mark.e2e,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root for namespaces and TAP")]

PREFIX = f"tvio{uuid.uuid4().hex[:5]}"


def sh(*args):
    subprocess.run(args, check=True, capture_output=True)


@pytest.fixture(scope="module")
def nspair():
    a, b = f"{PREFIX}a", f"{PREFIX}b"
    try:
        sh("ip", "netns", "add", a)
        sh("ip", "netns", "add", b)
        sh("ip", "link", "add", f"{PREFIX}va", "netns", a, "type", "veth", "peer", f"{PREFIX}vb", "netns", b)
        for ns, dev, ip in ((a, f"{PREFIX}va", "10.99.0.1/24"), (b, f"{PREFIX}vb", "10.99.0.2/24")):
            sh("ip", "-n", ns, "addr", "add", ip, "dev", dev)
            sh("ip", "-n", ns, "link", "set", dev, "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        yield f"/run/netns/{a}", f"/run/netns/{b}"
    finally:
        for ns in (a, b):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def wait_readable(sock, timeout=2.0):
    r, _, _ = select.select([sock], [], [], timeout)
    return bool(r)


def test_mplsoudp_source_port_on_the_wire(nspair):
    a, b = nspair
    with tap.in_netns(a):
        tx = tunnel.Tunnels("10.99.0.1")
    with tap.in_netns(b):
        # a plain socket in place of the peer's Tunnels, so that we see the source port the wire carried
        rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        rx.bind(("10.99.0.2", tunnel.MPLSOUDP_PORT))
    try:
        seen = set()
        for sport in (50001, 50002, 61000):
            with tap.in_netns(a):  # pooled senders are created lazily, in the caller's namespace
                assert tx.send("10.99.0.2", "mplsoudp", sport, b"\x00\x06\x41\x40payload")
            assert wait_readable(rx)
            data, (src, port) = rx.recvfrom(2048)
            assert (src, data) == ("10.99.0.1", b"\x00\x06\x41\x40payload")
            seen.add(port)
        assert seen == {50001, 50002, 61000}
        assert tx.counters["tx_sport_fallback"] == 0
    finally:
        tx.close()
        rx.close()


@pytest.mark.parametrize("encap", ["vxlan", "mplsogre", "mplsoudp"])
def test_receive_hands_over_outer_source_and_payload(nspair, encap):
    a, b = nspair
    with tap.in_netns(a):
        tx = tunnel.Tunnels("10.99.0.1")
    with tap.in_netns(b):
        rx = tunnel.Tunnels("10.99.0.2")
    payload = {"vxlan": b"\x08\x00\x00\x00\x00\x00\x64\x00" + bytes(14),
               "mplsogre": b"\x00\x00\x88\x47" + b"\x00\x06\x41\x40" + bytes(20),
               "mplsoudp": b"\x00\x06\x41\x40" + bytes(20)}[encap]
    try:
        with tap.in_netns(a):
            assert tx.send("10.99.0.2", encap, 49999, payload)
        got = []
        deadline = time.monotonic() + 2
        while not got and time.monotonic() < deadline:
            r, _, _ = select.select(rx.sockets(), [], [], 0.2)
            for s in r:
                got += rx.receive(s)
        assert got == [("10.99.0.1", encap, payload)]
    finally:
        tx.close()
        rx.close()


def _arp_requests(frames):
    return [f for f in frames if f[12:14] == b"\x08\x06" and f[20:22] == b"\x00\x01"]


def test_tap_in_other_namespace_survives_detach_and_reattach(nspair):
    a, _ = nspair
    name = f"{PREFIX}t"
    # created where we are, then moved into the "VM" namespace as the forwarder does
    fd = tap.open_tap(name)
    try:
        sh("ip", "link", "set", name, "netns", a)
        ns = os.path.basename(a)
        sh("ip", "-n", ns, "addr", "add", "10.98.0.1/24", "dev", name)
        sh("ip", "-n", ns, "link", "set", name, "up")
        # an ICMP echo from an unknown neighbour makes the kernel ARP for it: proof both directions work
        frame = _icmp_echo_frame()
        assert tap.write_frame(fd, frame)
        assert _arp_requests(_read_for(fd, 2.0))
        os.close(fd)  # forwarder crash: the persistent device and its address stay
        out = subprocess.run(["ip", "-n", ns, "-br", "addr", "show", name], capture_output=True, text=True)
        assert "10.98.0.1/24" in out.stdout
        fd = tap.open_tap(name, netns=a)  # a restarted forwarder re-attaches inside the VM namespace
        sh("ip", "-n", ns, "neigh", "flush", "dev", name)
        assert tap.write_frame(fd, _icmp_echo_frame())
        assert _arp_requests(_read_for(fd, 2.0))
    finally:
        tap.destroy_tap(fd)
    out = subprocess.run(["ip", "-n", os.path.basename(a), "link", "show", name], capture_output=True)
    assert out.returncode != 0, "destroy_tap must remove the device"


def test_bad_tap_name_is_a_clear_error():
    with pytest.raises(tap.TapError, match="bad TAP name"):
        tap.open_tap("x" * 20)


def _read_for(fd, timeout):
    frames, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        select.select([fd], [], [], 0.1)
        frames += tap.read_frames(fd)
        if _arp_requests(frames):
            break
    return frames


def _icmp_echo_frame():
    def csum(b):
        s = sum(struct.unpack(f"!{len(b) // 2}H", b))
        s = (s >> 16) + (s & 0xFFFF)
        return ~(s + (s >> 16)) & 0xFFFF
    icmp = struct.pack("!BBHHH", 8, 0, 0, 1, 1) + b"abcd"
    icmp = icmp[:2] + struct.pack("!H", csum(icmp)) + icmp[4:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(icmp), 1, 0, 64, 1, 0,
                     socket.inet_aton("10.98.0.2"), socket.inet_aton("10.98.0.1"))
    ip = ip[:10] + struct.pack("!H", csum(ip)) + ip[12:]
    return b"\xff\xff\xff\xff\xff\xff" + b"\x02\x00\x00\x00\x00\x02" + b"\x08\x00" + ip + icmp
