"""Fabric forwarding on real Mininet/OVS: reachability, ECMP over both spines, link failure."""
import subprocess
import time

import pytest

from testbed import generator, measure
from testbed.runner import Testbed
from testbed.topology import from_dict

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def tb(run_root, new_prefix):
    # The fabric part of the default topology, without overlay hooks: only the fabric is under test.
    topo = from_dict(generator.leaf_spine(2, 2, 2, "default"), source="default fabric")
    bed = Testbed(topo, prefix=new_prefix("f"), run_root=str(run_root), hooks=[])
    bed.start()
    yield bed
    bed.stop()


def spine_tx(tb, toward_leaf="leaf2"):
    """Bytes/packets each spine sent toward a leaf (the port counters of that link)."""
    out = {}
    for spine in ("spine1", "spine2"):
        info = tb.switch_info(spine)
        port = next(int(p) for p, i in info["ports"].items() if i.get("peer") == toward_leaf)
        out[spine] = measure.port_stats(info["bridge"])[port]
    return out


def diff(before, after, key):
    return {s: after[s][key] - before[s][key] for s in before}


def leaf_group_buckets(tb, leaf="leaf1"):
    text = subprocess.run(["ovs-ofctl", "-O", "OpenFlow15", "dump-groups", tb.switch_info(leaf)["bridge"]],
                          capture_output=True, text=True, check=True).stdout
    return [line.count("bucket=") for line in text.splitlines() if "group_id=" in line]


def wait_buckets(tb, want, timeout=15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if leaf_group_buckets(tb) == [want]:
            return True
        time.sleep(0.05)
    return False


def test_all_pairs_of_servers_reach_each_other(tb):
    servers = tb.desc["servers"]
    failed = []
    for a in servers:
        for b in servers:
            if a is b:
                continue
            out = ""
            for _ in range(3):  # a first packet waits for the ARP answer (from the leaf)
                out = tb.host(a["name"]).cmd(f"ping -n -c1 -W2 {b['ip']}")
                if " 0% packet loss" in out:
                    break
            else:
                failed.append(f"{a['name']}->{b['name']}")
    assert failed == []


def test_16_tcp_flows_between_leaves_use_both_spines(tb):
    before = spine_tx(tb)
    r = measure.iperf3(tb.host("srv1"), tb.host("srv3"), "10.0.2.1", seconds=3, parallel=16)
    carried = diff(before, spine_tx(tb), "tx_bytes")
    print(f"16 TCP flows: {r['bits_per_second'] / 1e6:.0f} Mbit/s, bytes per spine {carried}")
    assert r["bits_per_second"] > 0
    assert all(b > 1_000_000 for b in carried.values()), carried


def test_udp_source_port_entropy_uses_both_spines(tb):
    # Overlay tunnels differ only in the outer UDP source port: the hash must include it.
    before = spine_tx(tb)
    measure.iperf3(tb.host("srv1"), tb.host("srv3"), "10.0.2.1", seconds=2, parallel=16, udp=True,
                   bitrate="1M")
    carried = diff(before, spine_tx(tb), "tx_packets")
    assert all(p > 100 for p in carried.values()), carried


def test_link_failure_reroutes_and_recovery_restores_ecmp(tb):
    # Find the spine the ICMP flow srv1->srv3 hashes onto, then cut that spine's link to the
    # *destination* leaf: leaf1's watch_port cannot see it, only the controller can react.
    before = spine_tx(tb)
    tb.host("srv1").cmd("ping -n -c5 -i0.05 10.0.2.1")
    used = max(diff(before, spine_tx(tb), "tx_packets").items(), key=lambda kv: kv[1])[0]
    other = "spine2" if used == "spine1" else "spine1"
    assert leaf_group_buckets(tb) == [2]

    count, interval = 400, 0.01
    ping = measure.start_ping(tb.host("srv1"), "10.0.2.1", count, interval)
    time.sleep(1.0)
    tb.net.configLinkStatus(tb.switch(used).name, tb.switch("leaf2").name, "down")
    try:
        result = measure.finish_ping(ping)
        print(f"link {used}-leaf2 down during {count} pings at {interval * 1000:.0f} ms: "
              f"{result['lost']} lost ({result['loss_percent']:.1f}%)")
        tail = set(range(count - 100 + 1, count + 1))
        assert tail <= set(result["replied_seqs"]), "traffic did not recover after the failure"
        assert result["received"] > count // 2
        assert wait_buckets(tb, 1), leaf_group_buckets(tb)

        before = spine_tx(tb)
        measure.iperf3(tb.host("srv1"), tb.host("srv3"), "10.0.2.1", seconds=2, parallel=16)
        carried = diff(before, spine_tx(tb), "tx_bytes")
        assert carried[other] > 1_000_000 and carried[used] == 0, carried
    finally:
        tb.net.configLinkStatus(tb.switch(used).name, tb.switch("leaf2").name, "up")

    assert wait_buckets(tb, 2), leaf_group_buckets(tb)
    before = spine_tx(tb)
    measure.iperf3(tb.host("srv1"), tb.host("srv3"), "10.0.2.1", seconds=2, parallel=16)
    carried = diff(before, spine_tx(tb), "tx_bytes")
    assert all(b > 1_000_000 for b in carried.values()), carried


def test_controller_restart_keeps_the_fabric_forwarding(tb):
    ping = measure.start_ping(tb.host("srv2"), "10.0.2.2", 300, 0.01)
    time.sleep(0.5)
    old = tb.supervisor.pid("controller")
    new = tb.restart_controller()
    result = measure.finish_ping(ping)
    assert new != old
    assert result["received"] == result["sent"], result
    out = tb.host("srv4").cmd("ping -n -c1 -W2 10.0.1.1")
    assert " 0% packet loss" in out


def test_supervised_process_runs_inside_the_server_and_is_restarted(tb):
    sup, host = tb.supervisor, tb.host("srv3")
    p = sup.start("e2e-sleeper", ["sh", "-c", "ip -o -4 addr show; exec sleep 600"], node=host)
    try:
        deadline = time.monotonic() + 10
        while "10.0.2.1" not in tb.rundir.log("e2e-sleeper").read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "10.0.2.1" in tb.rundir.log("e2e-sleeper").read_text()  # the server's namespace
        assert p.poll() is None  # the PID watched is the program itself, not a forked parent
        p.kill()
        deadline = time.monotonic() + 15
        while sup.pid("e2e-sleeper") == p.pid and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sup.pid("e2e-sleeper") != p.pid
    finally:
        sup.stop("e2e-sleeper")
