"""The vrouter's answer to ARP that a bare-metal host floods over VXLAN (vrouter/core/baremetal.py).

Why: a bare-metal host's Linux VXLAN device resolves a VM's address the ordinary way, by broadcasting an
ARP request; with the VNC's head-end entries (controllers/vnc_baremetal.py) the request reaches, in a
VXLAN packet with the network's VNI, every server that has a member of the network. The server that
hosts the VM answers for it, as an EVPN VTEP with ARP suppression answers for its local hosts: the
reply names the VM's own MAC (the host then sends to that MAC, and its forwarding entry for the MAC
leads to this server), goes back over VXLAN to the host's underlay address. Every other server ignores
the request (`arp_ignored`): exactly one answer. A VM's own ARP is answered in core/local.py instead.
"""
from __future__ import annotations

from collections.abc import Iterable, MutableMapping

from .actions import Action, Drop, ToTunnel
from .codec import arp, ethernet, vxlan
from .codec.errors import Malformed
from .encap import VifState

VXLAN_HLEN = 8
ARP_SPORT_BASE = 0xC000     # replies leave from an entropy-range port (49152 + the VNI's low bits)


def reply(payload: bytes, vni: int, vifs: Iterable[VifState]) -> bytes | str:
    """The VXLAN payload (header + Ethernet + ARP reply) answering the ARP request in ``payload``
    (a VXLAN payload of VNI ``vni``, which is also the network's routing instance id), or why there
    is no answer."""
    try:
        req = arp.parse(payload, VXLAN_HLEN + ethernet.ETH_HLEN)
    except Malformed:
        return "malformed"
    if req.op != arp.ARP_REQUEST or req.tpa == req.spa:
        return "arp_ignored"
    vif = next((v for v in vifs if v.vrf == vni and v.ip == req.tpa), None)
    if vif is None:             # not a VM of this server: the server that hosts it answers
        return "arp_ignored"
    return vxlan.build(vni) + ethernet.build(req.sha, vif.mac, ethernet.ETH_P_ARP) + \
        arp.build(arp.ARP_REPLY, vif.mac, req.tpa, req.sha, req.spa)


def answer(payload: bytes, vni: int, outer_src: str, vifs: Iterable[VifState],
           count: MutableMapping[str, int], drops: MutableMapping[str, int]) -> list[Action]:
    """The pipeline's actions for a flooded ARP request: the reply back to the host, counted in
    ``count["fabric_arp_replies"]``, or a drop counted under its reason."""
    out = reply(payload, vni, vifs)
    if isinstance(out, str):
        drops[out] += 1
        return [Drop(out)]
    count["fabric_arp_replies"] += 1
    return [ToTunnel(outer_src, "vxlan", ARP_SPORT_BASE | vni & 0x3FFF, out)]
