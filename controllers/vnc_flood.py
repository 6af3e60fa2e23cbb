"""The VNC's flooding: the storm-limit settings and each vrouter's flood lists (pure).

Continues controllers/vnc_model.py (at its size limit), which holds one ``FloodState`` and asks it
for the ``flood`` section of every vrouter config. Per network with a member on the server, the
section lists the network's L2 label (floodschema.l2_labels: what the vrouter receives Ethernet on
over MPLS) and the flood endpoints: (underlay address, encapsulation, label) of every OTHER server
that hosts a member, the label being the L2 label over MPLS, the network id (VNI) over VXLAN. A
generic endpoint list: a bare-metal VTEP can be appended to it the same way.

Settings: floodschema.DEFAULTS, then the topology's ``flood:`` section, then run-time changes
(``set_flood``: ``testbed net flood``), kept in the controller's state; ``enabled: false`` leaves the
section out of every config (the vrouters then flood nothing, as before flooding existed).
"""
from __future__ import annotations

import ipaddress

from vrouter.core import floodschema
from vrouter.core.schema import Problems
from vrouter.io.control import VncError

_FIRST = Problems(VncError)


class FloodState:
    def __init__(self, given, networks):
        """``given``: the topology's ``flood:`` section (None: absent); ``networks``: name -> Network."""
        self.settings = dict(floodschema.DEFAULTS)
        if given is not None:
            self.settings.update(floodschema.settings(_FIRST, "flood", given))
        self.ids = {name: n.id for name, n in networks.items()}
        self.labels = floodschema.l2_labels(self.ids)

    def config(self, server, vms, servers, encapsulation, vteps=None):
        """The ``flood`` entry of ``server``'s vrouter config as a dict to merge into it (empty: off);
        ``vteps``: network -> [(underlay address, VNI)] of its bare-metal hosts (always VXLAN)."""
        if not self.settings["enabled"]:
            return {}
        hosts = {}          # network -> the servers with a member
        for vm in vms:
            hosts.setdefault(vm["network"], set()).add(vm["server"])
        networks = []
        for net in sorted(n for n, where in hosts.items() if server in where):
            label = self.labels[net]
            wire = self.ids[net] if encapsulation == "vxlan" else label
            others = sorted((servers[s] for s in hosts[net] if s != server), key=ipaddress.IPv4Address)
            hosts_of = (vteps or {}).get(net, [])
            networks.append({"network": net, "label": label,
                             "endpoints": [{"peer": p, "encap": encapsulation, "label": wire} for p in others] +
                                          [{"peer": p, "encap": "vxlan", "label": vni} for p, vni in hosts_of]})
        s = self.settings
        return {"flood": {"rate": s["rate"], "burst": s["burst"], "mac_age": s["mac_age"], "networks": networks}}

    def describe(self):
        """The settings and the L2 labels (the VNC's `dump`, `testbed net flood`)."""
        return {**self.settings, "l2_labels": dict(sorted(self.labels.items()))}

    def state(self):
        return dict(self.settings)

    def restore(self, saved):
        """Saved settings (None: those of the topology stay), checked whole before any is taken."""
        if saved is None:
            return
        checked = floodschema.settings(_FIRST, "flood", saved)
        self.settings = {**floodschema.DEFAULTS, **checked}


def set_flood(model, changes):
    """Change some of the flood settings (a mapping of floodschema.SETTING_KEYS) through the model's
    commit, so the configs whose flood section differs are pushed."""
    if not isinstance(changes, dict) or not changes:
        raise VncError(f"flood: expected a mapping of {', '.join(floodschema.SETTING_KEYS)}, got {changes!r}")
    checked = floodschema.settings(_FIRST, "flood", changes)
    merged = {**model.flood.settings, **checked}
    return model._commit(lambda: setattr(model.flood, "settings", merged))
