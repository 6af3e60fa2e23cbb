"""The fabric setting of `testbed bench throughput --fabric-tso`: OVS userspace TSO on or off.

With `other_config:userspace-tso-enable=true` (read once, when ovs-vswitchd starts) the userspace
datapath takes TCP super-packets from a veth's AF_PACKET socket with their virtio header and hands
them on whole, so the fabric's per-packet cost is paid per 64 KB instead of per frame. The servers'
veths must then send super-packets (`ethtool -K tx on tso on`; off by default, testbed/network.py).
Measured on OVS 3.1.0 here (docs/vrouter.md, "The fabric setting"): plain TCP between servers goes
from ~0.4 to 5-7 Gbit/s, but nothing tunnelled is carried: kernel VXLAN fails outright (its inner
partial checksums and UDP-tunnel GSO are not handled) and our overlay's UDP_SEGMENT sends only pass
if the veth cuts them first (`tx-udp-segmentation off`). The testbed keeps TSO off: a hardware
fabric forwards wire-size frames whatever they carry, and with TSO on the underlay would get a
per-64 KB fabric that no tunnel can use on this OVS version.

Switching means restarting ovs-vswitchd, which would break every bridge it serves: `switch` refuses
while OVS has any bridge, so it never touches a testbed (ours or anyone's) that is running.
"""
from __future__ import annotations

import subprocess

KEY = "userspace-tso-enable"
OVS_CTL = "/usr/share/openvswitch/scripts/ovs-ctl"
# The servers' veth offloads that make them send TCP super-packets, and the ones that stay off so
# that UDP GSO (our overlay's UDP_SEGMENT sends, kernel VXLAN's tunnel GSO) is cut before OVS.
SERVER_ON = ("tx on tso on gso on", "tx-udp-segmentation off tx-udp_tnl-segmentation off "
             "tx-udp_tnl-csum-segmentation off")
SERVER_OFF = ("tx off",)


class FabricTsoError(Exception):
    pass


def _vsctl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ovs-vsctl", "--timeout=5", *args], capture_output=True, text=True)


def configured() -> bool:
    """What the database asks for (in effect since ovs-vswitchd last started, see `switch`)."""
    r = _vsctl("--if-exists", "get", "Open_vSwitch", ".", f"other_config:{KEY}")
    return r.stdout.strip().strip('"') == "true"


def switch(on: bool) -> None:
    """Set userspace TSO and restart ovs-vswitchd (only it: the database stays) so that it takes
    effect. Refused while OVS serves any bridge."""
    bridges = _vsctl("list-br").stdout.split()
    if bridges:
        raise FabricTsoError(f"OVS serves bridges ({', '.join(bridges[:4])}{' ...' if len(bridges) > 4 else ''}): "
                             "switching userspace TSO restarts ovs-vswitchd and would break them; stop those "
                             "testbeds first")
    r = (_vsctl("set", "Open_vSwitch", ".", f"other_config:{KEY}=true") if on
         else _vsctl("remove", "Open_vSwitch", ".", "other_config", KEY))
    if r.returncode != 0:
        raise FabricTsoError(f"ovs-vsctl: {r.stderr.strip() or 'failed'}")
    r = subprocess.run([OVS_CTL, "--no-ovsdb-server", "restart"], capture_output=True, text=True)
    if r.returncode != 0 or _vsctl("show").returncode != 0:
        raise FabricTsoError(f"ovs-vswitchd did not restart: {(r.stderr or r.stdout).strip()[-300:]}")


def server_offloads(host, intf: str, on: bool) -> None:
    """The server veth's offloads for the fabric setting (`on`: send TCP super-packets)."""
    for opts in SERVER_ON if on else SERVER_OFF:
        host.cmd(f"ethtool -K {intf} {opts} >/dev/null 2>&1")
