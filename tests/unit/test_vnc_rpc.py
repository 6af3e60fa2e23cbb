"""Control channel over a real unix socket: register, pushes, errors, controller restart."""
import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from controllers.vnc_rpc import start_vnc_server
from vrouter.io.control import ADMIN_METHODS, AGENT_METHODS, PROTOCOL_VERSION, AdminClient, VncError, VncUnavailable
from vrouter.io.vnc_client import VncClient

WAIT = 5.0  # generous: arrival is asserted, never its timing


def topology():
    return {
        "name": "rpc",
        "servers": [{"name": "srv1", "address": "10.0.1.1"},
                    {"name": "srv2", "address": "10.0.2.1"},
                    {"name": "srv3", "address": "10.0.3.1"}],
        "virtual_networks": [{"name": "red", "id": 100, "subnets": ["192.168.1.0/24"]},
                             {"name": "blue", "id": 200, "subnets": ["192.168.1.0/24"]}],
        "vms": [{"name": "red1", "network": "red", "server": "srv1", "address": "192.168.1.11"},
                {"name": "blue1", "network": "blue", "server": "srv1",
                 "address": "192.168.1.11"},
                {"name": "red2", "network": "red", "server": "srv2", "address": "192.168.1.12"}],
    }


class Recorder:
    def __init__(self):
        self.calls = []

    def __call__(self, generation, config):
        self.calls.append((generation, config))


@pytest.fixture
def run(tmp_path):
    """Starts servers and clients and always stops them, whatever the test did."""
    started = []

    class Run:
        sock = str(tmp_path / "vnc.sock")

        def server(self, topo=None, **kw):
            srv = start_vnc_server(topo or topology(), self.sock, **kw)
            started.append(srv)
            return srv

        def client(self, server, **kw):
            rec = Recorder()
            cli = VncClient(self.sock, server, rec, **kw).start()
            started.append(cli)
            return cli, rec

        def admin(self):
            adm = AdminClient(self.sock)
            started.append(adm)
            return adm

    yield Run()
    for obj in reversed(started):
        obj.close() if isinstance(obj, AdminClient) else obj.stop()


def has_route(prefix, network="blue"):
    return lambda cfg: any(r["prefix"] == prefix and r["network"] == network
                           for r in cfg["routes"])


def wait_until(predicate, timeout=WAIT):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def test_register_delivers_the_servers_config(run):
    srv = run.server()
    cli, rec = run.client("srv1")
    assert cli.wait_for(lambda cfg: True, WAIT)
    assert cli.connected
    assert rec.calls == [(srv.model.generation, srv.model.config_for("srv1"))]
    assert cli.epoch == srv.epoch
    assert wait_until(lambda: [a["server"] for a in run.admin().list_agents()] == ["srv1"])


def test_add_vm_is_pushed_to_the_affected_agents_only(run):
    run.server()
    clients = {s: run.client(s, heartbeat_interval=0.2) for s in ("srv1", "srv2", "srv3")}
    for cli, _ in clients.values():
        assert cli.wait_for(lambda cfg: True, WAIT)
    result = run.admin().add_vm("blue2", "blue", "srv2", "192.168.1.12")
    assert result["servers"] == ["srv1", "srv2"]
    assert clients["srv1"][0].wait_for(has_route("192.168.1.12/32"), WAIT)
    assert clients["srv2"][0].wait_for(has_route("192.168.1.12/32"), WAIT)
    assert clients["srv1"][1].calls[-1][0] == result["generation"]
    # srv3's agent heartbeats (and so would have resynced) but its config never changed.
    before = clients["srv3"][0].heartbeats
    assert wait_until(lambda: clients["srv3"][0].heartbeats >= before + 2)
    assert len(clients["srv3"][1].calls) == 1
    assert wait_until(lambda: all(a["in_sync"] for a in run.admin().list_agents()))


def test_every_change_kind_reaches_agents(run):
    run.server()
    cli, rec = run.client("srv1")
    assert cli.wait_for(lambda cfg: True, WAIT)
    adm = run.admin()
    adm.set_flow_mode("reactive")
    assert cli.wait_for(lambda cfg: cfg["flow"]["mode"] == "reactive", WAIT)
    adm.set_policy("red", {"default": "deny", "rules": []})
    assert cli.wait_for(lambda cfg: any(p["default"] == "deny" for p in cfg["policies"]), WAIT)
    adm.set_flow_limit("default-vm", None, 500)
    assert cli.wait_for(lambda cfg: cfg["flow"].get("vm_flow_limit") == 500, WAIT)
    adm.set_flow_limit("network", "red", 800)
    assert cli.wait_for(lambda cfg: any(n.get("flow_limit") == 800 for n in cfg["networks"]), WAIT)
    with pytest.raises(VncError, match="unknown VM 'nobody'"):
        adm.set_flow_limit("vm", "nobody", 5)
    adm.remove_vm("blue1")
    assert cli.wait_for(lambda cfg: [n["name"] for n in cfg["networks"]] == ["red"], WAIT)
    assert [g for g, _ in rec.calls] == sorted(g for g, _ in rec.calls)


def test_protocol_version_mismatch_is_a_clear_error(run):
    run.server()
    with pytest.raises(VncError, match=f"agent speaks 99, controller speaks {PROTOCOL_VERSION}"):
        run.admin().call("register", 99, "srv1", 1)
    cli, rec = run.client("srv1", version=99)
    assert wait_until(lambda: cli.last_error and "version mismatch" in cli.last_error)
    assert not cli.connected and rec.calls == []


def test_bad_requests_get_one_line_errors(run):
    run.server()
    adm = run.admin()
    with pytest.raises(VncError, match="unknown server 'srv9'"):
        adm.call("register", PROTOCOL_VERSION, "srv9", 1)
    with pytest.raises(VncError, match="outside the subnets"):
        adm.add_vm("x", "red", "srv1", "10.1.1.1")
    with pytest.raises(VncError, match="unknown method 'reboot'"):
        adm.call("reboot")
    with pytest.raises(VncError, match="wrong number of parameters"):
        adm.call("remove_vm")
    with pytest.raises(VncError, match="not registered"):
        adm.call("heartbeat", "srv1", 1, {})
    assert adm.dump()["generation"] == 1


def test_the_server_answers_every_method_the_protocol_names(run):
    """Both sides take the method names from vrouter/io/control.py: none is unknown to the server,
    and the admin client has one call per admin method."""
    run.server()
    adm = run.admin()
    for method in AGENT_METHODS + ADMIN_METHODS:   # known, so it is the parameters that are wrong
        with pytest.raises(VncError, match=f"^{method}: wrong number of parameters$"):
            adm.call(method, *[None] * 9)
    assert all(callable(getattr(AdminClient, m, None)) for m in ADMIN_METHODS)


def test_the_vrouter_does_not_import_the_controller():
    """The protocol module is the vrouter's half of the contract: it stands alone."""
    code = ("import sys, vrouter.io.control, vrouter.io.vnc_client; "
            "print([m for m in sys.modules if m.startswith('controllers')])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_garbage_on_one_connection_does_not_hurt_the_controller(run):
    run.server()
    raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    raw.connect(run.sock)
    raw.sendall(b"\xc1\xc1 this is not msgpack-rpc")
    raw.close()
    assert run.admin().dump()["protocol"] == PROTOCOL_VERSION


def test_admin_without_controller_is_unavailable(tmp_path):
    path = str(tmp_path / "none.sock")
    with pytest.raises(VncUnavailable, match=f"controller not reachable at {path}: "
                                             "is the testbed up?"):
        AdminClient(path)


def test_restart_keeps_config_meanwhile_then_resyncs_to_persisted_state(run):
    srv = run.server()
    cli, rec = run.client("srv1", backoff_max=0.5)
    assert cli.wait_for(lambda cfg: True, WAIT)
    adm = run.admin()
    adm.add_vm("blue2", "blue", "srv2", "192.168.1.12")
    assert cli.wait_for(has_route("192.168.1.12/32"), WAIT)
    adm.set_flow_limit("network", "red", 700)       # run-time limits persist like the other changes
    assert cli.wait_for(lambda cfg: any(n.get("flow_limit") == 700 for n in cfg["networks"]), WAIT)
    kept = cli.config
    applied = cli.configs_applied
    old_epoch = srv.epoch

    srv.stop()
    assert not os.path.exists(run.sock)
    assert wait_until(lambda: not cli.connected)
    assert cli.config == kept and cli.configs_applied == applied  # still forwarding with it
    with pytest.raises(VncUnavailable):
        adm.dump()

    srv2 = run.server()
    assert srv2.restored and srv2.epoch != old_epoch
    assert wait_until(lambda: cli.connected and cli.epoch == srv2.epoch)
    assert cli.reconnects >= 1
    assert cli.config == srv2.model.config_for("srv1") == kept
    assert cli.configs_applied == applied  # same content: nothing to re-apply
    assert "blue2" in {v["name"] for v in run.admin().dump()["vms"]}
    run.admin().remove_vm("blue2")
    assert cli.wait_for(lambda cfg: not has_route("192.168.1.12/32")(cfg), WAIT)


def test_restart_without_state_resyncs_to_the_topology(run, tmp_path):
    srv = run.server(state_path=str(tmp_path / "a.json"))
    cli, rec = run.client("srv1", backoff_max=0.5)
    assert cli.wait_for(lambda cfg: True, WAIT)
    run.admin().add_vm("blue2", "blue", "srv2", "192.168.1.12")
    assert cli.wait_for(has_route("192.168.1.12/32"), WAIT)
    srv.stop()
    # Generation restarts at 1 with other content: the client must notice by content.
    srv2 = run.server(state_path=str(tmp_path / "b.json"))
    assert not srv2.restored
    assert cli.wait_for(lambda cfg: not has_route("192.168.1.12/32")(cfg), WAIT)
    assert rec.calls[-1] == (1, srv2.model.config_for("srv1"))


def test_state_file_is_written_atomically_next_to_the_socket(run, tmp_path):
    run.server()
    run.admin().set_flow_mode("reactive")
    state = json.loads((tmp_path / "vnc-state.json").read_text())
    assert state["flow_mode"] == "reactive" and state["generation"] == 2
    assert [p.name for p in tmp_path.iterdir() if ".tmp" in p.name] == []


def test_corrupt_state_file_is_ignored(run, tmp_path):
    (tmp_path / "vnc-state.json").write_text("{not json")
    srv = run.server()
    assert not srv.restored and srv.model.generation == 1


def test_stale_socket_file_does_not_block_a_restart(run):
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(run.sock)  # a killed controller leaves exactly this behind
    dead.close()
    assert os.path.exists(run.sock)
    run.server()
    assert run.admin().dump()["name"] == "rpc"


def test_a_live_controller_or_a_plain_file_is_not_replaced(run, tmp_path):
    run.server()
    with pytest.raises(VncError, match="already listening"):
        start_vnc_server(topology(), run.sock)
    plain = tmp_path / "plain"
    plain.write_text("x")
    with pytest.raises(VncError, match="not a socket"):
        start_vnc_server(topology(), str(plain))


def test_too_long_socket_path_is_refused(tmp_path):
    with pytest.raises(VncError, match="longer than"):
        start_vnc_server(topology(), "/tmp/" + "d" * 120 + "/vnc.sock")


def test_concurrent_changes_leave_every_agent_on_the_final_config(run):
    srv = run.server()
    clients = [run.client(s)[0] for s in ("srv1", "srv2", "srv3")]
    errors = []

    def churn(worker):
        try:
            with AdminClient(run.sock) as adm:
                for i in range(8):
                    name = f"c{worker}x{i}"
                    adm.add_vm(name, "red", f"srv{worker}", f"192.168.1.{100 + worker * 10 + i}")
                    if i % 2:
                        adm.remove_vm(name)
        except Exception as e:  # reported below: an assertion in a thread would be lost
            errors.append(e)

    threads = [threading.Thread(target=churn, args=(w,)) for w in (1, 2, 3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    for cli in clients:
        assert cli.wait_for(lambda cfg, s=cli.server: cfg == srv.model.config_for(s), WAIT)
