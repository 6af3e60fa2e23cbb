"""The flow tools of issue 11 without root: `vr SRV flow -r` (rates, block, loop), `net flow-limit`
(syntax, VNC call, errors), how `bench flowsetup` runs its generators (testbed/measure/load.py
flood) and reads their totals, and its arithmetic (setup rates from samples, stop rule, summary,
report)."""
import io
import json
import subprocess
import sys
import types

import pytest

from testbed import bench_flowsetup, cli, fabric, net_cmd, vr
from testbed.bench_flowsetup import bench_topology
from testbed.commands import CommandError
from testbed.measure import flowsetup
from testbed.measure import load as load_gen
from testbed.topology import load
from vrouter.io import introspect
from vrouter.io.control import VncError
from vrouter.tools import tables


def pressure(installs=0, uptime=10.0, **extra):
    p = {"entries": 1000, "capacity": 65536, "held": 12, "held_limit": 4096, "unreplied": 100,
         "evictions": 0, "unreplied_aged": 0, "installs": installs, "entries_installed": 2 * installs,
         "punts_queued": 3, "tokens": None, "setup_rate": 0.0, "burst_tokens": 256,
         "vms": {"vt-red1": {"entries": 900, "limit": 16384, "held": 10, "blocked": False, "refused": 0}},
         "networks": {"red": {"entries": 900, "limit": 32768, "blocked": False, "refused": 0}},
         "uptime": uptime}
    p.update(extra)
    return p


# ---------------------------------------------------------------- flow -r: rates and the block
def test_rates_come_from_the_installs_over_the_forwarders_uptime():
    prev = pressure(installs=1000, uptime=10.0, evictions=5, unreplied_aged=1)
    cur = pressure(installs=3000, uptime=12.0, evictions=25, unreplied_aged=11)
    r = tables.flow_rates(prev, cur, elapsed=99.0)      # the forwarder's uptime wins over the caller's clock
    assert r["interval"] == 2.0 and r["setup"] == 1000.0 and r["setup_average"] == 250.0
    assert (r["evictions"], r["unreplied_aged"], r["teardown"]) == (10.0, 5.0, 15.0)
    assert r["counters_reset"] is False


def test_rates_without_uptime_use_the_callers_clock_and_a_reset_gives_no_rate():
    prev, cur = pressure(installs=10, uptime=None), pressure(installs=40, uptime=None)
    r = tables.flow_rates(prev, cur, elapsed=0.5)
    assert r["setup"] == 60.0 and r["setup_average"] is None
    r = tables.flow_rates(pressure(installs=500, uptime=20.0), pressure(installs=7, uptime=21.0))
    assert r["setup"] is None and r["counters_reset"] is True and r["setup_average"] == 7 / 21.0
    assert tables.flow_rates(None, pressure(installs=5))["setup"] is None       # nothing to compare with


def test_flow_rate_block_shows_limits_blocked_owners_and_the_bucket():
    prev = pressure(installs=1000, uptime=10.0)
    cur = pressure(installs=2500, uptime=11.0, tokens=17.4, setup_rate=5000.0,
                   vms={"vt-red1": {"entries": 16384, "limit": 16384, "held": 256, "blocked": True, "refused": 7}})
    text = tables.format_flow_rate("srv1", cur, tables.flow_rates(prev, cur), prev)
    assert "setup      current     1500/s   average      227/s" in text
    assert "entries    1000 / 65536 (1.5%)   held 12 / 4096   unreplied 100" in text
    assert "burst tokens 17 / 256 left (refill 5000/s)" in text
    row = next(line for line in text.splitlines() if line.strip().startswith("vt-red1"))
    assert row.split() == ["vt-red1", "16384", "16384", "256", "YES", "7", "+7"]
    assert "no cap" in tables.format_flow_rate("srv1", prev, tables.flow_rates(None, prev))


# ---------------------------------------------------------------- flow -r: the command
@pytest.fixture
def rundir(tmp_path):
    (tmp_path / "fabric.json").write_text(json.dumps(fabric.describe(load("topologies/default.yaml"), "vt")))
    return tmp_path


def fake_vrouter(monkeypatch, answers):
    """introspect.query answering `pressure` from `answers` in turn (an exception is raised)."""
    asked = []

    def query(rundir, server, op, **args):
        asked.append(op)
        if op == "stats":
            return {"pipeline": {"installs": 3 * len(asked), "entries": 2, "capacity": 64}}
        a = answers.pop(0)
        if isinstance(a, Exception):
            raise a
        return a
    monkeypatch.setattr(introspect, "query", query)
    return asked


def test_flow_rate_json_gives_one_object_per_sample(monkeypatch, rundir):
    fake_vrouter(monkeypatch, [pressure(0, 1.0), pressure(100, 2.0), pressure(300, 3.0)])
    monkeypatch.setattr(vr.time, "sleep", lambda s: None)
    out = io.StringIO()
    assert vr.run(["srv1", "flow", "-r", "--count", "2", "--json"], rundir, out=out) == 0
    samples = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [(s["sample"], s["rates"]["setup"]) for s in samples] == [(1, 100.0), (2, 200.0)]
    assert {"entries", "capacity", "held", "vms", "networks", "uptime"} <= samples[0].keys()


def test_flow_rate_ends_quietly_on_ctrl_c_and_errors_in_one_line(monkeypatch, rundir):
    fake_vrouter(monkeypatch, [pressure(0)])

    def interrupt(seconds):
        raise KeyboardInterrupt
    monkeypatch.setattr(vr.time, "sleep", interrupt)
    out = io.StringIO()
    assert vr.run(["srv1", "flow", "-r"], rundir, out=out) == 0 and out.getvalue() == "\n"
    fake_vrouter(monkeypatch, [introspect.IntrospectError("no vrouter is listening on x/introspect.sock")])
    with pytest.raises(CommandError, match="^srv1: no vrouter is listening"):
        vr.run(["srv1", "flow", "-r"], rundir)
    for bad in (["--count", "0"], ["--interval", "-1"], ["--count", "x"], ["--bogus"], ["--count"]):
        with pytest.raises(CommandError) as exc:
            vr.run(["srv1", "flow", "-r", *bad], rundir)
        assert exc.value.code == 2 and "\n" not in str(exc.value)
    with pytest.raises(CommandError, match="unknown server 'srv9'"):
        vr.run(["srv9", "flow", "-r"], rundir)


def test_offload_switches_gro_and_gso_through_the_set_op(monkeypatch, rundir):
    asked = []

    def query(rundir, server, op, **args):
        asked.append((server, op, args))
        if op == "stats":
            return {"gro": {"enabled": True, "segments": 0}, "gso": {"enabled": False}}
        return {"gro": args.get("gro", True), "gso": args.get("gso", True)}
    monkeypatch.setattr(introspect, "query", query)
    out = io.StringIO()
    assert vr.run(["srv3", "offload", "gro", "off"], rundir, out=out) == 0
    assert asked == [("srv3", "set", {"gro": False})] and out.getvalue() == "gro off, gso on\n"
    out = io.StringIO()
    assert vr.run(["srv3", "offload"], rundir, out=out) == 0 and asked[-1] == ("srv3", "stats", {})
    assert out.getvalue() == "gro on, gso off\n"
    assert vr.run(["srv3", "offload", "gso", "off", "gro", "on"], rundir, out=io.StringIO()) == 0
    assert asked[-1][2] == {"gso": False, "gro": True}
    for bad in (["gro"], ["gro", "maybe"], ["tso", "on"]):
        with pytest.raises(CommandError, match=r"usage: vr SERVER offload \[gro on\|off\]") as exc:
            vr.run(["srv3", "offload", *bad], rundir)
        assert exc.value.code == 2


# ---------------------------------------------------------------- net flow-limit
def test_flow_limit_syntax():
    parser = cli.build_parser()
    args = parser.parse_args(["net", "flow-limit", "--default-vm", "16384"])
    assert net_cmd.flow_limit_target(args) == ("default-vm", None) and net_cmd.parse_limit(args.limit) == 16384
    args = parser.parse_args(["net", "flow-limit", "--vm", "red1", "default"])
    assert net_cmd.flow_limit_target(args) == ("vm", "red1") and net_cmd.parse_limit(args.limit) is None
    args = parser.parse_args(["net", "flow-limit", "--network", "red", "20000"])
    assert net_cmd.flow_limit_target(args) == ("network", "red")
    assert net_cmd.flow_limit_target(parser.parse_args(["net", "flow-limit", "--default-network", "5"])) == \
        ("default-network", None)
    for bad in ("0", "-3", "lots", "1.5"):
        with pytest.raises(CommandError, match="whole number >= 1 or 'default'") as exc:
            net_cmd.parse_limit(bad)
        assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        parser.parse_args(["net", "flow-limit", "--vm", "a", "--network", "b", "5"])
    assert exc.value.code == 2


class FakeVnc:
    """AdminClient's set_flow_limit, recording the call and answering like the VNC."""
    calls: list = []
    error = None

    def __init__(self, path):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def set_flow_limit(self, *params):
        FakeVnc.calls.append(("set_flow_limit", *params))
        if FakeVnc.error:
            raise VncError(FakeVnc.error)
        return {"generation": 7, "servers": ["srv1", "srv3"]}


def test_flow_limit_calls_set_flow_limit_and_says_what_was_set(monkeypatch, rundir, capsys):
    monkeypatch.setattr(net_cmd, "AdminClient", FakeVnc)
    monkeypatch.setattr(net_cmd, "rundir_path", lambda prefix, root: rundir)
    FakeVnc.calls, FakeVnc.error = [], None
    args = types.SimpleNamespace(vm="red1", network=None, default_vm=False, default_network=False, limit="5000",
                                 prefix="vt", run_root=None)
    assert net_cmd.flow_limit_command(args) == 0
    assert FakeVnc.calls == [("set_flow_limit", "vm", "red1", 5000)]
    assert capsys.readouterr().out == \
        "flow limit of VM red1: 5000 entries (generation 7, servers updated: srv1, srv3)\n"
    net_cmd.flow_limit_command(types.SimpleNamespace(**{**vars(args), "vm": None, "default_network": True,
                                                        "limit": "default"}))
    assert FakeVnc.calls[-1] == ("set_flow_limit", "default-network", None, None)
    assert "every network without its own limit: the default" in capsys.readouterr().out
    FakeVnc.error = "unknown VM 'red9'"
    with pytest.raises(CommandError, match="^unknown VM 'red9'$") as exc:
        net_cmd.flow_limit_command(args)
    assert exc.value.code == 2


# ---------------------------------------------------------------- bench flowsetup: its generators
class FakeHost:
    """A VM whose `popen` records the command line and runs a stand-in printing `lines` (what
    testbed/measure/load.py flood prints) and `err` on stderr, exiting with `code`."""

    def __init__(self, lines, err="", code=0):
        self.lines, self.err, self.code, self.argv = lines, err, code, None

    def popen(self, argv, **kwargs):
        self.argv = argv
        script = (f"import sys; sys.stdout.write({chr(10).join(self.lines) + chr(10)!r}); "
                  f"sys.stderr.write({self.err!r}); sys.exit({self.code})")
        return subprocess.Popen([sys.executable, "-c", script], **kwargs)


def fake_bed(host):
    return types.SimpleNamespace(host=lambda vm: host)


# The records of a real `load flood --rate 2000 --seconds 1` (a start, a progress record, the totals).
FLOOD_LINES = ['{"t":100.0,"sent":0,"started":true}', '{"t":100.5,"sent":1000,"errors":0}',
               '{"done":true,"command":"flood","dst":"192.168.1.3","t0":100.0,"t1":101.0,"offered_rate":2000.0,'
               '"sent":1990,"errors":10,"rate":1990.0,"flows":1990,"tx_dropped":0}']


def test_the_bench_runs_load_flood_and_reads_its_totals():
    host = FakeHost(FLOOD_LINES)
    gen = bench_flowsetup.spawn(fake_bed(host), "red1", "192.168.1.3", 2000.04, 1.23456, 55.5)
    assert host.argv[1:] == ["-m", "testbed.measure.load", "flood", "--dst", "192.168.1.3", "--rate", "2000.0",
                             "--seconds", "1.235", "--start-at", "55.5"]
    assert load_gen.parser().parse_args(host.argv[3:]).start_at == 55.5        # load.py takes that command line
    final = bench_flowsetup.collect(gen, timeout=10)
    assert (final["sent"], final["errors"], final["rate"]) == (1990, 10, 1990.0)
    step = flowsetup.step_figures(2000, 1.0, [final, final], {})
    assert (step["sent"], step["sent_rate"], step["generator_errors"]) == (3980, 3980.0, 20)


def test_a_generator_without_totals_is_a_one_line_error():
    host = FakeHost(FLOOD_LINES[:1], err="error: flood: [Errno 1] Operation not permitted (a raw socket needs root)\n",
                    code=1)
    gen = bench_flowsetup.spawn(fake_bed(host), "red1", "192.168.1.3", 0, 1.0, 0.0)
    assert host.argv[host.argv.index("--rate") + 1] == "0"
    with pytest.raises(CommandError) as err:
        bench_flowsetup.collect(gen, timeout=10)
    assert str(err.value) == "flow generator: load flood: error: flood: [Errno 1] Operation not permitted " \
                             "(a raw socket needs root)"


# ---------------------------------------------------------------- bench flowsetup: arithmetic
def vsample(t, installs, entries_installed=None, rx=0, tx=0, drops=None, uptime=None, udp=None):
    p = {"installs": installs, "entries_installed": 2 * installs if entries_installed is None else entries_installed,
         "uptime": uptime, "entries": 2 * installs}
    return {"t": t, "pressure": p, "drops": drops, "udp": udp or {},
            "vifs": {"tap1": {"rx_packets": rx, "tx_packets": tx}}}


def step_samples(rate, seconds=2.0, drops=None, half_entries=False):
    n = int(rate * seconds)
    return {"before": vsample(0.0, 0, drops={"hold_timeout": 0}, udp={"RcvbufErrors": 1}),
            "a": vsample(1.0, 100, rx=100, uptime=50.0),
            "b": vsample(1.0 + seconds, 100 + n, entries_installed=200 + (n if half_entries else 2 * n),
                         rx=100 + n, uptime=50.0 + seconds),
            "after": vsample(5.0, 200 + n, rx=300 + n, tx=4, drops=drops or {"hold_timeout": 0},
                             udp={"RcvbufErrors": 4})}


def test_setup_rate_counts_flows_with_both_entries_in_the_window():
    f = flowsetup.vrouter_figures(step_samples(3000), ["tap1"])
    assert f["setup_rate"] == 3000.0 and f["vm_rx_rate"] == 3000.0 and f["window_s"] == 2.0
    assert (f["setups"], f["vm_rx_packets"], f["vm_tx_packets"], f["udp_rcvbuf_errors"]) == (6200, 6300, 4, 3)
    assert flowsetup.vrouter_figures(step_samples(3000, half_entries=True), ["tap1"])["setup_rate"] == 1500.0
    assert flowsetup.udp_errors("Udp: InDatagrams InErrors RcvbufErrors\nUdp: 5 2 1\n") == \
        {"InErrors": 2, "RcvbufErrors": 1}


def _step(offered, snd, rcv, drops=None, sent=None):
    vr_ = {"srv1": flowsetup.vrouter_figures(step_samples(snd, drops=drops), ["tap1"]),
           "srv3": flowsetup.vrouter_figures(step_samples(rcv), ["tap1"])}
    gens = [{"sent": sent if sent is not None else int(offered * 2.8), "rate": offered, "errors": 0}]
    return flowsetup.step_figures(offered, 2.0, gens, vr_)


def test_sweep_stops_when_the_rate_stops_rising_or_the_slow_path_drops_dominate():
    steps = [_step(2000, 2000, 1990)]
    assert flowsetup.should_stop(steps) is None and steps[0]["achieved"] == 1990.0
    steps.append(_step(5000, 5000, 4800))
    assert flowsetup.should_stop(steps) is None
    steps.append(_step(10000, 5100, 4900))
    assert "stopped rising" in flowsetup.should_stop(steps)
    kept_up = [_step(5000, 5000, 5000), _step(5000, 4950, 4950)]    # no rise, but everything offered set up
    assert flowsetup.should_stop(kept_up) is None
    flood = _step(2000, 2000, 2000, drops={"hold_timeout": 4000}, sent=5000)
    assert flood["slow_path_drops"] == 4000 and "slow-path drops (4000)" in flowsetup.should_stop([flood])


def test_summary_reports_the_best_end_to_end_step_and_the_targets():
    roles = {"srv1": "sending", "srv3": "receiving"}
    steps = [_step(5000, 5000, 4900), _step(10000, 9000, 7000), _step(20000, 6000, 8000)]
    s = flowsetup.summary(steps, roles)
    assert (s["flows_per_s"], s["at_offered"], s["lower_of_bests"]) == (7000, 10000, 8000)
    assert s["per_vrouter"]["srv1"] == {"role": "sending", "best_setup_rate": 9000.0, "at_offered": 10000}
    assert list(s["targets_met"].values()) == [False, False]
    assert all(flowsetup.summary([_step(20000, 21000, 20500)], roles)["targets_met"].values())
    assert list(flowsetup.summary([_step(20000, 12000, 11000)], roles)["targets_met"].values()) == [True, False]
    r = {"topology": "default", "roles": roles, "steps": steps, "stopped": "the achieved rate stopped rising",
         "generator_max_rate": 350000.0,
         "settings": {"senders": ["red1@srv1"], "receivers": ["red3@srv3"], "mode": "proactive", "capacity": 262144,
                      "capacity_source": "topology flow.capacity", "window": 3.0, "lead": 0.5,
                      "limits_note": "vm red1 262144", "max_generators": 4}, **s}
    text = "\n".join(flowsetup.report_lines(r))
    assert "target >= 10,000 flows/s (Tungsten Fabric's release gate): NOT met" in text
    assert "end-to-end setup rate (both vrouters, best step): 7000 flows/s at 10000/s offered" in text
    assert "one generator, unpaced, in red1@srv1: 350000 datagrams/s" in text
    assert "flow table capacity 262144 (topology flow.capacity)" in text


def test_limit_hint_names_what_held_a_step_back():
    roles = {"srv1": "sending", "srv3": "receiving"}
    clean = _step(2000, 2000, 2000, sent=4300)
    assert flowsetup.limit_hint(clean, roles) == "6 datagrams lost to full UDP sockets"
    for v in clean["vrouters"].values():
        v["udp_rcvbuf_errors"] = 0
    assert flowsetup.limit_hint(clean, roles) == "nothing lost: every datagram read was set up"
    step = _step(20000, 6000, 6000, drops={"hold_timeout": 10, "flow_table_full": 3}, sent=60000)
    hint = flowsetup.limit_hint(step, roles)
    assert "did not read" in hint and "10 drops because the slow path" in hint
    assert "3 drops because the flow table" in hint


def test_window_and_generators_fit_the_table_and_the_rate():
    assert flowsetup.step_window(2000, 262144, 3.0, 0.5, 0.3) == 3.0
    assert flowsetup.step_window(40000, 262144, 3.0, 0.5, 0.3) == round(0.45 * 262144 / 40000 - 0.8, 3)
    assert flowsetup.step_window(40000, 65536, 3.0, 0.5, 0.3) == flowsetup.MIN_WINDOW
    assert flowsetup.generators_for(40000, 15000, 4) == 4 and flowsetup.generators_for(40000, 350000, 4) == 1
    assert flowsetup.generators_for(10000, None, 4) == 1


def test_bench_topology_raises_the_capacity():
    topo, capacity, source = bench_topology(1234)
    assert capacity == 1234 and topo.raw["flow"]["capacity"] == 1234 and source == "topology flow.capacity"


def test_settle_waits_until_the_installs_stop_growing(monkeypatch):
    answers = iter([{"installs": 5}, {"installs": 9}, {"installs": 9}, {"installs": 12}, {"installs": 12}])
    asked = []

    def read(rundir, server):
        asked.append(server)
        return next(answers)

    monkeypatch.setattr(bench_flowsetup, "read_pressure", read)
    monkeypatch.setattr(bench_flowsetup.time, "sleep", lambda s: None)
    bench_flowsetup.settle(types.SimpleNamespace(path="/nonexistent"), ["srv1"])
    assert asked == ["srv1"] * 3   # 5 -> 9 -> 9: settled at the first repeat
