"""Lab 3: the slow path's decision for a new flow, with the proactive reverse entry.

When the first packet of a flow misses the flow table, the forwarder punts it to the agent, and
the agent calls decide() once. Its answer is installed by the real pipeline
(vrouter/core/pipeline.py, Pipeline.install): the reverse entry first, then the forward entry.
`testbed lab check 3` runs two real vrouters with this decide() in their agents.

A key is [proto, src, dst, sport, dport]: proto 1 (ICMP), 6 (TCP) or 17 (UDP), addresses as ints
(192.168.1.11 is 3232235787), ports as ints (an ICMP echo carries its identifier in both).
"""


def mirror(key):
    """The key of the packets that answer a flow of ``key``, as the reply's first packet carries it."""
    # TODO 1: a reply comes from the destination, to the source, from the destination port to the
    # source port. Return that key (a new list; the protocol stays).
    return list(key)


def decide(request, evaluate, mode):
    """The agent's decision for one punted flow.

    request   the punt request: {"vrf", "proto", "src", "dst", "sport", "dport", ...}
    evaluate  evaluate(proto, src, dst, sport, dport) -> the entry for one direction of this flow's
              network: its route lookup and its policy verdict ({"key", "action", "reason", ...})
    mode      "proactive" (install the reverse entry now) or "reactive" (only the forward one)
    """
    key = [request["proto"], request["src"], request["dst"], request["sport"], request["dport"]]
    forward = evaluate(*key)
    reverse = None
    # TODO 2: in proactive mode, decide the reverse entry as well, so that the reply's first packet
    # hits the flow table instead of punting again. The reverse direction has a route and a policy
    # verdict of its own: evaluate its key; do not copy the forward entry.
    return {"vrf": request["vrf"], "mode": mode, "forward": forward, "reverse": reverse}
