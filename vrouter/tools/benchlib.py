"""What every vrouter benchmark shares: the timer, the command line, the bench overlay and its
pipeline of established flows.

``python -m vrouter.bench`` aggregates the sub-benches (GRO/GSO, steering, workers) and each of
them also runs alone; they take their common pieces from here, so no bench imports another one
back. Nothing here is timed itself except through ``best_seconds``.
"""
import argparse
import json
import time

from vrouter.core.codec import ethernet, ipv4, l4
from vrouter.core.config import VROUTER_MAC, VrouterConfig
from vrouter.core.paths import SLOTS, Paths
from vrouter.core.pipeline import Pipeline
from vrouter.core.slowpath import SlowPath

VM_MAC = "02:00:00:00:01:0b"
LOCAL, REMOTE_BASE = "10.1.0.2", 0x0A020000   # remote VMs 10.2.x.y live on the peer server
PEER = "10.0.2.1"
JSON_HELP = "print one JSON object of the figures last"


def best_seconds(fn, repeats: int) -> float:
    """Shortest of ``repeats`` timed runs of ``fn()`` (the run least disturbed by other processes);
    every vrouter benchmark times with it."""
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def bench_cli(prog: str, doc: str, run, report, argv=None, quick_help=None, json_help=None) -> int:
    """The command line of every vrouter benchmark: `run(quick)` reported as text, and with --json
    also as one JSON object, last, for scripts."""
    parser = argparse.ArgumentParser(prog=prog, description=doc.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--json", action="store_true", help=json_help)
    args = parser.parse_args(argv)
    res = run(args.quick)
    report(res)
    if args.json:
        print(json.dumps(res, sort_keys=True))
    return 0


def overlay(encap: str) -> dict:
    """The bench server's config (one network, the VM ``tap0`` at LOCAL, a route to the peer's
    VMs), as the dict of ``VrouterConfig.from_dict``; callers add policies or flow settings."""
    return {
        "server": "bench", "underlay_ip": "10.0.1.1", "encapsulation": encap,
        "networks": [{"name": "red", "id": 100, "subnets": ["10.0.0.0/8"], "gateway": "10.1.0.1"}],
        "vifs": [{"name": "tap0", "network": "red", "mac": VM_MAC, "ip": LOCAL}],
        "routes": [{"network": "red", "prefix": "10.2.0.0/16",
                    "nexthop": {"type": "tunnel", "peer": PEER, "label": 100}}],
    }


def policed_config(encap: str, capacity: int) -> VrouterConfig:
    """The overlay with a three-rule policy (every new flow is decided against it) and a flow table
    of ``capacity`` entries, all of which the one bench VM may own (the per-VM limit is not what
    these benches measure)."""
    return VrouterConfig.from_dict({
        **overlay(encap),
        "policies": [{"network": "red", "default": "allow", "rules": [
            {"action": "deny", "protocol": "tcp", "dst": "10.2.255.0/24", "dst_port": "22"},
            {"action": "allow", "protocol": "tcp", "src": "10.0.0.0/8", "dst_port": "1-1023"},
            {"action": "deny", "protocol": "udp", "dst_port": "137-139"}]}],
        "flow": {"capacity": capacity, "mode": "proactive", "vm_flow_limit": capacity,
                 "network_flow_limit": capacity, "held_limit": capacity, "vm_held_limit": capacity},
    })


def vm_frame(remote: int, sport: int, size: int) -> bytes:
    """A TCP frame of ``size`` bytes from the VM to the remote VM address ``remote`` (an int)."""
    payload = b"\xab" * (size - 14 - 20 - 20)
    src = ipv4.ip_to_int(LOCAL)
    seg = l4.build_tcp(src, remote, sport, 80, payload, flags=l4.TCP_ACK)
    return ethernet.build(VROUTER_MAC, ethernet.mac_to_bytes(VM_MAC), ethernet.ETH_P_IP) + \
        ipv4.build(src, remote, ipv4.IPPROTO_TCP, seg)


def established(encap: str, flows: int, size: int) -> tuple[Pipeline, list, list]:
    """A pipeline with ``flows`` established TCP flows, and their packets for both directions:
    VM frames (towards the fabric) and tunnel payloads from the peer (towards the VM). With path
    repair's slots, as the forwarder runs by default (core/paths.py)."""
    cfg = policed_config(encap, capacity=4 * flows + 16)
    pipe, slow = Pipeline(cfg, Paths(SLOTS, seed=1)), SlowPath(cfg)
    to_fabric, to_vm = [], []
    for i in range(flows):
        frame = vm_frame(REMOTE_BASE + 1 + i % 60000, 10000 + i, size)
        assert pipe.from_vif("tap0", frame, 0.0) == []
        (request,) = pipe.take_punts(0.0)
        (tun,) = pipe.install(slow.decide(request), 0.0)
        to_fabric.append(frame)
        # The reply as the peer would send it: same encapsulation, addresses and ports swapped.
        reply_ip = bytearray(tun.payload[len(tun.payload) - (len(frame) - 14):])
        reply_ip[12:16], reply_ip[16:20] = reply_ip[16:20], reply_ip[12:16]
        reply_ip[20:22], reply_ip[22:24] = reply_ip[22:24], reply_ip[20:22]
        head = tun.payload[:len(tun.payload) - len(reply_ip)]
        to_vm.append(head + bytes(reply_ip))
    return pipe, to_fabric, to_vm
