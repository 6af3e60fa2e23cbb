"""The overlay end to end with MPLSoUDP (the default): one testbed for the whole module.

Topology tests/e2e/topologies/overlay.yaml: red and blue both 192.168.1.0/24; red1, red3, blue1
on srv1; red2, blue2 on srv3; srv2 empty.
"""
import io
import json
import os
import signal
import subprocess
import sys
import time
import types

import pytest
from scapy.contrib.mpls import MPLS
from scapy.layers.inet import ICMP, IP, UDP
from scapy.layers.l2 import Ether
from scapy.layers.vxlan import VXLAN

from overlay_helpers import (
    bring_up,
    decode,
    is_path_message,
    needs_root,
    ping,
    tcp_transfers,
    udp_exchanges,
    vif_counters,
    vm_tap,
    wait_ping,
)
from testbed import REPO, overlay
from testbed.capture import Capture, fabric_interfaces
from vrouter.io import introspect
from vrouter.io.control import AdminClient

pytestmark = [pytest.mark.e2e, needs_root]


@pytest.fixture(scope="module")
def tb(tmp_path_factory):
    bed = bring_up(tmp_path_factory.mktemp("ov"), "mplsoudp")
    yield bed
    bed.stop()


def test_ping_across_servers_and_on_the_same_server(tb):
    assert ping(tb, "red1", "192.168.1.12") == 3      # srv1 -> srv3
    assert ping(tb, "red1", "192.168.1.13") == 3      # both on srv1
    assert ping(tb, "blue2", "192.168.1.11") == 3     # the other network, same addresses


def test_tcp_across_servers_and_on_the_same_server(tb):
    assert tcp_transfers(tb, "red1", "red2", "192.168.1.12", 5001, nbytes=300000) == ["300000"]
    assert tcp_transfers(tb, "red3", "red1", "192.168.1.11", 5002, nbytes=300000) == ["300000"]


def test_mplsoudp_on_the_wire_labels_and_entropy_ports(tb, tmp_path):
    cap = Capture(fabric_interfaces(tb.desc, server="srv1"), tmp_path, bpf="udp port 6635")
    try:
        results = tcp_transfers(tb, "red1", "red2", "192.168.1.12", 5003, nbytes=2000, connections=6)
        assert ping(tb, "blue1", "192.168.1.12", count=2) == 2
    finally:
        files = cap.stop()
    assert results == ["2000"] * 6
    tunnel = [p for p in decode(files["srv1-leaf1"]) if p.haslayer(UDP) and p[UDP].dport == 6635]
    probes = [p for p in tunnel if is_path_message(p)]
    pkts = [p for p in tunnel if not is_path_message(p)]
    labels = {p[MPLS].label for p in pkts}
    assert labels == {100, 200}
    assert {p[IP].src for p in probes} == {"10.0.1.1", "10.0.2.1"}, "path repair probes both ways"
    red_out = [p for p in pkts if p[MPLS].label == 100 and p[IP].src == "10.0.1.1"]
    sports = {p[UDP].sport for p in red_out}
    assert all(49152 <= s <= 65535 for s in sports)
    # 6 flows over 8 path slots (vrouter/core/paths.py): 2 or more ports but for a 3e-5 chance
    assert len(sports) >= 2, f"entropy source ports do not vary across 6 TCP flows: {sports}"
    inner = red_out[0][MPLS].payload
    assert inner.src == "192.168.1.11" and inner.dst == "192.168.1.12"


def test_networks_with_overlapping_subnets_are_isolated(tb):
    red2, blue2 = vm_tap(tb, "red2"), vm_tap(tb, "blue2")
    before = vif_counters(tb, "srv3")
    assert ping(tb, "red1", "192.168.1.12", count=5) == 5
    after = vif_counters(tb, "srv3")
    assert after[red2]["tx_packets"] - before[red2]["tx_packets"] >= 5
    assert after[blue2]["tx_packets"] == before[blue2]["tx_packets"]
    assert after[blue2]["rx_packets"] == before[blue2]["rx_packets"]


def test_forged_labels_and_vnis_from_a_non_peer_are_dropped(tb):
    """Crafted tunnel packets for both networks, from an underlay address that is no vrouter."""
    inner = IP(src="192.168.1.11", dst="192.168.1.12") / ICMP()
    forged = [IP(src="10.0.1.99", dst="10.0.2.1") / UDP(sport=50000, dport=6635) / MPLS(label=label, s=1) / inner
              for label in (100, 200)]
    forged.append(IP(src="10.0.1.99", dst="10.0.2.1") / UDP(sport=50001, dport=4789) / VXLAN(vni=200) /
                  Ether(dst="02:00:00:00:00:01") / inner)
    hexes = " ".join(bytes(p).hex() for p in forged * 5)
    red2, blue2 = vm_tap(tb, "red2"), vm_tap(tb, "blue2")
    drops_before = introspect.query(tb.path, "srv3", "dropstats")["invalid_source"]
    vifs_before = vif_counters(tb, "srv3")
    # srv2's namespace is on the fabric but 10.0.1.99 is not a vrouter: raw socket, our own IP header
    out = tb.host("srv2").cmd(
        f"{sys.executable} -c \"import socket,sys;s=socket.socket(2,3,255);"
        f"[s.sendto(bytes.fromhex(h),('10.0.2.1',0)) for h in sys.argv[1:]];print('sent',len(sys.argv)-1)\" {hexes}")
    assert "sent 15" in out
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        drops = introspect.query(tb.path, "srv3", "dropstats")["invalid_source"]
        if drops - drops_before >= 15:
            break
        time.sleep(0.2)
    assert drops - drops_before == 15
    vifs_after = vif_counters(tb, "srv3")
    for tap in (red2, blue2):
        assert vifs_after[tap]["tx_packets"] == vifs_before[tap]["tx_packets"]


def test_deny_policy_blocks_exactly_what_it_says_in_both_directions(tb):
    rule = {"default": "allow", "rules": [
        {"action": "deny", "protocol": "tcp", "src": "192.168.1.11/32", "dst": "192.168.1.12/32",
         "dst_port": "5011"}]}
    with AdminClient(str(tb.rundir.vnc_socket)) as vnc:
        vnc.set_policy("red", rule)
        try:
            time.sleep(1.0)  # pushes reach every agent within 1 s
            assert tcp_transfers(tb, "red1", "red2", "192.168.1.12", 5011, nbytes=1000) != ["1000"]
            assert tcp_transfers(tb, "red1", "red2", "192.168.1.12", 5012, nbytes=1000) == ["1000"]
            assert tcp_transfers(tb, "red2", "red1", "192.168.1.11", 5011, nbytes=1000) == ["1000"]
            assert ping(tb, "red1", "192.168.1.12", count=2) == 2
            # the other network with the same addresses is not affected
            assert tcp_transfers(tb, "blue1", "blue2", "192.168.1.12", 5011, nbytes=1000) == ["1000"]
            # both directions of the denied flow are drop entries, on the sender's vrouter...
            flows = introspect.query(tb.path, "srv1", "flows")
            denied = [f for f in flows if 5011 in (f["sport"], f["dport"]) and f["vrf"] == 100
                      and "192.168.1.12" in (f["src"], f["dst"]) and f["src"] != f["dst"]
                      and f["action"] == "drop"]
            assert denied and all(f["reason"] == "policy_deny" for f in denied)
            assert introspect.query(tb.path, "srv1", "dropstats")["policy_deny"] >= 1
        finally:
            vnc.set_policy("red", None)
    time.sleep(1.0)
    assert tcp_transfers(tb, "red1", "red2", "192.168.1.12", 5013, nbytes=1000) == ["1000"]


def test_vm_added_at_run_time_is_reachable(tb):
    vm = overlay.add_vm(tb, "red4", "red", "srv2", "192.168.1.14")
    assert vm["server"] == "srv2"
    assert wait_ping(tb, "red1", "192.168.1.14", timeout=5)
    assert ping(tb, "red4", "192.168.1.12") == 3
    with pytest.raises(overlay.OverlayError, match="already used by VM 'red1'"):
        overlay.add_vm(tb, "red5", "red", "srv2", "192.168.1.11")
    overlay.remove_vm(tb, "red4")
    assert ping(tb, "red1", "192.168.1.14", count=2) == 0


def test_controller_restart_keeps_traffic_flowing_and_agents_resync(tb):
    pinger = tb.host("red1").popen(["ping", "-c", "50", "-i", "0.1", "-W", "1", "192.168.1.12"],
                                   stdout=subprocess.PIPE, text=True)
    time.sleep(1.0)
    tb.restart_controller()
    out, _ = pinger.communicate(timeout=30)
    received = int(out.split(" received")[0].rsplit(" ", 1)[1])
    assert received >= 45, out
    # every agent registers again, and a change made after the restart reaches the vrouters
    deadline = time.monotonic() + 15
    while True:
        try:
            with AdminClient(str(tb.rundir.vnc_socket)) as vnc:
                agents = vnc.list_agents()
                if len(agents) >= 3:  # list_agents lists only agents registered with this controller
                    vnc.set_flow_mode("reactive")
                    break
        except Exception:
            pass
        assert time.monotonic() < deadline, "agents did not re-register after the controller restart"
        time.sleep(0.3)
    try:
        deadline = time.monotonic() + 5
        while introspect.query(tb.path, "srv1", "stats")["mode"] != "reactive":
            assert time.monotonic() < deadline
            time.sleep(0.1)
    finally:
        with AdminClient(str(tb.rundir.vnc_socket)) as vnc:
            vnc.set_flow_mode("proactive")


def test_crashed_forwarder_is_restarted_and_reattaches(tb):
    name = overlay.forwarder_name("srv3")
    pid = tb.supervisor.pid(name)
    restarts = tb.supervisor.status()[name]["restarts"]
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 15
    while tb.supervisor.status()[name]["restarts"] == restarts or not tb.supervisor.status()[name]["running"]:
        assert time.monotonic() < deadline, "forwarder was not restarted"
        time.sleep(0.2)
    assert wait_ping(tb, "red1", "192.168.1.12", timeout=10)
    assert "exited" in (tb.rundir.log("supervisor")).read_text()


def test_slow_path_counts_proactive_and_reactive(tb):
    """Per new UDP request/response flow: 2 agent invocations in total proactive, 4 reactive."""
    counts = {}
    for mode in ("proactive", "reactive"):
        with AdminClient(str(tb.rundir.vnc_socket)) as vnc:
            vnc.set_flow_mode(mode)
        deadline = time.monotonic() + 5
        while any(introspect.query(tb.path, s, "stats")["mode"] != mode for s in ("srv1", "srv3")):
            assert time.monotonic() < deadline
            time.sleep(0.1)
        for s in ("srv1", "srv3"):
            introspect.query(tb.path, s, "reset")
        assert udp_exchanges(tb, "red1", "red2", "192.168.1.12", 5020, 5) == 5
        counts[mode] = sum(introspect.query(tb.path, s, "stats")["agent"].get("decisions", 0)
                           for s in ("srv1", "srv3"))
    with AdminClient(str(tb.rundir.vnc_socket)) as vnc:
        vnc.set_flow_mode("proactive")
    assert counts == {"proactive": 2 * 5, "reactive": 4 * 5}


def test_vr_command_line_and_mininet_cli(tb):
    base = [sys.executable, "-m", "testbed.cli", "vr", "--prefix", tb.prefix, "--run-root", str(tb.rundir.root)]
    r = subprocess.run(base + ["srv1", "vif", "--list"], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0 and "vif0/0" in r.stdout and "Vrf:100 (red)" in r.stdout
    r = subprocess.run(base + ["srv1", "rt", "--dump", "blue"], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0 and "192.168.1.12/32" in r.stdout
    r = subprocess.run(base + ["nosuch", "flow", "-l"], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 2
    assert r.stderr.strip() == "error: unknown server 'nosuch' (known: srv1, srv2, srv3)"
    from mininet.cli import CLI
    cli = types.SimpleNamespace(stdout=io.StringIO())
    CLI.do_vr(cli, "srv3 dropstats")
    assert "invalid_source" in cli.stdout.getvalue()


# The `pressure` answer's keys (issue 11's contract); a vrouter without it is read through `stats`.
PRESSURE_KEYS = {"entries", "capacity", "held", "held_limit", "unreplied", "evictions", "unreplied_aged", "installs",
                 "entries_installed", "punts_queued", "tokens", "setup_rate", "burst_tokens", "vms", "networks",
                 "uptime"}


def test_vr_flow_rate_gives_one_json_sample_per_interval_and_a_block_in_the_mininet_cli(tb):
    base = [sys.executable, "-m", "testbed.cli", "vr", "--prefix", tb.prefix, "--run-root", str(tb.rundir.root)]
    r = subprocess.run(base + ["srv1", "flow", "-r", "--count", "2", "--interval", "0.5", "--json"],
                       capture_output=True, text=True, cwd=REPO, timeout=30)
    assert r.returncode == 0, r.stderr
    samples = [json.loads(line) for line in r.stdout.splitlines()]
    assert [(s["server"], s["sample"]) for s in samples] == [("srv1", 1), ("srv1", 2)]
    for s in samples:
        assert s["rates"]["setup"] is not None and s["rates"]["setup"] >= 0
        assert isinstance(s["entries"], int) and s["capacity"] > 0 and isinstance(s["installs"], int)
        assert PRESSURE_KEYS <= s.keys() and s["uptime"] > 0 and s["rates"]["setup_average"] is not None
    r = subprocess.run(base + ["nosuch", "flow", "-r"], capture_output=True, text=True, cwd=REPO, timeout=30)
    assert r.returncode == 2 and r.stderr.startswith("error: unknown server 'nosuch'")
    from mininet.cli import CLI
    cli = types.SimpleNamespace(stdout=io.StringIO())
    CLI.do_vr(cli, "srv3 flow -r --count 1 --interval 0.2")
    assert "setup      current" in cli.stdout.getvalue() and "entries" in cli.stdout.getvalue()


def test_net_flow_limit_reaches_the_vrouter_config_and_back_to_the_default(tb):
    base = [sys.executable, "-m", "testbed.cli", "net", "flow-limit", "--prefix", tb.prefix,
            "--run-root", str(tb.rundir.root)]
    tap = vm_tap(tb, "red1")

    def limit_on_srv1():
        deadline = time.monotonic() + 5
        seen = None
        while time.monotonic() < deadline:
            vifs = introspect.query(tb.path, "srv1", "config")["config"]["vifs"]
            seen = next(v for v in vifs if v["name"] == tap).get("flow_limit")
            yield seen
            time.sleep(0.1)

    r = subprocess.run(base + ["--vm", "red1", "5000"], capture_output=True, text=True, cwd=REPO, timeout=30)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("flow limit of VM red1: 5000 entries (generation ")
    assert any(x == 5000 for x in limit_on_srv1())
    r = subprocess.run(base + ["--vm", "red1", "default"], capture_output=True, text=True, cwd=REPO, timeout=30)
    assert r.returncode == 0 and "VM red1: the default" in r.stdout
    assert any(x is None for x in limit_on_srv1())
    r = subprocess.run(base + ["--vm", "nosuch", "10"], capture_output=True, text=True, cwd=REPO, timeout=30)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "nosuch" in r.stderr
    r = subprocess.run(base + ["--network", "red", "0"], capture_output=True, text=True, cwd=REPO, timeout=30)
    assert r.returncode == 2 and "whole number >= 1 or 'default'" in r.stderr
