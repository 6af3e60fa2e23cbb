"""The virtual network controller as an os-ken app: a thin OpenFlow 1.3 adapter over FabricLogic.

All decisions live in controllers/fabric_logic.py; this module only turns them into messages,
feeds port events back in, and hosts the VNC control channel (controllers/vnc_rpc.py) if asked.
No flow sends packets to the controller (the leaves answer ARP themselves), so there is no
packet-in handler: the fabric forwards and resolves with the controller stopped.
Programming is hitless so the controller can restart while the fabric runs: flows are ADDed
(OVS replaces an identical match in place) and groups are modified-or-created in place.

Select groups go through `ovs-ofctl -O OpenFlow15` on the bridge's local management socket: the
datapath's 5-tuple hash including UDP ports needs OVS's selection_method=dp_hash extension
(controllers/fabric_logic.py SELECTION says why), which OpenFlow 1.3 group mods (all os-ken
speaks to us here) cannot carry. Groups are written before the flows that
point at them, synchronously, so a flow never refers to a missing group.
"""
from __future__ import annotations

import json
import logging
import subprocess
import time

from os_ken.base import app_manager
from os_ken.controller import ofp_event
from os_ken.controller.handler import CONFIG_DISPATCHER, DEAD_DISPATCHER, MAIN_DISPATCHER, set_ev_cls
from os_ken.ofproto import ofproto_v1_3

from controllers import vnc_rpc
from controllers.fabric_logic import COOKIE, FabricLogic, group_spec

# Filled in by controllers/launcher.py before the app is instantiated.
SETTINGS = {"fabric": None, "vnc_socket": None, "topology": None, "prefix": "vt"}

LOG = logging.getLogger("vnc")


def write_groups(bridge: str, groups) -> None:
    """Create or replace select groups on a bridge (see module docstring for why not OpenFlow 1.3)."""
    if not groups:
        return
    text = "".join(group_spec(g) + "\n" for g in groups)
    r = subprocess.run(["ovs-ofctl", "-O", "OpenFlow15", "--timeout=5", "add-groups", bridge, "-"],
                       input=text, capture_output=True, text=True)
    if r.returncode != 0:
        LOG.error("writing %d groups on %s failed: %s", len(groups), bridge, r.stderr.strip())


# Widths of the fields FabricLogic moves whole (an NXM move copies a bit range).
FIELD_BITS = {"eth_src": 48, "eth_dst": 48, "arp_sha": 48, "arp_tha": 48, "arp_spa": 32, "arp_tpa": 32}


def to_action(ofp, parser, a):
    """One FabricLogic action -> an os-ken OpenFlow 1.3 action (moves: Nicira's reg_move)."""
    kind = a[0]
    if kind == "output":
        return parser.OFPActionOutput(a[1])
    if kind == "group":
        return parser.OFPActionGroup(a[1])
    if kind == "in_port":
        return parser.OFPActionOutput(ofp.OFPP_IN_PORT)
    if kind == "set":
        return parser.OFPActionSetField(**{a[1]: a[2]})
    if kind == "move":
        if FIELD_BITS[a[1]] != FIELD_BITS[a[2]]:
            raise ValueError(f"cannot move {a[1]} into {a[2]}: widths differ")
        return parser.NXActionRegMove(src_field=a[1], dst_field=a[2], n_bits=FIELD_BITS[a[1]])
    raise ValueError(f"unknown action {a!r}")


def to_messages(dp, flows):
    """FabricLogic flows -> os-ken OpenFlow 1.3 flow mods for one datapath."""
    ofp, parser = dp.ofproto, dp.ofproto_parser
    msgs = []
    for f in flows:
        actions = [to_action(ofp, parser, a) for a in f.actions]
        inst = [parser.OFPInstructionActions(ofp.OFPIT_APPLY_ACTIONS, actions)] if actions else []
        msgs.append(parser.OFPFlowMod(dp, cookie=COOKIE, table_id=0, command=ofp.OFPFC_ADD,
                                      priority=f.priority, match=parser.OFPMatch(**f.match_dict),
                                      instructions=inst))
    return msgs


def port_is_up(ofp, port) -> bool:
    return not (port.config & ofp.OFPPC_PORT_DOWN) and not (port.state & ofp.OFPPS_LINK_DOWN)


class Vnc(app_manager.OSKenApp):
    OFP_VERSIONS = [ofproto_v1_3.OFP_VERSION]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        path = SETTINGS["fabric"]
        if not path:
            raise SystemExit("error: controllers.vnc needs a fabric description (--fabric FILE.json)")
        with open(path) as f:
            self.logic = FabricLogic(json.load(f))
        self.datapaths = {}
        self.installed_groups = {}  # dpid -> {group_id: Group}
        self.vnc_server = None
        self._start_vnc_channel()

    def _start_vnc_channel(self):
        sock, topo = SETTINGS["vnc_socket"], SETTINGS["topology"]
        if not (sock and topo):
            return
        self.vnc_server = vnc_rpc.start_vnc_server(topo, sock, prefix=SETTINGS["prefix"])
        LOG.info("VNC control channel listening on %s", sock)

    def close(self):
        if self.vnc_server is not None:
            self.vnc_server.stop()
            self.vnc_server = None

    def _program(self, dp, flows=True):
        """Push this switch's entries; only groups that changed unless flows=True (full sync)."""
        groups = self.logic.groups(dp.id)
        old = {} if flows else self.installed_groups.get(dp.id, {})
        changed = [g for g in groups if old.get(g.group_id) != g]
        write_groups(self.logic.by_dpid[dp.id]["bridge"], changed)
        self.installed_groups[dp.id] = {g.group_id: g for g in groups}
        msgs = to_messages(dp, self.logic.flows(dp.id)) if flows else []
        for m in msgs:
            dp.send_msg(m)
        if msgs:
            dp.send_msg(dp.ofproto_parser.OFPBarrierRequest(dp))
        return len(changed) + len(msgs)

    @set_ev_cls(ofp_event.EventOFPSwitchFeatures, CONFIG_DISPATCHER)
    def switch_features(self, ev):
        dp = ev.msg.datapath
        if dp.id not in self.logic.by_dpid:
            LOG.warning("switch %016x is not part of the fabric: ignored", dp.id)
            return
        self.datapaths[dp.id] = dp
        n = self._program(dp)
        dp.send_msg(dp.ofproto_parser.OFPPortDescStatsRequest(dp, 0))
        LOG.info("switch %s (%016x) connected: %d entries", self.logic.by_dpid[dp.id]["name"], dp.id, n)

    @set_ev_cls(ofp_event.EventOFPStateChange, DEAD_DISPATCHER)
    def switch_gone(self, ev):
        dp = ev.datapath
        if dp.id is not None and self.datapaths.get(dp.id) is dp:
            del self.datapaths[dp.id]
            LOG.info("switch %016x disconnected", dp.id)

    def _ports_changed(self, changes):
        changed = False
        for dpid, port, up in changes:
            if self.logic.set_port(dpid, port, up):
                changed = True
                LOG.info("port %s:%d %s", self.logic.by_dpid[dpid]["name"], port, "up" if up else "down")
        if changed:
            t0 = time.monotonic()
            n = sum(self._program(dp, flows=False) for dp in list(self.datapaths.values()))
            LOG.info("rerouted: %d groups rewritten in %.1f ms", n, 1000 * (time.monotonic() - t0))

    @set_ev_cls(ofp_event.EventOFPPortDescStatsReply, MAIN_DISPATCHER)
    def port_desc(self, ev):
        dp = ev.msg.datapath
        ofp = dp.ofproto
        self._ports_changed([(dp.id, p.port_no, port_is_up(ofp, p)) for p in ev.msg.body
                             if p.port_no < ofp.OFPP_MAX])

    @set_ev_cls(ofp_event.EventOFPPortStatus, MAIN_DISPATCHER)
    def port_status(self, ev):
        msg = ev.msg
        dp, ofp = msg.datapath, msg.datapath.ofproto
        up = msg.reason != ofp.OFPPR_DELETE and port_is_up(ofp, msg.desc)
        self._ports_changed([(dp.id, msg.desc.port_no, up)])

    @set_ev_cls(ofp_event.EventOFPErrorMsg, MAIN_DISPATCHER)
    def error(self, ev):
        msg = ev.msg
        LOG.error("switch %016x rejected a message: type %d code %d", msg.datapath.id, msg.type, msg.code)
