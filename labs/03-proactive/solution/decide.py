"""Lab 3, solved: the slow path's decision for a new flow, with the proactive reverse entry.

The same as vrouter/core/slowpath.py's SlowPath.decide, written as the lab asks.
"""


def mirror(key):
    """The key of the packets that answer a flow of ``key``, as the reply's first packet carries it."""
    proto, src, dst, sport, dport = key
    return [proto, dst, src, dport, sport]


def decide(request, evaluate, mode):
    """The agent's decision for one punted flow (see the starter's docstring)."""
    key = [request["proto"], request["src"], request["dst"], request["sport"], request["dport"]]
    forward = evaluate(*key)
    # Its own evaluation: a policy may allow one direction and deny the other.
    reverse = evaluate(*mirror(key)) if mode == "proactive" else None
    return {"vrf": request["vrf"], "mode": mode, "forward": forward, "reverse": reverse}
