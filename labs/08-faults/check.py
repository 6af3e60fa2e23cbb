"""Lab 8's check: the running testbed in the outage you staged (outage.sh is your record; the testbed is graded).

The end state: the controller paused, then leaf2-spine1 down (so the controller never learnt of it),
srv4 restarted during the outage. The checks read the fault state (`testbed fault list --json`),
leaf1's ECMP groups, srv1's flow table and path slots (`testbed vr srv1 flows` / `paths`), srv4's
agent counters and leaf2's ARP responder flows (`ovs-ofctl dump-flows`), and send pings through the
fabric: the established flows of step 2 on their own flow entries, new flows between every pair of
VMs under the two leaves. Nothing is timed; every count is a count of this testbed's state.
"""
import re
import time

from testbed.labkit import Wrong, apply_script, fabric, fault_state, ofctl

CUT = "leaf2-spine1"            # the link the outage cuts: a spine's link to the OTHER leaf than srv1's
IDS = range(8001, 8017)         # the ICMP identifiers of step 2's established flows, red1 -> red3 and red4
RED = {"red1": "192.168.1.11", "red2": "192.168.1.12", "red3": "192.168.1.13", "red4": "192.168.1.14"}
BLUE = {f"blue{n}": ip for n, ip in enumerate(RED.values(), 1)}
ESTABLISHED = ("red3", "red4")  # red1's peers in step 2
# OVS hands a datapath flow's packet counts to its OpenFlow rule when a revalidator runs (every
# other_config:max-revalidator ms, 500 by default), so a rule's n_packets trails its packets by up to
# about a second: the responder counters are read again for this long before they count as unmoved.
STATS_LAG = 2.5
SAMPLES, SAMPLE_GAP = 3, 1.0    # a slot away from home in every sample: not a passing glitch of a loaded machine


def _same(link, other):
    return set(link.split("-")) == set(other.split("-"))


def _outage_problems(faults):
    """What differs from the outage of the README (steps 3 and 4): a list of phrases."""
    problems = []
    if "controller" not in faults["paused"]:
        problems.append("the controller is not paused")
    if not any(_same(name, CUT) for name in faults["links"]):
        problems.append(f"{CUT} is up")
    problems += [f"{name} is down too" for name in faults["links"] if not _same(name, CUT)]
    problems += [f"{name} is impaired" for name in faults["impairments"]]
    problems += [f"{name} is paused too" for name in faults["paused"] if name != "controller"]
    return problems


def _require_outage(tb, what):
    problems = [p for p in _outage_problems(fault_state(tb)) if "too" not in p and "impaired" not in p]
    if problems:
        raise Wrong(f"this check grades {what} during the outage, and there is no outage yet: "
                    f"{' and '.join(problems)}", "'sudo testbed fault list'; README steps 3 and 4")


def _leaf_servers(tb, leaf):
    return {s["name"]: s for s in fabric(tb)["servers"] if s["leaf"] == leaf}


def _spine1_buckets(tb):
    """leaf1's select groups toward leaf2's servers, and the spines each one has a bucket to."""
    desc = fabric(tb)
    leaf1 = next(sw for sw in desc["switches"] if sw["name"] == "leaf1")
    remote = {s["ip"] for s in _leaf_servers(tb, "leaf2").values()}
    flows = ofctl("dump-flows", leaf1["bridge"])
    groups = {gid for ip, gid in re.findall(r"nw_dst=([\d.]+) actions=group:(\d+)", flows) if ip in remote}
    out = {}
    for gid, body in re.findall(r"group_id=(\d+),type=select,(\S*)", ofctl("dump-groups", leaf1["bridge"])):
        if gid in groups:
            out[gid] = {leaf1["ports"].get(port, {}).get("peer") for port in re.findall(r"output:(\d+)", body)}
    return leaf1["bridge"], out


def check_outage(ctx):
    """the controller is paused and leaf2-spine1 is down (nothing else), and the controller never saw the link go"""
    tb = ctx.testbed
    problems = _outage_problems(fault_state(tb))
    if problems:
        raise Wrong("the testbed is not in the outage of the README: " + "; ".join(problems),
                    "'sudo testbed fault list'; README steps 3 and 4 (and 'sudo testbed fault clear' "
                    "to start again from a healthy fabric)")
    bridge, groups = _spine1_buckets(tb)
    blind = [gid for gid, spines in groups.items() if "spine1" in spines]
    if not blind:
        raise Wrong(f"leaf1's groups toward leaf2 ({', '.join(sorted(groups)) or 'none found'}) have no bucket to "
                    "spine1: the controller rerouted around the cut link, so it saw it go down. The link went "
                    "down before the controller was paused (or while it ran again): bring the link up, wait "
                    "for spine1 to be back in the groups, then pause the controller first and cut the link second",
                    f"'sudo ovs-ofctl -O OpenFlow13 dump-groups {bridge}'; README steps 3 and 4")


def _pings(tb, src, targets, ident=None, count=2):
    """Ping every address of ``targets`` {label: ip} from ``src`` at once; the labels that got no reply."""
    flag = f"-e {ident} " if ident is not None else ""
    script = " ".join(f"(ping -n -q -c {count} -i 0.5 -W 3 {flag}{ip} >/dev/null || echo {label}) &"
                      for label, ip in targets.items()) + " wait"
    done = tb.exec(src, "sh", "-c", script)
    if done.returncode:
        raise Wrong(f"the pings from {src} did not run: {done.stderr.strip()}", "sudo testbed status")
    return done.stdout.split()


def _established(tb):
    """srv1's forward entries of step 2's flows: {(vm, ident): entry}."""
    want = {RED[vm]: vm for vm in ESTABLISHED}
    return {(want[e["dst"]], e["sport"]): e for e in tb.vr("srv1", "flows")
            if e["proto"] == "icmp" and e["role"] == "forward" and e["src"] == RED["red1"]
            and e["dst"] in want and e["sport"] in IDS}


def _away(tb, server, peers):
    """{(peer, slot): port} of ``server``'s path slots toward ``peers`` (underlay addresses) that
    carry their flows on a port other than the one they were made with (repaired)."""
    return {(path["peer"], s["slot"]): s["port"] for path in tb.vr(server, "paths").get("paths", [])
            if path["peer"] in peers for s in path["slots"] if s["port"] != s["home"]}


def check_established_flows(ctx):
    """red1's established flows to red3 and red4 still work on their own entries, some on ports srv1 repaired"""
    tb = ctx.testbed
    before = _established(tb)
    missing = [f"{vm} id {i}" for vm in ESTABLISHED for i in IDS if (vm, i) not in before]
    if missing:
        raise Wrong(f"{len(missing)} of {len(ESTABLISHED) * len(IDS)} established flows have no entry at srv1 "
                    f"(e.g. {', '.join(missing[:3])}): step 2 makes them before the outage. An entry idle for "
                    "180 s ages out: run step 2's command again if yours did",
                    "'sudo testbed vr srv1 flow -l' (icmp 192.168.1.11:8001 -> 192.168.1.13:8001); README step 2")
    _require_outage(tb, "the established flows")
    lost = []
    for ident in IDS:
        lost += [f"{vm} id {ident}" for vm in _pings(tb, "red1", {vm: RED[vm] for vm in ESTABLISHED}, ident)]
    if lost:
        raise Wrong(f"{len(lost)} established flows got no reply during the outage: {', '.join(lost[:6])}",
                    "'sudo testbed vr srv1 paths' (dead slots), 'sudo testbed vr srv1 dropstats'; README step 5")
    after = _established(tb)
    renewed = [f"{k[0]} id {k[1]}" for k, e in before.items() if k not in after or after[k]["packets"] <= e["packets"]]
    if renewed:
        raise Wrong(f"the pings of {', '.join(renewed[:4])} did not use the flow's entry of step 2 (it was replaced "
                    "or not counted)", "'sudo testbed vr srv1 flow -l'")
    peers = {s["ip"] for s in _leaf_servers(tb, "leaf2").values()}
    repaired = set(_away(tb, "srv1", peers).values())
    moved = [k for k, e in after.items() if e["entropy_sport"] in repaired]
    if not moved:
        raise Wrong(f"none of the {len(after)} established flows runs on a port srv1 repaired ({len(repaired)} slots "
                    f"toward leaf2 are away from home): either nothing was lost on the way to leaf2 (is {CUT} down, "
                    "and does leaf1 still hash onto spine1?) or no flow hashes onto the slots that were",
                    "'sudo testbed vr srv1 paths' (Port vs Home), 'sudo testbed vr srv1 flow -l' (the source "
                    "port of each entry); README step 5")


def check_new_flows(ctx):
    """new flows between every two VMs under the two leaves work, in both networks"""
    tb = ctx.testbed
    _require_outage(tb, "new flows")
    under = {name: s["leaf"] for name, s in ((s["name"], s) for s in fabric(tb)["servers"])}
    lost = []
    for net in (RED, BLUE):
        for src in net:
            far = {d: ip for d, ip in net.items() if under[f"srv{d[-1]}"] != under[f"srv{src[-1]}"]}
            lost += [f"{src} -> {d}" for d in _pings(tb, src, far)]
    if lost:
        raise Wrong(f"{len(lost)} of 16 new flows between the leaves got no reply: {', '.join(lost)}",
                    "'sudo testbed vr SERVER dropstats' on both ends, 'sudo testbed vr SERVER paths', "
                    "'sudo testbed net paths'; README step 5")


def _responder_counts(tb, leaf):
    """ARP requests ``leaf``'s responder flows answered, per target address (n_packets)."""
    bridge = next(sw["bridge"] for sw in fabric(tb)["switches"] if sw["name"] == leaf)
    return {ip: int(n) for n, ip in re.findall(r"n_packets=(\d+),.*arp_tpa=([\d.]+),arp_op=1 actions=",
                                              ofctl("dump-flows", bridge))}, bridge


def check_restarted_server(ctx):
    """srv4, restarted during the outage, decides with its cached configuration and resolves its peers through leaf2"""
    tb = ctx.testbed
    _require_outage(tb, "a restart")
    if _pings(tb, "red4", {"red1": RED["red1"]}, count=1):   # a decision at srv4 brings its agent's counters along
        raise Wrong("red4 -> red1 got no reply", "'sudo testbed vr srv4 dropstats'; README step 6")
    agent = tb.vr("srv4", "stats").get("agent", {})
    if not agent.get("configs_from_cache"):
        raise Wrong(f"srv4's agent got its configuration from the controller (configs {agent.get('configs', 0)}, "
                    "configs_from_cache 0): srv4 was not restarted during the outage",
                    "'sudo testbed vr srv4 stats' (agent: configs, configs_from_cache); README step 6")
    srv4 = _leaf_servers(tb, "leaf2")["srv4"]
    near = _leaf_servers(tb, "leaf1")
    before, bridge = _responder_counts(tb, "leaf2")
    flushed = tb.exec("srv4", "ip", "neigh", "flush", "dev", srv4["intf"])
    if flushed.returncode:
        raise Wrong(f"could not flush srv4's neighbour table: {flushed.stderr.strip()}", "sudo testbed status")
    lost = _pings(tb, "red4", {vm: RED[vm] for vm in ("red1", "red2")})
    deadline = time.monotonic() + STATS_LAG
    while True:
        after, _ = _responder_counts(tb, "leaf2")
        unanswered = [name for name, s in near.items() if after.get(s["ip"], 0) <= before.get(s["ip"], 0)]
        if not unanswered or time.monotonic() > deadline:
            break
        time.sleep(0.25)
    if lost or unanswered:
        raise Wrong(f"with srv4's neighbour table flushed, {', '.join(f'red4 -> {vm}' for vm in lost) or 'the pings'} "
                    f"{'got no reply' if lost else 'worked'}, and leaf2 answered no ARP request for "
                    f"{', '.join(unanswered) or 'them'}", f"'sudo ovs-ofctl -O OpenFlow13 dump-flows {bridge} arp' "
                    "(n_packets of the arp_op=1 flows), 'sudo testbed exec srv4 ip neigh'; README step 6")


def check_path_repair(ctx):
    """srv1 and srv2 steer their tunnels to leaf2 around spine1 (slots away from home)"""
    tb = ctx.testbed
    _require_outage(tb, "path repair")
    peers = {s["ip"] for s in _leaf_servers(tb, "leaf2").values()}
    for src in ("red1", "red2"):                 # paths are probed while flows use them
        _pings(tb, src, {vm: RED[vm] for vm in ("red3", "red4")}, count=1)
    steady = {srv: set(_away(tb, srv, peers)) for srv in ("srv1", "srv2")}
    for _ in range(SAMPLES - 1):
        time.sleep(SAMPLE_GAP)
        for srv in steady:
            steady[srv] &= set(_away(tb, srv, peers))
    home = [srv for srv, slots in steady.items() if not slots]
    if home:
        raise Wrong(f"every path slot of {' and '.join(home)} toward leaf2 stays at its home port: nothing they send "
                    "toward leaf2 is lost, so leaf1 does not hash onto the cut link (did the controller reroute "
                    "around it?)", "'sudo testbed vr srv1 paths', 'sudo testbed net paths'; README step 5")


def solve(ctx):
    """The solution's outage.sh, line by line, on the lab's testbed (from a healthy fabric)."""
    tb = ctx.testbed
    faults = fault_state(tb)
    if faults["links"] or faults["paused"] or faults["impairments"]:
        tb.testbed("fault clear")
        deadline = time.monotonic() + 30             # the resumed controller puts spine1 back into the groups
        while not all("spine1" in spines for spines in _spine1_buckets(tb)[1].values()):
            if time.monotonic() > deadline:
                raise Wrong("after 'testbed fault clear' the controller did not put spine1 back into leaf1's groups",
                            "'sudo testbed fault list', the controller's log")
            time.sleep(0.5)
    apply_script(tb, ctx.folder / "outage.sh")
