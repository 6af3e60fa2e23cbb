"""The virtual network controller's overlay state, and the vrouter configuration it implies.

Pure: no sockets, files or clocks (``load_topology`` is the only function that reads a file).
The RPC shell (``controllers.vnc_rpc``) serialises access with a lock, persists ``state()`` and
pushes ``config_for(server)`` to the agents whose configuration a change touched.

Naming of VM interfaces: every VM gets an index when it is created (topology order first, then
run-time additions; indices are never reused in one controller state) and its TAP is called
``<prefix>-t<index>``, e.g. ``vt-t3``. All TAPs of a testbed are created on one kernel before being
moved into namespaces, so the name must be unique machine-wide: the testbed passes its own name
prefix (default ``vt``; 1-6 characters there, testbed/fabric.py; the model accepts up to 8) so
that concurrent testbeds never collide, and the ``<prefix>-`` start is what the testbed's scoped
cleanup looks for. Linux limits names to 15 characters.

The overlay's rules (networks, VMs, policies, the flow settings) are the overlay schema's
(vrouter/core/schema.py), the same checks topology files and vrouter configs go through; a change
is refused at its first problem, named like ``vms['red4'].address: ...`` (at run time) or
``vms[3].address: ...`` (in the topology).

Flow settings: DEFAULT_FLOW, then the topology's ``flow:`` section, then the ``flow`` argument, go
to every vrouter as its config's ``flow``. Flow-entry limits (docs/vrouter-core.md, "The flow
table under pressure"): a VM's ``flow_limit`` becomes its VIF's, a network's its config entry's;
``set_flow_limit`` changes them, or the defaults ``flow.vm_flow_limit`` / ``network_flow_limit``,
at run time (None: back to the default, i.e. the VM or network follows ``flow``'s limit, and the
defaults follow the vrouter's capacity // 4 and // 2).

Services (vrouter/core/services.py, ecmp.py): an address of a network shared by member VMs. Every
server of the network routes it to a composite next hop over the members (a VIF for a member it
hosts, a tunnel to the member's server otherwise), and a member's VIF lists the address in its
``services`` (it may send from it; the forwarder adds it to the VM's interface). Removing a VM
takes it out of its services; removing the last member of a service is refused.
"""
from __future__ import annotations

import copy
import hashlib
import ipaddress
import json
import re
from dataclasses import dataclass

import yaml

from controllers import vnc_baremetal, vnc_flood, vnc_mirror, vnc_records
from vrouter.core import links, natschema, schema, services
from vrouter.core.codec.ipv4 import int_to_ip
from vrouter.core.schema import DEFAULT_ENCAP, Problems, default_mac
from vrouter.io.control import VncError  # a rejected change reaches the clients as this error

__all__ = ["Change", "DEFAULT_FLOW", "FLOW_LIMIT_TARGETS", "STATE_VERSION", "VncError", "VncModel",
           "default_mac", "load_topology", "normalize_policy"]

DEFAULT_FLOW = {"capacity": 65536, "idle_timeout": 180.0, "hold_queue": 3, "mode": "proactive"}
STATE_VERSION = 1
# set_flow_limit's target kinds -> the flow setting a default changes (None: a named VM or network)
FLOW_LIMIT_TARGETS = {"vm": None, "network": None, "default-vm": "vm_flow_limit",
                      "default-network": "network_flow_limit"}

_PREFIX_RE = re.compile(r"^[a-z][a-z0-9]{0,7}$")
_IFNAMSIZ = 15


# Run-time changes and the topology are refused at their first problem.
_FIRST = Problems(VncError)


@dataclass(frozen=True)
class Change:
    """Outcome of a run-time change: the new generation and the servers whose config differs."""
    generation: int
    servers: tuple


def load_topology(source):
    """A topology as a dict, from a dict (copied) or a YAML file path."""
    if isinstance(source, dict):
        return copy.deepcopy(source)
    try:
        with open(source, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except OSError as e:
        raise VncError(f"cannot read topology {source}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise VncError(f"topology {source} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise VncError(f"topology {source} is not a YAML mapping")
    return data


def normalize_policy(network, policy, networks=()):
    """Validated policy of an existing network in the vrouter config's form; ``None`` means the
    default (allow all). ``networks``: the others its rules may name."""
    where = f"policies[{network!r}]"
    if policy is None:
        policy = {}
    if not isinstance(policy, dict):
        raise VncError(f"{where}: expected a mapping with 'default' and 'rules'")
    if policy.get("network", network) != network:
        raise VncError(f"{where}.network: names network {policy['network']!r}")
    return schema.policy(_FIRST, where, {**policy, "network": network}, {network, *networks}, {}).to_dict()


class VncModel:
    """Overlay state (networks, VMs, policies, flow mode) and the per-server vrouter configs.

    Every accepted change bumps ``generation`` and returns the servers whose config changed;
    a rejected change raises ``VncError`` and leaves the state untouched.
    """

    def __init__(self, topology, prefix="vt", flow=None):
        if not isinstance(prefix, str) or not _PREFIX_RE.match(prefix):
            raise VncError(f"name prefix {prefix!r} must be 1-8 lowercase letters or digits, "
                           "starting with a letter")
        self.prefix = prefix
        topo = load_topology(topology)
        self._fingerprint = _fingerprint(topo)
        self.name = str(topo.get("name", "default"))
        self.encapsulation = schema.encapsulation(_FIRST, "encapsulation",
                                                  topo.get("encapsulation", DEFAULT_ENCAP))
        self._servers = self._parse_servers(topo.get("servers"))
        self._other_names = {str(s.get("name")) for s in topo.get("switches") or []
                             if isinstance(s, dict)}
        self._networks = self._parse_networks(topo.get("virtual_networks"))
        self._net_limits = {n.name: n.flow_limit for n in self._networks.values() if n.flow_limit}
        self._flow = dict(DEFAULT_FLOW)
        for where, given in (("flow", topo.get("flow")), ("flow", flow)):
            if given is not None:
                self._flow.update(schema.flow_settings(_FIRST, where, given))
        self._vms = {}
        self._policies = {}
        self._services = {}
        self._next_index = 1
        self.generation = 1
        for i, vm in enumerate(schema.items(_FIRST, "vms", topo.get("vms"))):
            self._add_vm(vm, where=f"vms[{i}]")
        for i, svc in enumerate(schema.items(_FIRST, "services", topo.get("services"))):
            self._add_service(svc, where=f"services[{i}]")
        self.mirrors = vnc_mirror.Mirrors(self, topo.get("mirrors"))     # mirror sessions (vnc_mirror.py)
        seen = {}
        parsed = []
        for i, pol in enumerate(schema.items(_FIRST, "policies", topo.get("policies"))):
            parsed.append((f"policies[{i}]", schema.policy(_FIRST, f"policies[{i}]", pol, self._networks, seen)))
            self._policies[parsed[-1][1].network] = parsed[-1][1].to_dict()
        links.connections(_FIRST, parsed, self._networks)
        nodes = {n: f"node {n!r}" for n in (*self._servers, *self._other_names, *self._vms)}
        self._baremetal = vnc_baremetal.parse(topo, self._networks, self._vms, self._services, nodes)
        self._parse_nat(topo)
        self.flood = vnc_flood.FloodState(topo.get("flood"), self._networks)     # controllers/vnc_flood.py
        self._changed_at = {s: self.generation for s in self._servers}

    # ---- topology parsing (only what the controller needs; testbed.topology validates the rest)
    @staticmethod
    def _parse_servers(servers):
        out = {}
        for i, s in enumerate(schema.items(_FIRST, "servers", servers)):
            where = f"servers[{i}]"
            if not isinstance(s, dict) or not s.get("name"):
                raise VncError(f"{where}: expected a mapping with a name")
            name = str(s["name"])
            if name in out:
                raise VncError(f"{where}.name: duplicate server name {name!r}")
            out[name] = int_to_ip(schema.address(_FIRST, f"{where}.address", s.get("address")))
        if not out:
            raise VncError("topology has no servers")
        return out

    def _parse_networks(self, networks):
        names, ids = {}, {}
        out = {}
        for i, n in enumerate(schema.items(_FIRST, "virtual_networks", networks)):
            net = schema.network(_FIRST, f"virtual_networks[{i}]", n, self.encapsulation, names, ids)
            out[net.name] = net
        return out

    def _parse_nat(self, topo):
        """The gateway's floating range, each server's SNAT address, floating IPs, source NAT
        (vrouter/core/natschema.py; the testbed checked the gateway's fabric side)."""
        self._floating, self._snat_of, self._fips, self._snat = None, {}, {}, []
        gw = topo.get("gateway")
        if not isinstance(gw, dict):
            return
        self._floating = natschema.floating_range(_FIRST, "gateway.floating", gw.get("floating"), len(self._servers))
        self._snat_of = {natschema.snat_address(self._floating, i): s for i, s in enumerate(self._servers, 1)}
        for f in natschema.floating_ips(_FIRST, "floating_ips", topo.get("floating_ips"), self._vms,
                                        self._floating, self._snat_of):
            self._fips[f.vm] = int_to_ip(f.address)
        self._snat = natschema.snat_networks(_FIRST, "snat", topo.get("snat"), self._networks)

    def _need_gateway(self):
        if self._floating is None:
            raise VncError("this topology has no gateway section: no floating IPs or source NAT")

    # ---- checks shared by the topology's VMs and run-time changes
    def _check_network(self, network, where):
        schema.reference(_FIRST, where, network, self._networks, "virtual network")

    @staticmethod
    def _check_mode(mode):
        schema.flow_mode(_FIRST, "flow.mode", mode)

    def _add_vm(self, item, where, index=None):
        """Add the VM described by `item` (the topology's form), refused at its first problem."""
        names = {n: f"switch {n!r}" for n in self._other_names}
        names.update({n: f"server {n!r}" for n in self._servers})
        names.update({n: f"VM {n!r}" for n in self._vms})
        vm = schema.vm(_FIRST, where, item, self._networks, self._servers, names)
        taken = schema.VmIndex()
        for other in self._vms.values():
            taken.claim(_FIRST, where, _schema_vm(other), f"VM {other['name']!r}")
        taken.claim(_FIRST, where, vm, f"VM {vm.name!r}")
        for svc in self._services.values():
            if (svc["network"], svc["address"]) == (vm.network, int_to_ip(vm.address)):
                raise VncError(f"{where}.address: {svc['address']} is already used by service "
                               f"{svc['name']!r} in network {vm.network!r}")
        if index is None:
            index = self._next_index
        tap = f"{self.prefix}-t{index}"
        if len(tap) > _IFNAMSIZ:
            raise VncError(f"{where}: interface name {tap!r} exceeds {_IFNAMSIZ} characters")
        self._vms[vm.name] = {"name": vm.name, "network": vm.network, "server": vm.server,
                              "address": int_to_ip(vm.address), "mac": vm.mac, "index": index,
                              "tap": tap, "flow_limit": vm.flow_limit}
        self._next_index = max(self._next_index, index + 1)

    def _add_service(self, item, where):
        """Add the service described by `item` (the topology's form), refused at its first problem."""
        vms = {n: _schema_vm(v) for n, v in self._vms.items()}
        taken = {(v["network"], schema.parse_address(v["address"])): f"VM {n!r}" for n, v in self._vms.items()}
        taken.update({(s["network"], schema.parse_address(s["address"])): f"service {n!r}"
                      for n, s in self._services.items()})
        svc = services.service(_FIRST, where, item, self._networks, vms, {n: f"service {n!r}" for n in self._services},
                               taken)
        self._services[svc.name] = svc.to_dict()

    # ---- run-time changes
    def _commit(self, mutate):
        before = self.configs()
        saved = copy.deepcopy((self._vms, self._policies, self._flow, self._net_limits, self._next_index,
                               self._fips, self._snat, self._services))
        try:
            mutate()
        except Exception:
            (self._vms, self._policies, self._flow, self._net_limits, self._next_index, self._fips,
             self._snat, self._services) = saved
            raise
        after = self.configs()
        self.generation += 1
        changed = tuple(sorted(s for s in self._servers if before[s] != after[s]))
        for s in changed:
            self._changed_at[s] = self.generation
        return Change(self.generation, changed)

    def add_vm(self, name, network, server, address, mac=None):
        item = {"name": name, "network": network, "server": server, "address": address}
        if mac is not None:
            item["mac"] = mac
        vnc_baremetal.check_vm(self._baremetal, item, f"vms[{name!r}]")
        return self._commit(lambda: self._add_vm(item, where=f"vms[{name!r}]"))

    def remove_vm(self, name):
        if name not in self._vms:
            raise VncError(f"unknown VM {name!r}")
        self.mirrors.check_remove_vm(name)
        for svc in self._services.values():
            if svc["members"] == [name]:
                raise VncError(f"VM {name!r} is the last member of service {svc['name']!r} "
                               f"(remove the service first)")

        def mutate():
            self._vms.pop(name)
            self._fips.pop(name, None)
            for svc in self._services.values():
                if name in svc["members"]:
                    svc["members"].remove(name)
        return self._commit(mutate)

    def set_floating_ip(self, vm, address):
        """Give ``vm`` the floating IP ``address`` (replacing its own), or take it away (None)."""
        self._need_gateway()
        if vm not in self._vms:
            raise VncError(f"unknown VM {vm!r}")
        if address is not None:
            held = {schema.parse_address(a): f"VM {v!r}" for v, a in self._fips.items() if v != vm}
            address = int_to_ip(natschema.floating_address(_FIRST, f"floating_ips[{vm!r}].address", address,
                                                           self._floating, self._snat_of, held))
        return self._commit(lambda: self._fips.pop(vm, None) if address is None
                            else self._fips.__setitem__(vm, address))

    def set_snat(self, network, on):
        """Source NAT for the VMs of ``network`` (without a floating IP) on or off."""
        self._need_gateway()
        self._check_network(network, f"snat[{network!r}]")
        if not isinstance(on, bool):
            raise VncError(f"snat[{network!r}]: expected on or off, got {on!r}")

        def mutate():
            if on and network not in self._snat:
                self._snat.append(network)
            elif not on and network in self._snat:
                self._snat.remove(network)
        return self._commit(mutate)

    def floating_routes(self):
        """Floating and SNAT address -> the underlay address of the server behind it (the gateway's routes)."""
        routes = {int_to_ip(a): self._servers[s] for a, s in self._snat_of.items()}
        routes.update({a: self._servers[self._vms[v]["server"]] for v, a in self._fips.items()})
        return routes

    def add_service(self, name, network, address, members):
        item = {"name": name, "network": network, "address": address, "members": list(members)}
        return self._commit(lambda: self._add_service(item, where=f"services[{name!r}]"))

    def remove_service(self, name):
        self._service(name)
        return self._commit(lambda: self._services.pop(name))

    def set_service_members(self, name, members):
        """Replace a service's members (``add_member``/``remove_member`` of the CLI come here)."""
        svc = self._service(name)

        def mutate():
            del self._services[name]
            self._add_service({**svc, "members": list(members) if isinstance(members, (list, tuple)) else members},
                              where=f"services[{name!r}]")
        return self._commit(mutate)

    def add_service_member(self, name, vm):
        members = self._service(name)["members"]
        if vm in members:
            raise VncError(f"services[{name!r}].members: VM {vm!r} is a member already")
        return self.set_service_members(name, members + [vm])

    def remove_service_member(self, name, vm):
        members = self._service(name)["members"]
        if vm not in members:
            raise VncError(f"services[{name!r}].members: VM {vm!r} is not a member")
        if members == [vm]:
            raise VncError(f"services[{name!r}].members: {vm!r} is the last member (remove the service instead)")
        return self.set_service_members(name, [m for m in members if m != vm])

    def _service(self, name):
        if name not in self._services:
            raise VncError(f"unknown service {name!r}")
        return copy.deepcopy(self._services[name])

    def services(self):
        return [copy.deepcopy(self._services[n]) for n in sorted(self._services)]

    def set_policy(self, network, policy):
        """Replace the network's policy; ``None`` restores the default (allow everything)."""
        self._check_network(network, f"policies[{network!r}].network")
        normalized = normalize_policy(network, policy, self._networks)

        def mutate():
            if policy is None:
                self._policies.pop(network, None)
            else:
                self._policies[network] = normalized
            self.connections()          # refuses connecting networks whose subnets overlap
        return self._commit(mutate)

    def set_flow_mode(self, mode):
        self._check_mode(mode)
        return self._commit(lambda: self._flow.__setitem__("mode", mode))

    def set_flow_limit(self, target_kind, name, limit):
        """A VM's or a network's flow-entry limit, or a default one (``name`` is then unused);
        ``limit`` >= 1, or None to go back to the default."""
        if target_kind not in FLOW_LIMIT_TARGETS:
            raise VncError(f"flow limit target {target_kind!r} is not one of "
                           f"{', '.join(FLOW_LIMIT_TARGETS)}")
        setting = FLOW_LIMIT_TARGETS[target_kind]
        if target_kind == "vm" and name not in self._vms:
            raise VncError(f"unknown VM {name!r}")
        if target_kind == "network":
            self._check_network(name, f"virtual_networks[{name!r}]")
        where = f"flow.{setting}" if setting else f"{'vms' if target_kind == 'vm' else 'virtual_networks'}" \
                                                  f"[{name!r}].flow_limit"
        schema.flow_limit(_FIRST, where, limit)

        def mutate():
            if target_kind == "vm":
                self._vms[name]["flow_limit"] = limit
            else:
                table, key = (self._flow, setting) if setting else (self._net_limits, name)
                if limit is None:
                    table.pop(key, None)
                else:
                    table[key] = limit
        return self._commit(mutate)

    # ---- queries
    def connections(self):
        """Network -> the networks its policy connects it to (both policies name each other)."""
        return links.connections(_FIRST, [(f"policies[{n!r}]", schema.policy(_FIRST, f"policies[{n!r}]", d,
                                                                                self._networks, {}))
                                           for n, d in sorted(self._policies.items())], self._networks)

    def servers(self):
        return sorted(self._servers)

    def changed_at(self, server):
        """Generation at which this server's configuration last changed."""
        return self._changed_at[server]

    def vm(self, name):
        if name not in self._vms:
            raise VncError(f"unknown VM {name!r}")
        return dict(self._vms[name])

    def vms(self, server=None):
        return [dict(v) for v in sorted(self._vms.values(), key=lambda v: v["index"])
                if server is None or v["server"] == server]

    def config_for(self, server):
        """The vrouter configuration of one server, as ``VrouterConfig.from_dict`` takes it."""
        if server not in self._servers:
            raise VncError(f"unknown server {server!r}")
        local = self.vms(server)
        links = self.connections()
        # A connected network's traffic arrives here in its own routing instance (its label), so
        # the networks connected to a local one are carried too (docs/vrouter-core.md).
        present = sorted({n for v in local for n in (v["network"], *links.get(v["network"], ()))})
        routes = []
        for net in present:
            reach = {net, *links.get(net, ())}
            for vm in self.vms():
                if vm["network"] not in reach:
                    continue
                # the label of this routing instance: the packet stays in the network it left
                routes.append({"network": net, "prefix": f"{vm['address']}/32",
                               "nexthop": self._nexthop(vm, server, net)})
        routes += [self._service_route(svc, server) for svc in self.services() if svc["network"] in present]
        routes += vnc_baremetal.routes(self._baremetal, present, self._networks)
        routes.sort(key=lambda r: (r["network"], ipaddress.IPv4Network(r["prefix"])))
        offered = {}        # a member's TAP -> the service addresses it may send from
        for svc in self.services():
            for member in svc["members"]:
                offered.setdefault(self._vms[member]["tap"], []).append(svc["address"])
        return {
            "server": server,
            "underlay_ip": self._servers[server],
            "encapsulation": self.encapsulation,
            "networks": [self._network_dict(n) for n in present],
            "vifs": [{"name": v["tap"], "network": v["network"], "mac": v["mac"], "ip": v["address"],
                      **({"flow_limit": v["flow_limit"]} if v["flow_limit"] else {}),
                      **({"services": offered[v["tap"]]} if v["tap"] in offered else {})} for v in local],
            "routes": routes,
            "peers": sorted((ip for s, ip in self._servers.items() if s != server),
                            key=ipaddress.IPv4Address),
            "policies": [copy.deepcopy(self._policies.get(n) or normalize_policy(n, None))
                         for n in present],
            "flow": dict(self._flow),
            **self.flood.config(server, self.vms(), self._servers, self.encapsulation,
                                vnc_baremetal.vteps(self._baremetal, self._networks)),
            **({"nat": self._nat_for(server, local, present)} if self._floating is not None else {}),
            **self.mirrors.config_for(server, local, present),
        }

    def _nat_for(self, server, local, present):
        snat = next(a for a, s in self._snat_of.items() if s == server)
        return {"floating": schema.prefix_text(self._floating), "snat_address": int_to_ip(snat),
                "snat_networks": [n for n in present if n in self._snat],
                "floating_ips": [{"vif": v["tap"], "address": self._fips[v["name"]]} for v in local
                                 if v["name"] in self._fips]}

    def configs(self):
        return {s: self.config_for(s) for s in self._servers}

    def _nexthop(self, vm, server, network=None):
        """The next hop of a VM as ``server`` reaches it from ``network`` (default: the VM's own): its
        VIF there, else a tunnel to its server with that network's label."""
        if vm["server"] == server:
            return {"type": "vif", "vif": vm["tap"]}
        label = self._networks[network or vm["network"]].id
        return {"type": "tunnel", "peer": self._servers[vm["server"]], "label": label,
                "encap": self.encapsulation, "mac": vm["mac"]}

    def _service_route(self, svc, server):
        members = [{"member": m, **self._nexthop(self._vms[m], server)} for m in svc["members"]]
        return {"network": svc["network"], "prefix": f"{svc['address']}/32",
                "nexthop": {"type": "composite", "service": svc["name"], "members": members}}

    def _network_dict(self, name):
        n = self._networks[name]
        limit = self._net_limits.get(name)
        return {"name": name, "id": n.id, "subnets": n.subnet_texts(), "gateway": int_to_ip(n.gateway),
                **({"flow_limit": limit} if limit else {})}

    def dump(self):
        """Whole controller view, plain values (for the CLI and debugging)."""
        return {
            "name": self.name, "generation": self.generation, "prefix": self.prefix,
            "encapsulation": self.encapsulation,
            "servers": [{"name": s, "address": self._servers[s],
                         "changed_at": self._changed_at[s]} for s in self.servers()],
            "networks": [self._network_dict(n) for n in sorted(self._networks)],
            "vms": self.vms(),
            "policies": [copy.deepcopy(self._policies[n]) for n in sorted(self._policies)],
            "services": self.services(),
            "flow": dict(self._flow),
            "floating_ips": dict(sorted(self._fips.items())), "snat": sorted(self._snat),
            "gateway_routes": self.floating_routes(), "flood": self.flood.describe(),
            "baremetal": vnc_baremetal.describe(self._baremetal, self.vms(), self._servers, self._networks),
        }

    # ---- persistence (the shell writes/reads the file; this only converts)
    def state(self):
        """JSON-serialisable overlay state, enough to rebuild this model from the same topology."""
        return {
            "state_version": STATE_VERSION, "fingerprint": self._fingerprint,
            "prefix": self.prefix, "generation": self.generation,
            "next_index": self._next_index, "flow_mode": self._flow["mode"],
            vnc_records.STATE_KEY: vnc_records.enabled(self._flow),     # testbed net records (vnc_records.py)
            "flow_limits": {"default-vm": self._flow.get("vm_flow_limit"),
                            "default-network": self._flow.get("network_flow_limit"),
                            "networks": dict(sorted(self._net_limits.items()))},
            "vms": [{k: v[k] for k in ("name", "network", "server", "address", "mac", "index",
                                       "flow_limit")} for v in self.vms()],
            "policies": [copy.deepcopy(self._policies[n]) for n in sorted(self._policies)],
            "services": self.services(), "mirrors": self.mirrors.state(),
            "changed_at": dict(self._changed_at), "baremetal": vnc_baremetal.state(self._baremetal),
            "floating_ips": dict(sorted(self._fips.items())), "snat": sorted(self._snat), "flood": self.flood.state(),
        }

    def restore(self, state):
        """Replace the overlay state with a saved one (from the same topology and prefix)."""
        if not isinstance(state, dict) or state.get("state_version") != STATE_VERSION:
            raise VncError("saved controller state has an unknown format")
        if state.get("fingerprint") != self._fingerprint:
            raise VncError("saved controller state belongs to a different topology")
        if state.get("prefix") != self.prefix:
            raise VncError(f"saved controller state uses name prefix {state.get('prefix')!r}, "
                           f"not {self.prefix!r}")
        saved = copy.deepcopy((self._vms, self._policies, self._flow, self._net_limits, self._next_index,
                               self.generation, self._changed_at, self._fips, self._snat, self._services))
        try:
            self._vms, self._policies, self._services = {}, {}, {}
            for vm in state["vms"]:
                self._add_vm({k: vm[k] for k in schema.VM_KEYS if vm.get(k) is not None},
                             f"vms[{vm['name']!r}]", index=int(vm["index"]))
            for pol in state["policies"]:
                self._check_network(pol["network"], f"policies[{pol['network']!r}].network")
                self._policies[pol["network"]] = normalize_policy(pol["network"], pol, self._networks)
            for svc in state.get("services", []):      # absent in states saved before services
                self._add_service(svc, f"services[{svc['name']!r}]")
            self.connections()
            self._check_mode(state["flow_mode"])
            self._flow["mode"] = state["flow_mode"]
            vnc_records.restore(self._flow, state)
            if "flow_limits" in state:
                self._restore_limits(state["flow_limits"])
            self._next_index = max(self._next_index, int(state["next_index"]))
            self._fips = {v: a for v, a in state.get("floating_ips", self._fips).items() if v in self._vms}
            self._snat = [n for n in state.get("snat", self._snat) if n in self._networks]
            self.flood.restore(state.get("flood"))
            self.generation = int(state["generation"])
            self._changed_at = {s: int(state["changed_at"].get(s, self.generation))
                                for s in self._servers}
            self.mirrors.restore(state.get("mirrors", self.mirrors.state()))
            self._baremetal = vnc_baremetal.restore(self, state.get("baremetal"))     # last: nothing after it fails
        except (KeyError, TypeError, ValueError, AttributeError, VncError) as e:
            (self._vms, self._policies, self._flow, self._net_limits, self._next_index,
             self.generation, self._changed_at, self._fips, self._snat, self._services) = saved
            detail = e if isinstance(e, VncError) else f"missing or bad field {e}"
            raise VncError(f"saved controller state is unusable: {detail}") from None


    def _restore_limits(self, limits):
        for kind in ("default-vm", "default-network"):
            setting, value = FLOW_LIMIT_TARGETS[kind], limits.get(kind)
            schema.flow_limit(_FIRST, f"flow.{setting}", value)
            if value is None:
                self._flow.pop(setting, None)
            else:
                self._flow[setting] = value
        nets = limits.get("networks") or {}
        for name, value in nets.items():
            self._check_network(name, f"virtual_networks[{name!r}]")
            schema.flow_limit(_FIRST, f"virtual_networks[{name!r}].flow_limit", value)
        self._net_limits = {n: v for n, v in nets.items() if v is not None}


def _schema_vm(record):
    """A stored VM record as the schema sees it (to check a new VM's address and MAC against)."""
    return schema.Vm(record["name"], record["network"], record["server"],
                     schema.parse_address(record["address"]), record["mac"])


def _fingerprint(topo):
    relevant = {k: topo.get(k) for k in ("servers", "encapsulation", "virtual_networks",
                                        "vms", "policies", "flow", "gateway")}
    for key in ("services", "baremetal"):   # only when given: older saved states keep their fingerprint
        relevant.update({key: topo[key]} if topo.get(key) else {})
    blob = json.dumps(relevant, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
