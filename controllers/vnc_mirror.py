"""The VNC's mirror sessions, and what each vrouter needs of them: pure computation.

Why a module: controllers/vnc_model.py is at its size limit; the model holds one ``Mirrors`` and
calls it from a few hooks (its topology, ``config_for``, ``state``/``restore``, ``remove_vm``); the
RPC shell's one ``mirror`` method (add | remove | list) comes to ``change`` and ``list``.

A session (vrouter/core/mirrorschema.py checks it) goes to the vrouters that hold its source: the
mirrored VM's server, or every server with a VM in the network. Each gets the session's number (the
VNI of the analyzer's copies: the smallest free one, kept for the session's life) and, for an
analyzer, its next hop as that server reaches it: its VIF when local, else a tunnel to its server
with its network's label and its MAC, plus its address and its network's gateway address (the
copies' source). A VM that is a session's source or analyzer is not removed before the session.
"""
from __future__ import annotations

import copy

from vrouter.core import mirrorschema, schema
from vrouter.core.codec.ipv4 import int_to_ip
from vrouter.core.schema import Problems
from vrouter.io.control import VncError

_FIRST = Problems(VncError)
OPS = ("add", "remove", "list")


class Mirrors:
    def __init__(self, model, items=None):
        self.model = model
        self.sessions: dict[str, dict] = {}     # name -> the session's topology form, with "id"
        for i, item in enumerate(schema.items(_FIRST, "mirrors", items)):
            self._add(item, f"mirrors[{i}]")

    def _add(self, item, where, sid=None):
        vms = {n: _vm(v) for n, v in self.model._vms.items()}
        s = mirrorschema.session(_FIRST, where, item, self.model._networks, vms,
                                 {n: f"mirror session {n!r}" for n in self.sessions})
        used = {d["id"] for d in self.sessions.values()}
        if sid is None:
            sid = next(i for i in range(1, len(used) + 2) if i not in used)
        self.sessions[s.name] = {**s.to_dict(), "id": sid}

    # ---- run-time changes (through VncModel._commit: refused whole, servers touched returned)
    def change(self, op, args):
        if op not in OPS[:2]:
            raise VncError(f"mirror: unknown operation {op!r} (expected {', '.join(OPS)})")
        if op == "add":
            name = args.get("name") if isinstance(args, dict) else None
            return self.model._commit(lambda: self._add(args, f"mirrors[{name!r}]"))
        if not isinstance(args, str) or args not in self.sessions:
            raise VncError(f"unknown mirror session {args!r}")
        return self.model._commit(lambda: self.sessions.pop(args))

    def list(self):
        return [copy.deepcopy(self.sessions[n]) for n in sorted(self.sessions)]

    def check_remove_vm(self, vm):
        for s in self.list():
            if s["source"].get("vm") == vm or s["to"].get("analyzer") == vm:
                raise VncError(f"VM {vm!r} is used by mirror session {s['name']!r} (remove the session first)")

    # ---- persistence
    def state(self):
        return self.list()

    def restore(self, saved):
        """The saved sessions replace these, all or none."""
        before, self.sessions = self.sessions, {}
        try:
            for s in saved or []:
                self._add({k: v for k, v in s.items() if k != "id"}, f"mirrors[{s.get('name')!r}]", int(s["id"]))
        except Exception:
            self.sessions = before
            raise

    # ---- per server
    def config_for(self, server, local, present):
        """The ``mirrors`` entry of ``server``'s vrouter config (absent when none applies)."""
        taps = {v["name"]: v["tap"] for v in local}
        out = []
        for s in self.list():
            src = s["source"]
            if "vm" in src:
                if src["vm"] not in taps:
                    continue
                source = {"vif": taps[src["vm"]]}
            else:
                net = src["network"] if "network" in src else src["rule"]["network"]
                if net not in present:
                    continue
                source = src
            out.append({"name": s["name"], "id": s["id"], "source": source, "direction": s["direction"],
                        "rate": s["rate"], "to": s["to"] if "pcap" in s["to"] else
                        {"analyzer": self.analyzer(s["to"]["analyzer"], server)}})
        return {"mirrors": out} if out else {}

    def analyzer(self, vm_name, server):
        vm = self.model._vms[vm_name]
        net = self.model._networks[vm["network"]]
        return {"vm": vm_name, "address": vm["address"], "gateway": int_to_ip(net.gateway),
                "nexthop": self.model._nexthop(vm, server)}


def _vm(record):
    return schema.Vm(record["name"], record["network"], record["server"],
                     schema.parse_address(record["address"]), record["mac"])
