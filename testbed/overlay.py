"""The overlay in the testbed: VMs as Mininet hosts, one vrouter (forwarder + agent) per server.

Runs as the runner's post-fabric hook (`testbed.runner.on_up`), so every way of bringing a testbed
up (daemon, tests, experiments) gets it. For every VM, a Mininet host without links (so `red1 ping
red2` works in Mininet's CLI); the forwarder of the VM's server creates the VM's TAP, moves it into
the host and sets MAC, address and default route (docs/vrouter.md). VM interface names come from
the VNC (controllers/vnc_model.py), which is the source of truth for VMs, also after run-time
changes. Processes run under the testbed's supervisor; logs are `<rundir>/logs/vr-<server>-*.log`.
If anything fails the runner tears the whole testbed down (supervisor, Mininet, scoped cleanup), so
nothing is left half-started.
"""
from __future__ import annotations

import json
import sys
import time

from testbed import REPO, baremetal, gateway, namespaces, vr
from testbed.commands import CommandError
from testbed.network import NO_IPV6
from testbed.runner import CONTROLLER, on_down, on_up
from vrouter.io import introspect, ipc
from vrouter.io.control import AdminClient, VncError, VncUnavailable

VNC_WAIT = 20.0
VIFS_WAIT = 30.0
ACTIVE = {"rundir": None}  # the testbed of this process, for Mininet's CLI command `vr`


class OverlayError(Exception):
    """The overlay could not be brought up or changed; one line for the operator."""


def has_overlay(topology) -> bool:
    return bool(topology.vms or topology.virtual_networks)


def forwarder_name(server: str) -> str:
    return f"vr-{server}-fwd"


def agent_name(server: str) -> str:
    return f"vr-{server}-agent"


def admin(tb, timeout: float = VNC_WAIT):
    """AdminClient of this testbed's VNC, waiting for the controller to open its socket."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return AdminClient(str(tb.rundir.vnc_socket))
        except VncUnavailable:
            if time.monotonic() > deadline:
                raise OverlayError(f"the VNC is not answering on {tb.rundir.vnc_socket} "
                                   f"(controller log: {tb.rundir.log('controller')})") from None
            time.sleep(0.2)


def servers(tb) -> list[str]:
    return [s["name"] for s in tb.desc["servers"]]


@on_up
def start(tb) -> None:
    if not has_overlay(tb.topology):
        return
    t0 = time.monotonic()
    with admin(tb) as vnc:
        vms = vnc.dump()["vms"]
    tb.progress(f"overlay: {len(vms)} VMs on {len(servers(tb))} vrouters")
    for server in servers(tb):  # a new run's agents start from the VNC, not from an earlier run's cache
        ipc.config_cache(tb.path, server).unlink(missing_ok=True)
    hosts = {}
    for n, vm in enumerate(vms, 1):
        hosts[vm["name"]] = add_vm_host(tb, vm["name"])
        _count(tb, "creating VM hosts", n, len(vms))
    ipc.update_vm_namespaces(tb.path, {vm["tap"]: {"vm": vm["name"], "netns": hosts[vm["name"]].pid}
                                       for vm in vms})
    t1 = time.monotonic()
    for n, server in enumerate(servers(tb), 1):
        start_vrouter(tb, server)
        _count(tb, "starting vrouters", n, len(servers(tb)))
    if tb.desc.get("gateway"):           # its routes to the floating IPs and SNAT addresses (the VNC's)
        with admin(tb) as vnc:
            gateway.configure(tb.net, tb.desc, vnc.dump()["gateway_routes"])
    sync_baremetal(tb, first=True)
    t2 = time.monotonic()
    wait_vifs(tb, {vm["server"] for vm in vms}, VIFS_WAIT, progress=tb.progress)
    for vm in vms:
        register_intf(hosts[vm["name"]], vm["tap"], vm["address"])
    tb.timings.update(vm_hosts=t1 - t0, vrouters_started=t2 - t1, vrouters_ready=time.monotonic() - t2)
    ACTIVE["rundir"] = tb.path


@on_down
def stop(tb) -> None:
    ACTIVE["rundir"] = None
    if tb.supervisor is None:
        return
    names = [name for server in servers(tb) for name in (agent_name(server), forwarder_name(server))]
    tb.supervisor.stop_many([name for name in names if name in tb.supervisor.children])


PROGRESS_EVERY = 32   # a long phase's count is shown every so many items (and at its end)


def _count(tb, what: str, done: int, total: int) -> None:
    if total > PROGRESS_EVERY and (done % PROGRESS_EVERY == 0 or done == total):
        tb.progress(f"overlay: {what}: {done}/{total}")


def start_vrouter(tb, server: str) -> None:
    _start_in_server(tb, server, forwarder_name(server), forwarder_argv(tb, server))
    _start_in_server(tb, server, agent_name(server), [sys.executable, "-m", "vrouter.processes.agent",
                                                      "--vnc", str(tb.rundir.vnc_socket)])


def _start_in_server(tb, server: str, name: str, argv: list) -> None:
    """Supervise a vrouter process (argv, plus --rundir and --server) in the server's network namespace."""
    # Only the network namespace (the supervisor's netns_pid), not node.popen: Mininet adds
    # `mnexec -d`, which forks when the child already leads its own session (the supervisor's
    # start_new_session), so the supervisor would see an instant exit and "restart" a process that
    # still runs.
    tb.supervisor.start(name, [*argv, "--rundir", str(tb.path), "--server", server], cwd=str(REPO),
                        netns_pid=tb.host(server).pid)


def forwarder_argv(tb, server: str) -> list:
    """`vrouter.processes.forwarder`, or with `tb.vrouter_steering` set (a vrouter.core.multicore dict, e.g.
    {"mode": "rps", "workers": [0, 1]}) the multi-core vrouter with that file (docs/vrouter.md)."""
    steering = getattr(tb, "vrouter_steering", None)
    if not steering:
        return [sys.executable, "-m", "vrouter.processes.forwarder"]
    path = ipc.server_dir(tb.path, server) / "steering.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(steering, indent=1))
    return [sys.executable, "-m", "vrouter.processes.dispatcher", "--steering", str(path)]


def restart_forwarder(tb, server: str, steering: dict | None) -> None:
    """Replace a server's forwarding plane (single forwarder or multi-core) and wait for its VIFs;
    the agent stays and reconnects by itself."""
    tb.vrouter_steering = steering
    tb.supervisor.stop(forwarder_name(server))
    _start_in_server(tb, server, forwarder_name(server), forwarder_argv(tb, server))
    wait_vifs(tb, {server}, VIFS_WAIT)


def restart_process(tb, name: str) -> int:
    """Restart a supervised process of the testbed at once (no back-off) and return its new PID
    once it is ready: the controller listening, a forwarder serving its VMs (`testbed fault ...
    restart`, through the daemon or testbed.faults.Faults.for_testbed). The calling thread becomes
    the new process's parent thread, and vrouter processes die with it (PR_SET_PDEATHSIG): call
    from a thread that lives as long as the testbed."""
    if name == CONTROLLER:
        return tb.restart_controller()
    if tb.supervisor is None or name not in tb.supervisor.children:
        raise OverlayError(f"no supervised process {name!r} in testbed {tb.prefix!r}")
    pid = tb.supervisor.restart(name).pid
    for server in servers(tb):
        if name == forwarder_name(server):
            wait_vifs(tb, {server}, VIFS_WAIT)
    return pid


def restart_server(tb, server: str, timeout: float = VIFS_WAIT) -> None:
    """Restart a server as a reboot would, as far as the testbed is concerned: its kernel forgets
    its neighbours (ARP entries) and its vrouter starts from nothing (forwarder and agent restarted,
    flow tables empty). The VMs do not reboot: their TAPs are persistent and the new forwarder
    re-attaches them. The new agent takes its configuration from the VNC, or, if the VNC does not
    answer (a controller outage), from the one it cached (vrouter/processes/agent.py). Returns once
    the forwarder serves the VMs of that configuration."""
    vrouter = has_overlay(tb.topology)
    for name in (agent_name(server), forwarder_name(server)) if vrouter else ():
        tb.supervisor.stop(name)
    tb.host(server).cmd("ip neigh flush all")
    if not vrouter:
        return
    start_vrouter(tb, server)
    deadline = time.monotonic() + timeout
    while True:
        try:
            config = introspect.query(tb.path, server, "config", timeout=2.0)["config"]
        except introspect.IntrospectError:
            config = None
        if config is not None:
            break
        if time.monotonic() > deadline:
            raise OverlayError(f"the restarted vrouter of {server} has no configuration after {timeout:.0f} s "
                               f"(logs: {tb.rundir.logs}/vr-{server}-*.log)")
        time.sleep(0.2)
    taps = {v["name"] for v in config.get("vifs", [])}
    if taps:
        wait_vifs(tb, {server}, max(1.0, deadline - time.monotonic()), want={server: taps})


def add_vm_host(tb, name: str):
    """A Mininet host without links: its only interface will be the TAP its vrouter moves in."""
    host = tb.net.addHost(name)
    host.cmd(NO_IPV6)  # IPv6 autoconfiguration would only add noise to captures and vrouter counters
    tb.rundir.record_pid(f"node-{name}", host.pid, role="node")
    namespaces.hold(tb.rundir, name, host.pid)
    return host


def register_intf(host, tap: str, address: str) -> None:
    """Tell Mininet about the VM's TAP, so its CLI can substitute `red2` by the VM's address."""
    from mininet.link import Intf
    if tap in host.nameToIntf:
        return
    intf = Intf(tap, node=host, moveIntfFn=lambda *_: None)  # the forwarder already moved it
    intf.ip = address


def wait_vifs(tb, with_vms: set, timeout: float, want: dict | None = None, progress=None) -> None:
    """Block until every forwarder serves its VMs' interfaces (`want`: {server: {tap, ...}})."""
    deadline = time.monotonic() + timeout
    problem = "no answer yet"
    waiting = set(with_vms)
    while True:
        pending = []
        for server in sorted(waiting):
            try:
                vifs = introspect.query(tb.path, server, "vifs", timeout=2.0)
            except introspect.IntrospectError as exc:
                pending.append(server)
                problem = str(exc)
                continue
            names = {v["name"] for v in vifs if v["state"] == "up"}
            needed = (want or {}).get(server) or set()
            if not vifs or not names >= needed or any(v["state"] != "up" for v in vifs):
                pending.append(server)
                problem = "; ".join(f"{v['name']}: {v['state']}" for v in vifs if v["state"] != "up") \
                    or "no configuration from the agent yet"
        if progress and len(with_vms) > 1 and len(pending) < len(waiting):
            progress(f"overlay: vrouters serving their VMs: {len(with_vms) - len(pending)}/{len(with_vms)}")
        waiting = set(pending)  # a vrouter that served its VMs is not asked again
        if not pending:
            return
        if time.monotonic() > deadline:
            raise OverlayError(f"vrouters not ready after {timeout:.0f} s on {', '.join(pending)}: {problem} "
                               f"(logs: {tb.rundir.logs}/vr-*.log)")
        time.sleep(0.2)


# --- run-time changes (used by `testbed net` through the daemon or in-process) -----------------
def add_vm(tb, name: str, network: str, server: str, address: str, mac: str | None = None,
           timeout: float = 10.0) -> dict:
    """Add a VM at run time: VNC first (validates), then its host; returns the VM record."""
    with admin(tb) as vnc:
        try:
            vnc.add_vm(name, network, server, address, mac)
        except VncError as exc:
            raise OverlayError(str(exc)) from None
        vm = next(v for v in vnc.dump()["vms"] if v["name"] == name)
    host = add_vm_host(tb, name)
    ipc.update_vm_namespaces(tb.path, {vm["tap"]: {"vm": name, "netns": host.pid}})
    wait_vifs(tb, {server}, timeout, want={server: {vm["tap"]}})
    register_intf(host, vm["tap"], vm["address"])
    sync_baremetal(tb)
    return vm


def remove_vm(tb, name: str) -> dict:
    with admin(tb) as vnc:
        try:
            vm = next((v for v in vnc.dump()["vms"] if v["name"] == name), None)
            if vm is None:
                raise VncError(f"unknown VM {name!r}")
            vnc.remove_vm(name)
        except VncError as exc:
            raise OverlayError(str(exc)) from None
    ipc.update_vm_namespaces(tb.path, remove=(vm["tap"],))
    if tb.net is not None and name in tb.net:
        host = tb.net[name]
        host.terminate()
        tb.net.hosts.remove(host)
        del tb.net.nameToNode[name]
        tb.rundir.forget_pid(f"node-{name}")
        namespaces.end_and_release(tb.rundir, name)  # what users started in the VM goes with it
    sync_baremetal(tb)
    return vm


def sync_baremetal(tb, first: bool = False) -> None:
    """The bare-metal hosts' VXLAN devices (`first`) and forwarding entries as the VNC has them now
    (testbed/baremetal.py)."""
    if not tb.desc.get("baremetal") or tb.net is None:
        return
    with admin(tb) as vnc:
        dump = vnc.dump()
    if first:
        baremetal.configure(tb.net, tb.desc, dump)
        return
    records = {r["name"]: r for r in dump.get("baremetal", [])}
    for h in tb.desc["baremetal"]:
        if h["name"] in records:        # a host taken out (`net baremetal rm`) has no entries
            baremetal.sync(tb.net[h["name"]].cmd, records[h["name"]])


def _install_mininet_cli_command() -> None:
    """`vr SERVER flow -l` etc. inside Mininet's CLI (same output as `testbed vr`)."""
    try:
        from mininet.cli import CLI
    except ImportError:
        return

    def do_vr(cli, line):
        """vr SERVER flow -l | flow -r [--count N] | vif --list | rt --dump VRF | nh --list | dropstats | stats"""
        if ACTIVE["rundir"] is None:
            print("error: no overlay in this testbed", file=cli.stdout)
            return
        try:
            vr.run(line.split(), rundir=ACTIVE["rundir"], out=cli.stdout)
        except CommandError as exc:
            print(f"error: {exc}", file=cli.stdout)

    if not hasattr(CLI, "do_vr"):
        CLI.do_vr = do_vr


_install_mininet_cli_command()
