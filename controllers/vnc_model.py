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
"""
from __future__ import annotations

import copy
import hashlib
import ipaddress
import json
import re
from dataclasses import dataclass

from vrouter.io.control import VncError  # a rejected change reaches the clients as this error

ENCAPSULATIONS = ("mplsoudp", "mplsogre", "vxlan")
FLOW_MODES = ("proactive", "reactive")
DEFAULT_FLOW = {"capacity": 65536, "idle_timeout": 180.0, "hold_queue": 3, "mode": "proactive"}
STATE_VERSION = 1

_PREFIX_RE = re.compile(r"^[a-z][a-z0-9]{0,7}$")
_MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
_PORT_RE = re.compile(r"^(\d{1,5})(?:-(\d{1,5}))?$")
_PROTOCOLS = ("any", "tcp", "udp", "icmp")
_RULE_KEYS = ("action", "protocol", "src", "dst", "src_port", "dst_port")
_IFNAMSIZ = 15


@dataclass(frozen=True)
class Change:
    """Outcome of a run-time change: the new generation and the servers whose config differs."""
    generation: int
    servers: tuple


def load_topology(source):
    """A topology as a dict, from a dict (copied) or a YAML file path."""
    if isinstance(source, dict):
        return copy.deepcopy(source)
    import yaml  # only needed for files; keeps the pure model importable without PyYAML
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


def default_mac(vm_name):
    """Deterministic, locally administered unicast MAC derived from the VM name."""
    digest = hashlib.sha256(vm_name.encode()).digest()
    return "02:" + ":".join(f"{b:02x}" for b in digest[:5])


def _ip(value, what):
    try:
        return ipaddress.IPv4Address(str(value))
    except ValueError:
        raise VncError(f"{what}: {value!r} is not an IPv4 address") from None


def _net(value, what):
    try:
        return ipaddress.IPv4Network(str(value), strict=False)
    except ValueError:
        raise VncError(f"{what}: {value!r} is not an IPv4 prefix") from None


def _port(value, what):
    if value is None:
        return None
    if isinstance(value, bool):
        raise VncError(f"{what}: {value!r} is not a port or port range")
    m = _PORT_RE.match(str(value).strip())
    if not m or int(m.group(1)) > 65535 or (m.group(2) and not
                                             int(m.group(1)) <= int(m.group(2)) <= 65535):
        raise VncError(f"{what}: {value!r} is not a port (0-65535) or range 'lo-hi'")
    return m.group(0)


def normalize_policy(network, policy):
    """Validated policy in the vrouter config's form; ``None`` means the default (allow all)."""
    where = f"policy of network {network!r}"
    if policy is None:
        policy = {}
    if not isinstance(policy, dict):
        raise VncError(f"{where}: expected a mapping with 'default' and 'rules'")
    unknown = set(policy) - {"network", "default", "rules"}
    if unknown:
        raise VncError(f"{where}: unknown key(s) {', '.join(sorted(map(str, unknown)))}")
    if policy.get("network", network) != network:
        raise VncError(f"{where}: names network {policy['network']!r}")
    default = policy.get("default", "allow")
    if default not in ("allow", "deny"):
        raise VncError(f"{where}: default must be allow or deny, not {default!r}")
    rules = policy.get("rules") or []
    if not isinstance(rules, list):
        raise VncError(f"{where}: rules must be a list")
    out = []
    for i, rule in enumerate(rules, 1):
        rw = f"{where}, rule {i}"
        if not isinstance(rule, dict):
            raise VncError(f"{rw}: expected a mapping")
        unknown = set(rule) - set(_RULE_KEYS)
        if unknown:
            raise VncError(f"{rw}: unknown key(s) {', '.join(sorted(map(str, unknown)))}")
        action = rule.get("action")
        if action not in ("allow", "deny"):
            raise VncError(f"{rw}: action must be allow or deny, not {action!r}")
        proto = rule.get("protocol", "any")
        if isinstance(proto, str) and proto.lower() in _PROTOCOLS:
            proto = proto.lower()
        elif isinstance(proto, bool) or not isinstance(proto, int) or not 0 <= proto <= 255:
            raise VncError(f"{rw}: protocol must be one of {', '.join(_PROTOCOLS)} "
                           f"or a number 0..255, not {proto!r}")
        ports = {k: _port(rule.get(k), f"{rw}, {k}") for k in ("src_port", "dst_port")}
        # The vrouter rejects ports on other protocols; refuse here so no agent gets a bad config.
        if any(v is not None for v in ports.values()) and proto not in ("tcp", "udp", 6, 17):
            raise VncError(f"{rw}: ports need protocol tcp or udp")
        out.append({
            "action": action, "protocol": proto,
            "src": str(_net(rule.get("src", "0.0.0.0/0"), f"{rw}, src")),
            "dst": str(_net(rule.get("dst", "0.0.0.0/0"), f"{rw}, dst")),
            **ports,
        })
    return {"network": network, "default": default, "rules": out}


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
        self.encapsulation = topo.get("encapsulation") or "mplsoudp"
        if self.encapsulation not in ENCAPSULATIONS:
            raise VncError(f"encapsulation must be one of {', '.join(ENCAPSULATIONS)}, "
                           f"not {self.encapsulation!r}")
        self._servers = self._parse_servers(topo.get("servers"))
        self._other_names = {str(s.get("name")) for s in topo.get("switches") or []
                             if isinstance(s, dict)}
        self._networks = self._parse_networks(topo.get("virtual_networks"))
        self._flow = dict(DEFAULT_FLOW)
        for key, value in (flow or {}).items():
            if key not in DEFAULT_FLOW:
                raise VncError(f"unknown flow setting {key!r}")
            self._flow[key] = value
        self._check_mode(self._flow["mode"])
        self._vms = {}
        self._policies = {}
        self._next_index = 1
        self.generation = 1
        for i, vm in enumerate(_as_list(topo.get("vms"), "vms"), 1):
            if not isinstance(vm, dict):
                raise VncError(f"vms entry {i}: expected a mapping")
            self._add_vm(vm.get("name"), vm.get("network"), vm.get("server"),
                         vm.get("address"), vm.get("mac"))
        for i, pol in enumerate(_as_list(topo.get("policies"), "policies"), 1):
            if not isinstance(pol, dict):
                raise VncError(f"policies entry {i}: expected a mapping")
            net = pol.get("network")
            self._check_network(net)
            if net in self._policies:
                raise VncError(f"network {net!r} has more than one policy")
            self._policies[net] = normalize_policy(net, pol)
        self._changed_at = {s: self.generation for s in self._servers}

    # ---- topology parsing (only what the controller needs; testbed.topology validates the rest)
    @staticmethod
    def _parse_servers(servers):
        out = {}
        for i, s in enumerate(_as_list(servers, "servers"), 1):
            if not isinstance(s, dict) or not s.get("name"):
                raise VncError(f"servers entry {i}: expected a mapping with a name")
            name = str(s["name"])
            if name in out:
                raise VncError(f"duplicate server name {name!r}")
            out[name] = str(_ip(s.get("address"), f"server {name!r} address"))
        if not out:
            raise VncError("topology has no servers")
        return out

    def _parse_networks(self, networks):
        out = {}
        ids = set()
        for i, n in enumerate(_as_list(networks, "virtual_networks"), 1):
            if not isinstance(n, dict) or not n.get("name"):
                raise VncError(f"virtual_networks entry {i}: expected a mapping with a name")
            name = str(n["name"])
            if name in out:
                raise VncError(f"duplicate virtual network name {name!r}")
            vid = n.get("id")
            if not isinstance(vid, int) or isinstance(vid, bool) or vid < 0:
                raise VncError(f"virtual network {name!r}: id must be a non-negative integer")
            if vid in ids:
                raise VncError(f"virtual network {name!r}: id {vid} is already used")
            ids.add(vid)
            subnets = [_net(p, f"virtual network {name!r} subnet")
                       for p in _as_list(n.get("subnets"), f"virtual network {name!r} subnets")]
            if not subnets:
                raise VncError(f"virtual network {name!r} has no subnets")
            gateway = n.get("gateway")
            if gateway is None:
                gateway = next(subnets[0].hosts(), subnets[0].network_address)
            gateway = _ip(gateway, f"virtual network {name!r} gateway")
            out[name] = {"name": name, "id": vid, "subnets": subnets, "gateway": gateway}
        return out

    # ---- checks shared by the topology's VMs and run-time changes
    def _check_network(self, network):
        if network not in self._networks:
            raise VncError(f"unknown virtual network {network!r}")

    @staticmethod
    def _check_mode(mode):
        if mode not in FLOW_MODES:
            raise VncError(f"flow mode must be one of {', '.join(FLOW_MODES)}, not {mode!r}")

    def _add_vm(self, name, network, server, address, mac=None, index=None):
        if not isinstance(name, str) or not name:
            raise VncError("a VM needs a non-empty name")
        if name in self._vms:
            raise VncError(f"VM {name!r} already exists")
        if name in self._servers or name in self._other_names:
            raise VncError(f"VM name {name!r} is already used by a server or switch")
        self._check_network(network)
        if server not in self._servers:
            raise VncError(f"unknown server {server!r}")
        net = self._networks[network]
        ip = _ip(address, f"VM {name!r} address")
        if not any(ip in s for s in net["subnets"]):
            raise VncError(f"VM {name!r}: address {ip} is outside the subnets of network {network!r} "
                           f"({', '.join(map(str, net['subnets']))})")
        if ip == net["gateway"]:
            raise VncError(f"VM {name!r}: address {ip} is the gateway of network {network!r}")
        if any(ip in s and ip in (s.network_address, s.broadcast_address) and s.prefixlen < 31
               for s in net["subnets"]):
            raise VncError(f"VM {name!r}: address {ip} is a subnet's network or broadcast address")
        mac = default_mac(name) if mac is None else str(mac).lower()
        if not _MAC_RE.match(mac) or int(mac[:2], 16) & 1:
            raise VncError(f"VM {name!r}: {mac!r} is not a unicast MAC address")
        for other in self._vms.values():
            if other["network"] != network:
                continue
            if other["address"] == str(ip):
                raise VncError(f"VM {name!r}: address {ip} is already used by VM "
                               f"{other['name']!r} in network {network!r}")
            if other["mac"] == mac:
                raise VncError(f"VM {name!r}: MAC {mac} is already used by VM "
                               f"{other['name']!r} in network {network!r}")
        if index is None:
            index = self._next_index
        tap = f"{self.prefix}-t{index}"
        if len(tap) > _IFNAMSIZ:
            raise VncError(f"VM {name!r}: interface name {tap!r} exceeds {_IFNAMSIZ} characters")
        self._vms[name] = {"name": name, "network": network, "server": server,
                           "address": str(ip), "mac": mac, "index": index, "tap": tap}
        self._next_index = max(self._next_index, index + 1)

    # ---- run-time changes
    def _commit(self, mutate):
        before = self.configs()
        saved = copy.deepcopy((self._vms, self._policies, self._flow, self._next_index))
        try:
            mutate()
        except Exception:
            self._vms, self._policies, self._flow, self._next_index = saved
            raise
        after = self.configs()
        self.generation += 1
        changed = tuple(sorted(s for s in self._servers if before[s] != after[s]))
        for s in changed:
            self._changed_at[s] = self.generation
        return Change(self.generation, changed)

    def add_vm(self, name, network, server, address, mac=None):
        return self._commit(lambda: self._add_vm(name, network, server, address, mac))

    def remove_vm(self, name):
        if name not in self._vms:
            raise VncError(f"unknown VM {name!r}")
        return self._commit(lambda: self._vms.pop(name))

    def set_policy(self, network, policy):
        """Replace the network's policy; ``None`` restores the default (allow everything)."""
        self._check_network(network)
        normalized = normalize_policy(network, policy)

        def mutate():
            if policy is None:
                self._policies.pop(network, None)
            else:
                self._policies[network] = normalized
        return self._commit(mutate)

    def set_flow_mode(self, mode):
        self._check_mode(mode)
        return self._commit(lambda: self._flow.__setitem__("mode", mode))

    # ---- queries
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
        present = sorted({v["network"] for v in local})
        routes = []
        for vm in self.vms():
            if vm["network"] not in present:
                continue
            if vm["server"] == server:
                nexthop = {"type": "vif", "vif": vm["tap"]}
            else:
                nexthop = {"type": "tunnel", "peer": self._servers[vm["server"]],
                           "label": self._networks[vm["network"]]["id"],
                           "encap": self.encapsulation, "mac": vm["mac"]}
            routes.append({"network": vm["network"], "prefix": f"{vm['address']}/32",
                           "nexthop": nexthop})
        routes.sort(key=lambda r: (r["network"], ipaddress.IPv4Network(r["prefix"])))
        return {
            "server": server,
            "underlay_ip": self._servers[server],
            "encapsulation": self.encapsulation,
            "networks": [self._network_dict(n) for n in present],
            "vifs": [{"name": v["tap"], "network": v["network"], "mac": v["mac"],
                      "ip": v["address"]} for v in local],
            "routes": routes,
            "peers": sorted((ip for s, ip in self._servers.items() if s != server),
                            key=ipaddress.IPv4Address),
            "policies": [copy.deepcopy(self._policies.get(n) or normalize_policy(n, None))
                         for n in present],
            "flow": dict(self._flow),
        }

    def configs(self):
        return {s: self.config_for(s) for s in self._servers}

    def _network_dict(self, name):
        n = self._networks[name]
        return {"name": name, "id": n["id"], "subnets": [str(s) for s in n["subnets"]],
                "gateway": str(n["gateway"])}

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
            "flow": dict(self._flow),
        }

    # ---- persistence (the shell writes/reads the file; this only converts)
    def state(self):
        """JSON-serialisable overlay state, enough to rebuild this model from the same topology."""
        return {
            "state_version": STATE_VERSION, "fingerprint": self._fingerprint,
            "prefix": self.prefix, "generation": self.generation,
            "next_index": self._next_index, "flow_mode": self._flow["mode"],
            "vms": [{k: v[k] for k in ("name", "network", "server", "address", "mac", "index")}
                    for v in self.vms()],
            "policies": [copy.deepcopy(self._policies[n]) for n in sorted(self._policies)],
            "changed_at": dict(self._changed_at),
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
        saved = copy.deepcopy((self._vms, self._policies, self._flow, self._next_index,
                               self.generation, self._changed_at))
        try:
            self._vms, self._policies = {}, {}
            for vm in state["vms"]:
                self._add_vm(vm["name"], vm["network"], vm["server"], vm["address"],
                             vm["mac"], index=int(vm["index"]))
            for pol in state["policies"]:
                self._check_network(pol["network"])
                self._policies[pol["network"]] = normalize_policy(pol["network"], pol)
            self._check_mode(state["flow_mode"])
            self._flow["mode"] = state["flow_mode"]
            self._next_index = max(self._next_index, int(state["next_index"]))
            self.generation = int(state["generation"])
            self._changed_at = {s: int(state["changed_at"].get(s, self.generation))
                                for s in self._servers}
        except (KeyError, TypeError, ValueError, AttributeError, VncError) as e:
            (self._vms, self._policies, self._flow, self._next_index,
             self.generation, self._changed_at) = saved
            detail = e if isinstance(e, VncError) else f"missing or bad field {e}"
            raise VncError(f"saved controller state is unusable: {detail}") from None


def _as_list(value, what):
    if value is None:
        return []
    if not isinstance(value, list):
        raise VncError(f"{what} must be a list")
    return value


def _fingerprint(topo):
    relevant = {k: topo.get(k) for k in ("servers", "encapsulation", "virtual_networks",
                                        "vms", "policies")}
    blob = json.dumps(relevant, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
