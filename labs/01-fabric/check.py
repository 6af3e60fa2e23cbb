"""Lab 1's check: the running fabric after your repair (repair.sh is your record; the testbed is graded).

It reads what a network operator reads: the active faults (`testbed fault list --json`), the
leaves' ECMP groups and the flows that use them (`ovs-ofctl -O OpenFlow13 dump-groups / dump-flows`),
pings between the red VMs under the two leaves, and every vrouter's path slots (`testbed vr SERVER
paths`: a slot away from its home port is a flow the vrouter steers around a path that loses packets).
"""
import re
import time

from testbed.labkit import Wrong, apply_script, fabric, fault_state, ofctl

BROKEN = "leaf2-spine2"         # the bad optic of lab.yaml's setup: it loses what spine2 sends to leaf2
BROKEN_FROM = "spine2"
SETTLE = 12.0                   # seconds for path slots to come home (3 answered rounds of 100 ms each)
RED = {"red1": "192.168.1.11", "red2": "192.168.1.12", "red3": "192.168.1.13", "red4": "192.168.1.14"}


def _same(link, other):
    return set(link.split("-")) == set(other.split("-"))


def _lossy_hops(faults):
    """(sender, receiver) of every direction of a link that loses packets."""
    return {(i["sender"], i["receiver"]) for i in faults["impairments"].values()
            if (i["spec"].get("loss_pct") or 0) > 0}


def check_links_in_service(ctx):
    """every link is up, except the one whose optic is broken"""
    tb = ctx.testbed
    down = [name for name in fault_state(tb)["links"] if not _same(name, BROKEN)]
    if down:
        bridges = {sw["name"]: sw["bridge"] for sw in fabric(tb)["switches"]}
        leaf = next(end for end in down[0].split("-") if end in bridges)
        raise Wrong(f"{', '.join(down)} {'is' if len(down) == 1 else 'are'} down, and nothing is wrong with "
                    f"{'it' if len(down) == 1 else 'them'}: the fabric runs with less capacity and less "
                    "redundancy than it has (a leaf with one uplink loses everything if that one fails)",
                    f"'sudo ovs-ofctl -O OpenFlow13 dump-ports-desc {bridges[leaf]}' (LINK_DOWN), "
                    f"'dump-groups {bridges[leaf]}' (one bucket), 'sudo testbed fault list'; README step 3")


def check_broken_link_drained(ctx):
    """no ECMP group hashes traffic onto the link that loses packets"""
    tb = ctx.testbed
    faults = fault_state(tb)
    lossy = _lossy_hops(faults)
    if not lossy:
        raise Wrong(f"the impairment of {BROKEN} is gone: in this lab its optic stays broken (you are the "
                    "operator, not the repair team), so the fabric must work around it. Put it back with "
                    f"'sudo testbed fault impair {BROKEN} --loss 100% --from {BROKEN_FROM}' and drain the link",
                    "README step 5")
    desc = fabric(tb)
    leaf_of = {s["ip"]: s["leaf"] for s in desc["servers"]}
    wrong = []
    for sw in (s for s in desc["switches"] if s["role"] == "leaf"):
        flows, groups = ofctl("dump-flows", sw["bridge"]), ofctl("dump-groups", sw["bridge"])
        toward = {}
        for ip, gid in re.findall(r"nw_dst=([\d.]+) actions=group:(\d+)", flows):
            toward.setdefault(gid, leaf_of.get(ip, ip))
        for gid, body in re.findall(r"group_id=(\d+),type=select,(\S*)", groups):
            for port in re.findall(r"output:(\d+)", body):
                spine = sw["ports"].get(port, {}).get("peer")
                dest = toward.get(gid)
                if (sw["name"], spine) in lossy or (spine, dest) in lossy:
                    wrong.append(f"{sw['name']}'s group {gid} toward {dest} has a bucket to {spine} (port {port})")
    if wrong:
        hop = " and ".join(f"{a} -> {b}" for a, b in sorted(lossy))
        raise Wrong("; ".join(wrong) + f", but the hop {hop} loses what is sent on it: the flows that hash onto "
                    "that bucket are lost (underlay) or steered around it by the vrouters (overlay)",
                    f"'sudo ovs-ofctl -O OpenFlow13 dump-groups {desc['prefix']}-l1' and the ports' counters "
                    "on both ends of each link ('dump-ports'); README steps 4 and 5")


def _pings(tb):
    """Every red VM under one leaf pings every red VM under the other; the pairs that got no reply."""
    servers = {s["name"]: s["leaf"] for s in fabric(tb)["servers"]}
    leaf = {vm: servers[f"srv{vm[-1]}"] for vm in RED}
    lost = []
    for src in RED:
        dsts = [d for d in RED if leaf[d] != leaf[src]]
        script = " ".join(f"(ping -n -q -c 3 -i 0.3 -W 1 {RED[d]} >/dev/null || echo {d}) &" for d in dsts) + " wait"
        done = tb.exec(src, "sh", "-c", script)
        if done.returncode:
            raise Wrong(f"the pings from {src} did not run: {done.stderr.strip()}", "sudo testbed status")
        lost += [f"{src} -> {d} ({RED[d]})" for d in done.stdout.split()]
    return lost


def _away(tb):
    """Per vrouter path with a slot that is dead or away from its home port: a finding line."""
    found = []
    for srv in sorted({f"srv{vm[-1]}" for vm in RED}):
        for path in tb.vr(srv, "paths").get("paths", []):
            bad = [s["slot"] for s in path["slots"] if not s["alive"] or s["port"] != s["home"]]
            if bad:
                found.append(f"{srv} -> {path['peer']} ({path['encap']}): slot{'s' * (len(bad) > 1)} "
                             f"{', '.join(map(str, bad))} of {len(path['slots'])} dead or away from home")
    return found


def check_overlay_paths(ctx):
    """the VMs under the two leaves reach each other, and every path slot is alive at its home port"""
    tb = ctx.testbed
    lost = _pings(tb)
    if lost:
        raise Wrong(f"{len(lost)} of 8 pings between the leaves got no reply: {', '.join(lost)}",
                    "'sudo testbed exec red1 ping -c3 192.168.1.13'; 'sudo ovs-ofctl -O OpenFlow13 dump-groups' "
                    "on the leaves; README step 2")
    deadline = time.monotonic() + SETTLE
    away = _away(tb)
    while away and time.monotonic() < deadline:
        time.sleep(0.5)
        away = _away(tb)
    if away:
        raise Wrong("; ".join(away) + ": the vrouter keeps those slots' flows off their home ports because the "
                    "ports' hash leads over a path that loses packets", "'sudo testbed vr srv1 paths', "
                    "'sudo testbed net paths' (what the vrouters reported); README step 4")


def solve(ctx):
    """The solution's repair.sh, run on the lab's testbed."""
    apply_script(ctx.testbed, ctx.lab.solution / "repair.sh")
