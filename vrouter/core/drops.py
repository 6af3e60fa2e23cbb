"""Named drop reasons, counted like Tungsten Fabric's ``dropstats`` so every drop can be explained."""

REASONS = {
    "malformed": "truncated or invalid Ethernet/ARP/IPv4/L4/tunnel header",
    "not_ip": "frame from a VM that is neither IPv4 nor ARP",
    "invalid_vif": "packet from an interface the vrouter does not know",
    "invalid_source": "tunnel packet from an underlay address that is not a known peer",
    "spoofed_source": "packet from a VM whose source address is not the VM's own",
    "unknown_label": "MPLS label or VXLAN VNI selects no routing instance (invalid label)",
    "wrong_destination": "tunnel frame addressed to another server's underlay address (replay)",
    "unknown_encap": "tunnel packet with an encapsulation the vrouter does not speak",
    "no_route": "destination has no route in the routing instance",
    "discard": "route with a discard next hop",
    "policy_deny": "a policy rule (or the default) denies the flow",
    "flow_table_full": "no room in the flow table for a new flow",
    "hold_queue_full": "flow is waiting for its decision and its hold queue is full",
    "hold_timeout": "flow decision did not arrive before the held entry expired",
    "ttl_expired": "inner TTL would reach zero",
    "fragment_no_head": "non-first IP fragment whose first fragment was not seen",
    "fragment_table_full": "no room to remember a fragmented datagram's ports",
    "arp_ignored": "ARP that the vrouter does not answer (not a request, or for the VM itself)",
    "receive_unsupported": "packet for the vrouter's own address that is not an ICMP echo request",
    "flow_torn_down": "flow was removed (config change) while packets were held",
    "vm_flow_limit": "the VM interface owns its share of the flow table (refused until back under resume_fraction)",
    "network_flow_limit": "the network holds its share of the flow table (refused until back under resume_fraction)",
    "held_limit": "too many flows wait for their decision in the whole table",
    "vm_held_limit": "too many of this VM interface's flows wait for their decision",
    "no_nat": "a VM's packet to outside its networks, but the VM has no floating IP and its network no source NAT",
    "nat_unsupported": "source NAT of a protocol without ports or echo identifiers (only TCP, UDP, ICMP)",
    "nat_no_flow": "a packet from outside to a SNAT address that no NAT flow expects",
    "nat_ports_exhausted": "every SNAT port of the protocol is in use",
    "setup_queue_stale": "the flow's punt waited in the setup queue longer than hold_timeout",
    "flood_storm": "a VM's broadcast/multicast/unknown-unicast frames beyond its flood rate (flood: rate, burst)",
    "wrong_member": "a service's reply that matches a flow pinned to another member (came from elsewhere)",
}


def new_counters() -> dict[str, int]:
    return dict.fromkeys(REASONS, 0)
