"""Offline replay: run the pipeline over a pcap capture, no root, no sockets.

Which side a frame enters: an IPv4 frame to this server's underlay address carrying UDP port 6635
(MPLS over UDP), UDP 4789 (VXLAN) or GRE comes from the fabric; any other frame comes from the VM
whose MAC is its Ethernet source (unknown MACs count as ``invalid_vif``). A punted flow is decided
at once by a SlowPath built from the same configuration (an agent with zero latency), so the output
shows exactly which packets cost a slow-path call in proactive or reactive mode.
"""
import json
import struct

import yaml

from vrouter.core.actions import PuntRequest, ToTunnel, ToVif
from vrouter.core.codec import Malformed, gre, mpls, outer
from vrouter.core.codec.ipv4 import int_to_ip
from vrouter.core.config import ConfigError, VrouterConfig
from vrouter.core.flowkey import extract
from vrouter.core.flowtable import PROTO_NAMES
from vrouter.core.pipeline import Pipeline
from vrouter.core.slowpath import SlowPath

LINKTYPE_ETHERNET = 1


class ReplayError(Exception):
    """Bad replay input (missing file, bad YAML, not a pcap); message is one line."""


def read_pcap(path: str) -> list[tuple[float, bytes]]:
    """Tiny pcap reader (classic format, microsecond or nanosecond, either byte order, Ethernet)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise ReplayError(f"{path}: cannot read capture ({exc.strerror})") from None
    if len(data) < 24:
        raise ReplayError(f"{path}: not a pcap file (too short)")
    magic = data[:4]
    formats = {b"\xd4\xc3\xb2\xa1": ("<", 1e-6), b"\xa1\xb2\xc3\xd4": (">", 1e-6),
               b"\x4d\x3c\xb2\xa1": ("<", 1e-9), b"\xa1\xb2\x3c\x4d": (">", 1e-9)}
    if magic not in formats:
        raise ReplayError(f"{path}: not a pcap file (bad magic {magic.hex()}; pcapng is not supported)")
    order, unit = formats[magic]
    linktype = struct.unpack_from(order + "I", data, 20)[0]
    if linktype != LINKTYPE_ETHERNET:
        raise ReplayError(f"{path}: link type {linktype} is not Ethernet")
    packets, off = [], 24
    while off < len(data):
        if len(data) - off < 16:
            raise ReplayError(f"{path}: truncated record header at byte {off}")
        sec, frac, incl, _orig = struct.unpack_from(order + "IIII", data, off)
        off += 16
        if len(data) - off < incl:
            raise ReplayError(f"{path}: truncated packet at byte {off}")
        packets.append((sec + frac * unit, data[off:off + incl]))
        off += incl
    return packets


def load_config(path: str) -> VrouterConfig:
    try:
        with open(path) as f:
            doc = yaml.safe_load(f)
    except OSError as exc:
        raise ReplayError(f"{path}: cannot read config ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ReplayError(f"{path}: invalid YAML{where}: {getattr(exc, 'problem', None) or exc}") from None
    try:
        return VrouterConfig.from_dict(doc)
    except ConfigError as exc:
        raise ReplayError(f"{path}: {exc}") from None


def _summary(buf, off: int) -> str:
    try:
        proto, src, dst, sport, dport, *_rest, flags, icmp_type = extract(buf, off)
    except Malformed as exc:
        return f"malformed ({exc})"
    name = PROTO_NAMES.get(proto, f"proto {proto}")
    if sport is None:
        return f"{name} {int_to_ip(src)} > {int_to_ip(dst)} fragment"
    if proto == 1:
        return f"icmp {int_to_ip(src)} > {int_to_ip(dst)} type {icmp_type} id {sport}"
    text = f"{name} {int_to_ip(src)}:{sport} > {int_to_ip(dst)}:{dport}"
    if proto == 6:
        text += " [" + "".join(c for bit, c in zip((2, 16, 1, 4, 8), "SAFRP", strict=True) if flags & bit) + "]"
    return text


def _describe_action(a) -> str:
    if isinstance(a, ToVif):
        return f"to vif {a.vif} ({len(a.frame)} B)"
    if isinstance(a, ToTunnel):
        return f"to tunnel {a.peer} {a.encap} sport {a.sport} ({len(a.payload)} B)"
    return f"drop: {a.reason}"


def _describe_spec(spec) -> str:
    if spec is None:
        return "none"
    if spec["action"] != "forward":
        return f"drop ({spec['reason']})"
    nh = spec["nexthop"]
    return {"vif": lambda: f"vif {nh['vif']}", "tunnel": lambda: f"tunnel {nh['peer']} label {nh['label']}"}.get(
        nh["type"], lambda: nh["type"])()


class Replayer:
    def __init__(self, config: VrouterConfig):
        self.config = config
        self.pipeline = Pipeline(config)
        self.slow = SlowPath(config)
        self.vif_by_mac = {v.mac: v.name for v in config.vifs}
        self.slow_calls = 0

    def packet(self, frame: bytes, now: float) -> tuple[str, list[str]]:
        self.pipeline.expire(now)
        try:
            o = outer.parse_fabric_frame(frame)
        except Malformed:
            o = None
        if o is not None and int_to_ip(o.dst) == self.config.underlay_ip:
            label = f"fabric {int_to_ip(o.src)} {o.encap}"
            inner_off = self._inner_offset(frame, o)
            what = _summary(frame, inner_off) if inner_off is not None else "undecodable tunnel payload"
            actions = self.pipeline.from_fabric_frame(frame, now)
        else:
            vif = self.vif_by_mac.get(bytes(frame[6:12]), "?unknown-mac")
            label = f"vif {vif}"
            if len(frame) >= 42 and frame[12:14] == b"\x08\x06":
                what = f"arp op {frame[21]} who-has {int_to_ip(struct.unpack_from('!I', frame, 38)[0])}"
            else:
                what = _summary(frame, 14)
            actions = self.pipeline.from_vif(vif, frame, now)
        return f"{label}: {what}", self._resolve(actions, now) + self._punts(now)

    @staticmethod
    def _inner_offset(frame, o):
        """Where the inner IPv4 packet starts (decoded as the pipeline does), or None."""
        off = o.payload_offset
        if o.encap == "vxlan":
            return off + 22
        try:
            if o.encap == "mplsogre":
                off += gre.parse(frame, off).header_length
            return mpls.parse_stack(frame, off)[1]
        except Malformed:
            return None

    def _resolve(self, actions, now, depth=0) -> list[str]:
        return ["  " * depth + "-> " + _describe_action(a) for a in actions]

    def _punts(self, now, depth=0) -> list[str]:
        """New flows wait in the setup queue: the agent decides each at once, as the shell would."""
        lines = []
        for request in self.pipeline.take_punts(now):
            lines += self._punt(request, now, depth)
        return lines

    def _punt(self, request: PuntRequest, now, depth) -> list[str]:
        self.slow_calls += 1
        decision = self.slow.decide(request, now)
        lines = ["  " * depth + "-> punt to agent (new flow)",
                 "  " * depth + f"   agent: forward {_describe_spec(decision['forward'])}, "
                 f"reverse {_describe_spec(decision['reverse'])}"]
        lines += self._resolve(self.pipeline.install(decision, now), now, depth + 1)
        return lines + self._punts(now, depth + 1)


def run(config_path: str, capture_path: str, mode: str | None = None, as_json: bool = False, out=print) -> int:
    config = load_config(config_path)
    if mode:
        d = dict(config.to_dict())
        d["flow"] = {**(d.get("flow") or {}), "mode": mode}
        config = VrouterConfig.from_dict(d)
    packets = read_pcap(capture_path)
    r = Replayer(config)
    t0 = packets[0][0] if packets else 0.0
    for i, (ts, frame) in enumerate(packets, 1):
        head, lines = r.packet(frame, ts - t0)
        out(f"#{i:<4} {ts - t0:10.6f}  {head}")
        for line in lines:
            out("       " + line)
    flows = r.pipeline.flows(now=(packets[-1][0] - t0) if packets else 0.0)
    drops = r.pipeline.drop_stats()
    stats = r.pipeline.stats()
    out("")
    out(f"Flow table ({len(flows)} entries, mode {config.flow.mode}, {r.slow_calls} slow-path calls "
        f"for {len(packets)} packets)")
    out(f"{'Index':>5} {'RIndex':>6}  {'Proto(VRF)':<11} {'Source':<22} {'Destination':<22} {'Action':<17} "
        f"{'Role':<8} {'Pkts':>5} {'Bytes':>7}  TCP / Next hop")
    for f in flows:
        nh = f["nexthop"] or {}
        nh_text = {"vif": f"vif {nh.get('vif')}", "tunnel": f"tunnel {nh.get('peer')}"}.get(nh.get("type"), "-")
        action = f["action"] if f["action"] != "drop" else f"drop({f['reason']})"
        out(f"{f['index']:>5} {str(f['reverse_index'] if f['reverse_index'] is not None else '-'):>6}  "
            f"{f['proto'] + '(' + str(f['vrf']) + ')':<11} {f['src'] + ':' + str(f['sport']):<22} "
            f"{f['dst'] + ':' + str(f['dport']):<22} {action:<17} {f['role']:<8} {f['packets']:>5} {f['bytes']:>7}  "
            f"{f['tcp_state'] or '-'} / {nh_text}")
    out("")
    out("Drop counters (dropstats)")
    for reason, count in drops.items():
        if count:
            out(f"  {reason:<22} {count}")
    out(f"  {'total':<22} {sum(drops.values())}")
    if as_json:
        out(json.dumps({"packets": len(packets), "slow_path_calls": r.slow_calls, "stats": stats,
                        "drops": drops, "flows": flows}, sort_keys=True))
    return 0
