"""Lab 3's check: the student's mirror() and decide() (decide.py), alone and inside two real vrouters.

The unit and property checks call the student's functions with a recording evaluate(); the
integration checks give the student's decide() to the agents of two real Pipelines wired back to
back (testbed/labkit.py Pair) and count slow-path calls and read their flow tables, as
`testbed vr srv1 flow -l` would.
"""
from hypothesis import given
from hypothesis import strategies as st

from testbed.labkit import PROPERTY, VM1, VM2, VM2_MAC, Pair, ToVif, Wrong, flow_text, icmp_frame, tcp_frame
from vrouter.core.codec.ipv4 import ip_to_int
from vrouter.core.codec.l4 import TCP_ACK, TCP_SYN
from vrouter.core.slowpath import SlowPath

WHERE_MIRROR = "decide.py, mirror() (TODO 1)"
WHERE_REVERSE = "decide.py, decide() (TODO 2)"
A, B = ip_to_int(VM1), ip_to_int(VM2)
NET = ip_to_int("192.168.1.0")

keys = st.tuples(st.sampled_from([1, 6, 17]), st.integers(NET, NET + 255), st.integers(NET, NET + 255),
                 st.integers(0, 65535), st.integers(0, 65535)).map(list)


def _request(key, vrf=100):
    proto, src, dst, sport, dport = key
    return {"vrf": vrf, "proto": proto, "src": src, "dst": dst, "sport": sport, "dport": dport,
            "ingress": "vif", "port": "tr-red1", "tcp_flags": 2, "length": 60, "owner": "tr-red1"}


def _evaluate(proto, src, dst, sport, dport):
    """A stand-in for the agent's evaluate(): a distinct, recognisable entry for every key."""
    allowed = (src + dport) % 3 != 0
    return {"key": [proto, src, dst, sport, dport], "action": "forward" if allowed else "drop",
            "reason": None if allowed else "policy_deny", "nexthop": None, "rule": -1 if allowed else 0}


def _decide(student, key, mode):
    out = student.decide(_request(key), _evaluate, mode)
    if not isinstance(out, dict) or not {"vrf", "mode", "forward", "reverse"} <= set(out):
        raise Wrong(f"decide() returned {out!r}; expected a dict with vrf, mode, forward and reverse",
                    "decide.py, decide(): its return statement")
    return out


def student_slowpath(student):
    """The real SlowPath with the student's decide() in it."""
    class StudentSlowPath(SlowPath):
        def decide(self, request, now=0.0):
            vrf = self.instance(request["vrf"])
            return student.decide(dict(request), lambda *key: self.evaluate(vrf, *key), self.mode)
    return StudentSlowPath


def check_mirror(ctx):
    """mirror() gives the key of the reply"""
    student = ctx.student()
    key = [6, A, B, 40000, 80]
    want = [6, B, A, 80, 40000]
    got = student.mirror(list(key))
    if list(got or ()) != want:
        raise Wrong(f"mirror({key}) returned {got}; the reply to {flow_text(key)} is {flow_text(want)}, "
                    f"key {want}", WHERE_MIRROR)

    @PROPERTY
    @given(keys)
    def mirrored_twice_is_the_key(key):
        once = student.mirror(list(key))
        assert list(student.mirror(list(once))) == key, \
            f"mirror(mirror({key})) is not {key}: the reply to a reply is the flow itself ({WHERE_MIRROR})"
        assert list(once) == [key[0], key[2], key[1], key[4], key[3]], \
            f"mirror({key}) returned {once} ({WHERE_MIRROR})"
    mirrored_twice_is_the_key()


def check_forward_entry(ctx):
    """the forward entry is the punted flow's own evaluation, in both modes"""
    student = ctx.student()

    @PROPERTY
    @given(keys, st.sampled_from(["proactive", "reactive"]))
    def forward_is_evaluated(key, mode):
        out = _decide(student, key, mode)
        if out["forward"] != _evaluate(*key):
            raise Wrong(f"{mode} decision for {flow_text(key)}: forward entry {out['forward']!r} is not "
                        f"evaluate({key})", "decide.py, decide(): the forward entry")
        if out["vrf"] != 100 or out["mode"] != mode:
            raise Wrong(f"decision has vrf {out['vrf']!r} and mode {out['mode']!r}; expected the request's "
                        f"vrf (100) and the mode passed in ({mode!r})", "decide.py, decide(): its return statement")
    forward_is_evaluated()


def check_reverse_entry(ctx):
    """proactive mode: a reverse entry, evaluated on its own for the mirrored key"""
    student = ctx.student()

    @PROPERTY
    @given(keys)
    def reverse_is_its_own(key):
        out = _decide(student, key, "proactive")
        rev, want = out["reverse"], [key[0], key[2], key[1], key[4], key[3]]
        if rev is None:
            raise Wrong(f"proactive decision for {flow_text(key)} has no reverse entry: the reply's first "
                        "packet will miss the flow table and punt again", WHERE_REVERSE)
        rkey = rev.get("key") if isinstance(rev, dict) else rev
        if rkey != want:
            if rkey == list(student.mirror(list(key))):
                raise Wrong(f"proactive decision for {flow_text(key)}: reverse entry key {rkey}, which is what "
                            f"your mirror() gives; the reply carries {want} ({flow_text(want)})", WHERE_MIRROR)
            if rev == out["forward"]:
                raise Wrong(f"proactive decision for {flow_text(key)}: the reverse entry is a copy of the forward "
                            f"one; it must be evaluate() of the reply's key {want} (its own route and policy)",
                            WHERE_REVERSE)
            raise Wrong(f"proactive decision for {flow_text(key)}: reverse entry key {rkey!r}; the reply carries "
                        f"{want} ({flow_text(want)})", WHERE_REVERSE)
        if rev != _evaluate(*want):
            raise Wrong(f"proactive decision for {flow_text(key)}: reverse entry {rev!r} is not "
                        f"evaluate({want}): take the verdict evaluate() gives the reply's key", WHERE_REVERSE)
    reverse_is_its_own()


def check_reactive_mode(ctx):
    """reactive mode: no reverse entry"""
    student = ctx.student()
    key = [17, A, B, 5000, 53]
    out = _decide(student, key, "reactive")
    if out["reverse"] is not None:
        raise Wrong(f"reactive decision for {flow_text(key)} has a reverse entry; reactive mode (the baseline "
                    "the lab measures against) installs only the forward one", WHERE_REVERSE)


def _connection(p):
    """A TCP handshake red1 -> red2 plus one reply; the VIFs it reached, in order."""
    got = p.send("srv1", tcp_frame(VM1, VM2, 40000, 80, TCP_SYN))
    got += p.send("srv2", tcp_frame(VM2, VM1, 80, 40000, TCP_SYN | TCP_ACK, src_mac=VM2_MAC))
    got += p.send("srv1", tcp_frame(VM1, VM2, 40000, 80, TCP_ACK))
    return [a.vif if isinstance(a, ToVif) else a for a in got]


def check_slow_path_calls(ctx):
    """two real vrouters with your decide(): a connection costs 2 slow-path calls proactive, 4 reactive"""
    cls = student_slowpath(ctx.student())
    for mode, want in (("proactive", {"srv1": 1, "srv2": 1}), ("reactive", {"srv1": 2, "srv2": 2})):
        p = Pair(mode=mode, slowpath=cls)
        reached = _connection(p)
        if reached != ["tr-red2", "tr-red1", "tr-red2"]:
            raise Wrong(f"{mode}: the handshake red1 -> red2 port 80 delivered {reached} instead of "
                        "SYN to red2, SYN-ACK to red1, ACK to red2", WHERE_REVERSE)
        if p.punts != want:
            raise Wrong(f"{mode}: a TCP connection red1 -> red2 cost {sum(p.punts.values())} slow-path calls "
                        f"(srv1 {p.punts['srv1']}, srv2 {p.punts['srv2']}); expected {sum(want.values())}: "
                        + ("in proactive mode only the SYN punts, once per vrouter; the SYN-ACK must hit the "
                           "reverse entry the SYN's decision installed" if mode == "proactive" else
                           "in reactive mode the SYN and the SYN-ACK punt at both vrouters"), WHERE_REVERSE)
    p = Pair(mode="proactive", slowpath=cls)
    p.send("srv1", icmp_frame(VM1, VM2, ident=9))
    reply = p.send("srv2", icmp_frame(VM2, VM1, ident=9, type_=0, src_mac=VM2_MAC))
    if p.punts != {"srv1": 1, "srv2": 1} or [getattr(a, "vif", a) for a in reply] != ["tr-red1"]:
        raise Wrong(f"proactive: a ping red1 -> red2 and its reply cost srv1 {p.punts['srv1']} and srv2 "
                    f"{p.punts['srv2']} slow-path calls (expected 1 and 1); an echo reply carries the "
                    "request's identifier in both ports, so its key is the plain mirror", WHERE_MIRROR)


def check_reverse_policy(ctx):
    """a reverse entry gets its own policy verdict (a policy that denies replies)"""
    # red2 may not open anything towards red1; red1's connections to red2 are allowed, so their
    # reverse entries must be drop entries: the reply direction is denied.
    deny = [{"network": "red", "default": "allow", "rules": [{"action": "deny", "src": VM2 + "/32",
                                                              "dst": VM1 + "/32"}]}]
    p = Pair(mode="proactive", policies=deny, slowpath=student_slowpath(ctx.student()))
    got = p.send("srv1", tcp_frame(VM1, VM2, 40000, 80, TCP_SYN))
    if [getattr(a, "vif", a) for a in got] != ["tr-red2"]:
        raise Wrong(f"with a rule that denies red2 -> red1, the SYN red1 -> red2 (allowed) gave {got}",
                    "decide.py, decide(): the forward entry")
    rev = [f for f in p.flows("srv1") if f["role"] == "reverse"]
    if not rev:
        raise Wrong("srv1 installed no reverse entry for the SYN red1 -> red2", WHERE_REVERSE)
    if rev[0]["action"] != "drop" or rev[0]["reason"] != "policy_deny":
        raise Wrong(f"srv1's reverse entry red2 -> red1 is {rev[0]['action']!r}; the network's rule 0 denies "
                    "red2 -> red1, so it must drop (policy_deny): the reverse entry's verdict is the policy's "
                    "answer for the reply's key, not the forward entry's", WHERE_REVERSE)
