"""The drop accounting's parsers and its conservation figure (testbed/measure/drops.py)."""
from testbed.measure import drops
from testbed.port_buffers import PortSocket, parse_port_sockets

SNMP = ("Ip: Forwarding DefaultTTL InReceives InHdrErrors InAddrErrors ForwDatagrams InUnknownProtos InDiscards"
        " InDelivers OutRequests OutDiscards OutNoRoutes\n") + """Ip: 2 64 2747 0 1 0 0 3 2747 704 2 0
Icmp: InMsgs InErrors InCsumErrors
Icmp: 5 1 0
Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors InCsumErrors IgnoredMulti MemErrors
Udp: 2747 0 7 704 7 0 0 0 0
"""

OFCTL = """OFPST_PORT reply (OF1.3) (xid=0x2): 3 ports
  port  1: rx pkts=10, bytes=600, drop=4, errs=0, frame=0, over=0, crc=0
           tx pkts=11, bytes=660, drop=2, errs=1, coll=0
           duration=5.0s
  port LOCAL: rx pkts=0, bytes=0, drop=0, errs=0, frame=0, over=0, crc=0
           tx pkts=0, bytes=0, drop=9, errs=0, coll=0
"""

PMD = """pmd thread numa_id 0 core_id 0:
  packets received: 10
  miss with success upcall: 7
  miss with failed upcall: 1
main thread:
  packets received: 20
  miss with success upcall: 3
  miss with failed upcall: 0
"""


def test_snmp_keeps_drop_counters_and_the_ip_totals():
    got = drops.parse_snmp(SNMP)
    assert got["ip/InReceives"] == 2747 and got["ip/OutRequests"] == 704
    assert got["ip/InDiscards"] == 3 and got["ip/OutDiscards"] == 2 and got["ip/InAddrErrors"] == 1
    assert got["udp/RcvbufErrors"] == 7 and got["udp/InErrors"] == 7 and got["icmp/InErrors"] == 1
    assert "ip/Forwarding" not in got and "udp/InDatagrams" not in got


def test_links_read_rx_and_tx_drops_and_errors():
    text = '[{"ifname":"dg-t1","stats64":{"rx":{"dropped":0,"errors":2},"tx":{"dropped":1385,"errors":0}}}]'
    assert drops.parse_links(text) == {"dg-t1/rx_dropped": 0, "dg-t1/rx_errors": 2,
                                       "dg-t1/tx_dropped": 1385, "dg-t1/tx_errors": 0}
    assert drops.parse_links("not json") == {}


def test_ofctl_ports_attribute_each_tx_line_to_its_port():
    got = drops.parse_ofctl_ports(OFCTL)
    assert got["1/rx_drop"] == 4 and got["1/tx_drop"] == 2 and got["1/tx_errs"] == 1
    assert got["LOCAL/tx_drop"] == 9 and got["LOCAL/rx_drop"] == 0


def test_packet_sockets_of_the_prefix_give_their_drops():
    text = """Netid State  Recv-Q Send-Q Local Address:Port    Peer Address:PortProcess
p_raw UNCONN 0      0                [0]:*                   *     skmem:(r0,rb212992,t0,tb212992,f0,w0,o0,bl0,d5)
p_raw UNCONN 0      0                  *:fp-l1p1             *     skmem:(r0,rb212992,t0,tb212992,f0,w0,o176,bl0,d78)
p_raw UNCONN 0      0                  *:hf-s1p2             *     skmem:(r0,rb212992,t0,tb212992,f0,w0,o176,bl0,d9)
"""
    assert drops.parse_packet_sockets(text, "fp-") == {"fp-l1p1/socket_drops": 78}


def test_pmd_stats_sum_over_threads():
    assert drops.parse_pmd_stats(PMD) == {"upcalls": 10, "failed_upcalls": 1}


def test_ofctl_ports_count_packets_too():
    got = drops.parse_ofctl_ports(OFCTL)
    assert got["1/rx_pkts"] == 10 and got["1/tx_pkts"] == 11 and got["LOCAL/rx_pkts"] == 0


def test_delta_attributes_drops_and_finds_what_the_fabric_lost():
    before = {"ovs:l1/1/rx_pkts": 100, "ovs:l1/3/tx_pkts": 90, "ovs:s1/1/rx_pkts": 90, "ovs:s1/2/tx_pkts": 90,
              "server:srv1/ip/OutRequests": 100, "vrouter:srv1/flow_table_full": 3, "ovs/upcalls": 7}
    after = {"ovs:l1/1/rx_pkts": 2847, "ovs:l1/3/tx_pkts": 2590, "ovs:s1/1/rx_pkts": 2590, "ovs:s1/2/tx_pkts": 2590,
             "server:srv1/ip/OutRequests": 2847, "vrouter:srv1/flow_table_full": 15, "ovs/upcalls": 2065,
             "host:red1/dg-t1/tx_dropped": 40}
    d = drops.delta(before, after)
    # leaf l1 took 2747 packets in and sent 2500 on: 247 lost inside it; the spine lost none
    assert (d["fabric_sent"], d["fabric_lost"]) == (2747 + 2500, 247)
    assert d["drops"] == {"host:red1/dg-t1/tx_dropped": 40, "vrouter:srv1/flow_table_full": 12}
    assert d["upcalls"] == 2058 and d["total_dropped"] == 40 + 12 + 247
    assert "fabric 247 lost of 5,247, 2,058 upcalls" in drops.summary_line(d)


def test_dropstats_reply_flattens_to_reasons():
    assert drops.flatten_dropstats({"vm_flow_limit": 4, "held_limit": 0, "bad": "x", "flag": True}) == {
        "vm_flow_limit": 4, "held_limit": 0}


def test_port_sockets_are_ovs_vswitchd_s_on_the_prefix_s_interfaces():
    text = """Netid State  Recv-Q Send-Q Local Address:Port    Peer Address:PortProcess
p_raw UNCONN 0      0                [0]:*                   *     users:(("ovs-vswitchd",pid=2485,fd=60))
p_raw UNCONN 0      0                  *:fp-l1p3             *     users:(("ovs-vswitchd",pid=2485,fd=52))
p_raw UNCONN 0      0                  *:fpx-l1p3            *     users:(("ovs-vswitchd",pid=2485,fd=53))
p_raw UNCONN 0      0                  *:fp-s1p1             *     users:(("tcpdump",pid=99,fd=3))
"""
    assert parse_port_sockets(text, "fp-") == [PortSocket("fp-l1p3", 2485, 52)]
