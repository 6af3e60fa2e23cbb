"""What a routing decision writes in front of an inner IPv4 packet: the tunnel header a flow entry
caches (label or VNI, and for VXLAN the inner Ethernet header), and the Ethernet header toward each VM.
One definition, shared by the pipeline, the benches and the tests that build tunnel payloads."""
import struct

from .codec import vxlan
from .config import VROUTER_MAC, Vif

_ETH_IP = b"\x08\x00"
_GRE_MPLS = b"\x00\x00\x88\x47"
_MPLS_TTL = 64


def encap_prefix(encap: str, label: int, inner_mac: bytes) -> bytes:
    """Bytes that go before the inner IPv4 packet in a ToTunnel payload."""
    word = struct.pack("!I", label << 12 | 0x100 | _MPLS_TTL)
    if encap == "mplsoudp":
        return word
    if encap == "mplsogre":
        return _GRE_MPLS + word
    return vxlan.build(label) + inner_mac + VROUTER_MAC + _ETH_IP


class VifState:
    """A VIF as the pipeline needs it on every packet: its routing instance and its Ethernet header."""
    __slots__ = ("name", "vrf", "ip", "mac", "eth", "services")

    def __init__(self, vif: Vif, vrf_id: int) -> None:
        self.name, self.vrf, self.ip, self.mac, self.services = vif.name, vrf_id, vif.ip, vif.mac, vif.services
        self.eth = vif.mac + VROUTER_MAC + _ETH_IP
