"""`testbed trace` against what really happens to the packet, on one testbed (topologies/default.yaml):
a miss, then the packet sent for real (the entries it installs are the ones predicted), the hit after
it, the spine the trace names against the spine whose port counters carried the flow, a policy drop
(the named counter rises), a cross-network attempt, and that tracing changed nothing."""
import json
import re
import subprocess
import sys
import time

import pytest

from testbed import REPO
from vrouter.io import introspect

pytestmark = pytest.mark.e2e
DEFAULT = REPO / "topologies" / "default.yaml"
# The first packet waits for the decision (a burst behind it would overflow the hold queue): then the rest.
SEND = ("python3 -c \"import socket,time;s=socket.socket(2,2);s.bind(('',{sport}));"
        "[(s.sendto(b'x',('{dst}',{dport})),time.sleep(0.3 if i == 0 else 0.002)) for i in range({n})]\"")


def cli(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "testbed.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def bed(run_root, new_prefix):
    prefix = new_prefix("t")
    opts = ["--prefix", prefix, "--run-root", str(run_root)]
    r = cli("up", str(DEFAULT), *opts, timeout=300)
    assert r.returncode == 0, r.stderr
    yield prefix, opts, run_root / prefix
    cli("down", *opts, timeout=300)


def _trace(opts, *args):
    r = cli("trace", *opts, *args, "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def _flows(rundir, server):
    """The flow table by 5-tuple, without the idle time (it grows by itself)."""
    return {(f["src"], f["dst"], f["sport"], f["dport"]): {k: v for k, v in f.items() if k != "idle"}
            for f in introspect.query(rundir, server, "flows")}


def _kind(d, kind, place):
    return [s["fields"] for s in d["steps"] if s["kind"] == kind and s["place"] == place]


def _spine_tx(prefix):
    """Packets each spine sent towards leaf2 (its port 2): ovs-ofctl dump-ports."""
    out = {}
    for spine in ("s1", "s2"):
        text = subprocess.run(["ovs-ofctl", "-O", "OpenFlow13", "dump-ports", f"{prefix}-{spine}", "2"],
                              capture_output=True, text=True, check=True).stdout
        out[f"spine{spine[1]}"] = int(re.search(r"tx pkts=(\d+)", text).group(1))
    return out


def test_trace_predicts_what_the_packet_then_does(bed):
    prefix, opts, rundir = bed
    assert cli("exec", *opts, "red1", "ping -c2 -W2 192.168.1.13").returncode == 0   # path slots to srv3
    before = (_flows(rundir, "srv1"), introspect.query(rundir, "srv1", "dropstats"))
    miss = _trace(opts, "red1", "--proto", "udp", "--dst", "192.168.1.13", "--dport", "80", "--sport", "41000",
                  "--reply")
    assert (_flows(rundir, "srv1"), introspect.query(rundir, "srv1", "dropstats")) == before   # (f) no state changed
    fwd = miss["forward"]
    assert _kind(fwd, "flow", "srv1")[0]["hit"] is False and fwd["outcome"]["vm"] == "red3"
    assert _kind(fwd, "policy", "srv1")[0]["verdict"] == "allow"
    (leaf,) = _kind(fwd, "switch", "leaf1")
    spine = leaf["to"]
    assert leaf["ecmp"]["bucket"] is not None and spine in ("spine1", "spine2")
    # (a) send it for real: the entries are the ones the trace predicted, reverse included.
    tx0 = _spine_tx(prefix)
    n = 600
    assert cli("exec", *opts, "red1", SEND.format(sport=41000, dst="192.168.1.13", dport=80, n=n)).returncode == 0
    flows = _flows(rundir, "srv1")
    f, r = flows[("192.168.1.11", "192.168.1.13", 41000, 80)], flows[("192.168.1.13", "192.168.1.11", 80, 41000)]
    (enc,) = _kind(fwd, "encap", "srv1")
    assert f["action"] == "forward" and f["rule"] == -1 and f["entropy_sport"] == enc["outer_sport"]
    assert r["role"] == "reverse" and f["reverse_index"] == r["index"]
    # (e) ECMP: the spine the trace named carried the flow's packets. Both spines also carry the
    # path probes of every slot (8 per peer each 100 ms, spread over both by their own hashes: 50-120
    # packets a spine in this window, not evenly), so the flow shows as the named spine's lead.
    time.sleep(1)
    tx1 = _spine_tx(prefix)
    other = "spine2" if spine == "spine1" else "spine1"
    named, rest = tx1[spine] - tx0[spine], tx1[other] - tx0[other]
    assert named >= n and named - rest >= n / 2, (spine, tx0, tx1)
    # (b) the hit after, and the reply caught by the proactive reverse entry.
    hit = _trace(opts, "red1", "--proto", "udp", "--dst", "192.168.1.13", "--dport", "80", "--sport", "41000",
                 "--reply")
    h = _kind(hit["forward"], "flow", "srv1")[0]
    assert h["hit"] and h["index"] == f["index"] and h["role"] == "forward"
    assert "hits the proactive reverse entry" in hit["reply"]["reverse_entry"]
    # (c) a policy drop: the rule is named, and the real packet raises that counter.
    rules = rundir / "deny.yaml"
    rules.write_text("default: allow\nrules:\n  - {action: deny, protocol: udp, dst: 192.168.1.13/32, dst_port: 81}\n")
    assert cli("net", "policy", *opts, "red", "--file", str(rules)).returncode == 0
    d = _trace(opts, "red1", "--proto", "udp", "--dst", "192.168.1.13", "--dport", "81")["forward"]["outcome"]
    assert d["action"] == "drop" and d["reason"] == "policy_deny" and d["rule"] == 0 and "dst_port 81" in d["rule_text"]
    drops0 = introspect.query(rundir, "srv1", "dropstats")["policy_deny"]
    assert cli("exec", *opts, "red1", SEND.format(sport=41001, dst="192.168.1.13", dport=81, n=3)).returncode == 0
    assert introspect.query(rundir, "srv1", "dropstats")["policy_deny"] == drops0 + 3
    # (d) cross-network: blue1 aiming at red-only 192.168.1.13 reaches blue's own VM with that address.
    x = _trace(opts, "blue1", "--proto", "udp", "--dst", "192.168.1.13", "--dport", "80")["forward"]
    assert x["outcome"]["vm"] == "blue3" and _kind(x, "vrf", "srv1")[0]["network"] == "blue"
    bad = cli("trace", *opts, "red9", "--proto", "udp", "--dst", "192.168.1.13", "--dport", "80")
    assert bad.returncode == 2 and bad.stderr.startswith("error: unknown VM") and "Traceback" not in bad.stderr


# A TCP SYN from a fixed source port (the answer, or its refusal, does not matter: the entries do).
SYN = ("python3 -c \"import socket;s=socket.socket();s.bind(('',{sport}));s.settimeout(3)\n"
       "try: s.connect(('{dst}',{dport}))\nexcept OSError: pass\"")


@pytest.fixture(scope="module")
def intervn(run_root, new_prefix):
    prefix = new_prefix("i")
    opts = ["--prefix", prefix, "--run-root", str(run_root)]
    r = cli("up", str(REPO / "topologies" / "inter-vn.yaml"), *opts, timeout=300)
    assert r.returncode == 0, r.stderr
    yield prefix, opts, run_root / prefix
    cli("down", *opts, timeout=300)


def test_trace_explains_the_leak_and_the_member_as_the_agent_then_installs(intervn):
    prefix, opts, rundir = intervn
    green1, red3, svc = "192.168.3.11", "192.168.1.13", "192.168.1.100"
    for peer in ("192.168.1.12", red3):          # path slots (outer ports) from srv1 to srv2 and srv3
        assert cli("exec", *opts, "red1", f"ping -c2 -W2 {peer}").returncode == 0
    # Between networks: green's rule 0 admits tcp 80, red's rule 0 the reverse, keyed in red (vrf 100).
    t = _trace(opts, "green1", "--proto", "tcp", "--dst", red3, "--dport", "80", "--sport", "41100")["forward"]
    (route,), (pol,), (rev,) = (_kind(t, k, "srv1") for k in ("route", "policy", "reverse"))
    assert route["leaked_from"] == "red" and (pol["network"], pol["rule"], pol["verdict"]) == ("green", 0, "allow")
    assert (rev["vrf"], rev["network"], rev["rule"]) == (100, "red", 0) and t["outcome"]["vm"] == "red3"
    assert cli("exec", *opts, "green1", SYN.format(sport=41100, dst=red3, dport=80)).returncode == 0
    flows = {(f["vrf"], f["src"], f["dst"], f["sport"], f["dport"]): f
             for f in introspect.query(rundir, "srv1", "flows")}
    f, r = flows[(300, green1, red3, 41100, 80)], flows[(100, red3, green1, 80, 41100)]
    assert (f["action"], f["rule"], r["role"], r["rule"]) == ("forward", 0, "reverse", 0)
    d = _trace(opts, "green1", "--proto", "tcp", "--dst", red3, "--dport", "22", "--sport", "41101")["forward"]
    assert d["outcome"]["reason"] == "policy_deny" and d["outcome"]["rule"] == 1
    assert cli("exec", *opts, "green1", SYN.format(sport=41101, dst=red3, dport=22)).returncode == 0
    f22 = next(f for f in introspect.query(rundir, "srv1", "flows") if (f["src"], f["sport"]) == (green1, 41101))
    assert (f22["action"], f22["reason"], f22["rule"]) == ("drop", "policy_deny", 1)
    # A service added at run time: the member the trace names is the member the real flow goes to.
    r = cli("net", "service", "add", "web", *opts, "--network", "red", "--address", svc, "--members", "red2,red3")
    assert r.returncode == 0, r.stderr
    for sport in (41200, 41201, 41202, 41203):
        deadline = time.time() + 60
        while True:                     # until srv1's forwarder runs the generation with the service
            s = _trace(opts, "red1", "--proto", "tcp", "--dst", svc, "--dport", "80", "--sport", str(sport))["forward"]
            if _kind(s, "service", "srv1") or time.time() > deadline:
                break
            time.sleep(1)
        (chosen,) = _kind(s, "service", "srv1")
        assert chosen["member"] in ("red2", "red3") and s["outcome"]["vm"] == chosen["member"]
        assert cli("exec", *opts, "red1", SYN.format(sport=sport, dst=svc, dport=80)).returncode == 0
        fl = {(f["src"], f["dst"], f["sport"]): f for f in introspect.query(rundir, "srv1", "flows")}
        assert fl[("192.168.1.11", svc, sport)]["member"] == chosen["member"]
        (back,) = [f for f in introspect.query(rundir, "srv1", "flows") if (f["src"], f["dport"]) == (svc, sport)]
        assert back["member"] == chosen["member"] and back["pin"] == _kind(s, "reverse", "srv1")[0]["pin"]
