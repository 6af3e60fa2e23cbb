"""Lab 2's check: the running overlay after your run-time changes, and your captures of it
(vnets.sh is your record; the testbed and the pcap files `testbed capture` wrote are graded).

It reads srv3's VM interfaces (`testbed vr srv3 vif --list`), pings within each network and counts
what reached which VM (`/proc/net/snmp` in the VM: echo requests received) and what the vrouter
dropped and why (`testbed vr srv1 dropstats`), and reads the captures with scapy: VXLAN packets to
192.168.1.13 under both networks' VNIs.
"""
import json
import re
import time
from pathlib import Path

from scapy.all import ICMP, IP, VXLAN, rdpcap

from testbed.capture import Capture, fabric_interfaces
from testbed.labkit import Wrong, apply_script

TARGET = "192.168.1.13"           # red3's address; blue3's once it is in blue
NETS = {"red": 100, "blue": 200}  # topology.yaml: the network ids, the VNIs on the wire
FROM = {"red": "red1", "blue": "blue1"}
OWNER = {"red": "red3", "blue": "blue3"}
ELSEWHERE = ("red1", "192.168.1.12", "blue2")  # an address only blue has: red1 must not reach blue2
PINGS = 5
CAPTURES = "captures"


def _vifs(tb):
    return {(v["network"], v["ip"]) for v in tb.vr("srv3", "vifs")}


def check_blue3_in_blue(ctx):
    """srv3 has a VM of blue on 192.168.1.13 (red3's address too) and red nothing but red3"""
    vifs = _vifs(ctx.testbed)
    problems = []
    if ("blue", TARGET) not in vifs:
        problems.append(f"srv3 has no VM of blue on {TARGET} (its VMs: "
                        + ", ".join(f"{ip} in {net}" for net, ip in sorted(vifs)) + ")")
    strays = sorted(ip for net, ip in vifs if net == "red" and ip != TARGET)
    if strays:
        problems.append(f"red has a VM on srv3 that is not red3: {', '.join(strays)} (a VM in the wrong network "
                        "reaches red's VMs and none of its own)")
    if problems:
        raise Wrong("; ".join(problems), "'sudo testbed vr srv3 vif --list'; 'testbed net rm-vm' / 'net add-vm' "
                                         "(README step 3)")


def _echoes(tb, vm):
    """Echo requests the VM's own stack has received (Icmp InEchos); None if there is no such VM."""
    try:
        done = tb.exec(vm, "cat", "/proc/net/snmp")
    except Wrong:
        return None
    head, values = [line.split() for line in done.stdout.splitlines() if line.startswith("Icmp:")][:2]
    return int(values[head.index("InEchos")])


def _ping(tb, vm, address):
    done = tb.exec(vm, "ping", "-n", "-q", "-c", str(PINGS), "-i", "0.2", "-W", "1", address)
    m = re.search(r"(\d+) received", done.stdout)
    return int(m.group(1)) if m else 0


def check_isolation(ctx):
    """each network reaches its own 192.168.1.13, no echo crosses to the other, and red cannot reach blue2"""
    tb = ctx.testbed
    problems = []
    for net, src in FROM.items():
        before = {vm: _echoes(tb, vm) for vm in OWNER.values()}
        replies = _ping(tb, src, TARGET)
        after = {vm: _echoes(tb, vm) for vm in OWNER.values()}
        got = {vm: (after[vm] - before[vm]) if before[vm] is not None and after[vm] is not None else None
               for vm in OWNER.values()}
        mine, other = OWNER[net], next(vm for n, vm in OWNER.items() if n != net)
        if replies == 0 or not got[mine]:
            problems.append(f"{src} -> {TARGET}: {replies} of {PINGS} replies, "
                            + (f"{mine} does not exist" if got[mine] is None else f"{got[mine]} echoes reached {mine}"))
        if got[other]:
            problems.append(f"{src} -> {TARGET}: {got[other]} echoes reached {other}, a VM of the other network")
    src, address, victim = ELSEWHERE
    drops, flooded = tb.vr("srv1", "dropstats")["no_route"], _flooded(tb, "srv1", "red")
    before = _echoes(tb, victim)
    replies = _ping(tb, src, address)
    crossed = _echoes(tb, victim) - before
    dropped = tb.vr("srv1", "dropstats")["no_route"] - drops
    asked = _flooded(tb, "srv1", "red") - flooded   # red1's ARP for it, flooded to red's members only
    if replies or crossed:
        problems.append(f"{src} -> {address} (only blue2 has it): {replies} replies, {crossed} echoes reached blue2")
    elif not dropped and not asked:
        problems.append(f"{src} -> {address}: no reply, but srv1's vrouter counted no no_route drop and flooded "
                        "no ARP in red: where did the echoes go?")
    if problems:
        raise Wrong("; ".join(problems), "'sudo testbed exec red1 ping -c3 192.168.1.13', "
                                         "'sudo testbed exec red3 grep Icmp: /proc/net/snmp', "
                                         "'sudo testbed vr srv1 dropstats', 'sudo testbed vr srv1 flood' "
                                         "(README step 3)")


def _flooded(tb, server: str, network: str) -> int:
    """Frames the server's vrouter flooded from its VMs of `network` (0 with flooding off)."""
    view = tb.vr(server, "flood")
    return sum(n["counters"]["from_vms"] for n in view.get("networks", []) if n["network"] == network)


def _vnis(folder):
    """VNI -> VXLAN packets carrying an ICMP echo to or from 192.168.1.13, in every pcap under the folder."""
    seen: dict[int, int] = {}
    for pcap in sorted(folder.rglob("*.pcap")):
        for pkt in rdpcap(str(pcap)):
            if VXLAN in pkt and IP in pkt[VXLAN] and ICMP in pkt[VXLAN]:
                inner = pkt[VXLAN][IP]
                if TARGET in (inner.src, inner.dst):
                    seen[pkt[VXLAN].vni] = seen.get(pkt[VXLAN].vni, 0) + 1
    return seen


def check_captures(ctx):
    """your captures show both networks' pings to 192.168.1.13 on the wire, told apart by the VNI"""
    folder = ctx.folder / CAPTURES
    where = (f"'sudo testbed capture --server srv3 --seconds 10 -o {folder}' while both networks ping "
             "192.168.1.13 (README step 4)")
    if not any(folder.rglob("*.pcap")):
        raise Wrong(f"no capture (*.pcap) in {folder}", where)
    seen = _vnis(folder)
    missing = [f"{net} (VNI {vni})" for net, vni in NETS.items() if not seen.get(vni)]
    if missing:
        raise Wrong(f"the captures in {folder} hold no VXLAN packet of an echo to or from {TARGET} for "
                    f"{' and '.join(missing)} (found: "
                    + (", ".join(f"VNI {v}: {n}" for v, n in sorted(seen.items())) or "none") + ")", where)


def solve(ctx):
    """The solution's vnets.sh on the lab's testbed, then the capture of step 4."""
    tb = ctx.testbed
    apply_script(tb, ctx.lab.solution / "vnets.sh")
    desc = json.loads((Path(tb.rundir) / "fabric.json").read_text())
    capture = Capture(fabric_interfaces(desc, server="srv3"), ctx.folder / CAPTURES)
    try:
        for src in FROM.values():
            _ping(tb, src, TARGET)
        time.sleep(0.5)
    finally:
        files = capture.stop()
    print(f"  captured srv3's access link while red1 and blue1 pinged {TARGET}: {', '.join(map(str, files.values()))}")
