"""Offline replay CLI over the committed fixtures; bad input gives one line and exit code 2."""
import importlib.util
import json
import pathlib
import subprocess
import sys

import pytest

from vrouter.__main__ import main
from vrouter.tools.replay import read_pcap

ROOT = pathlib.Path(__file__).resolve().parents[2]
FIX = ROOT / "tests" / "fixtures"
CONFIG = str(FIX / "replay-srv1.yaml")


def replay(capsys, capture, *extra):
    rc = main(["replay", "--config", CONFIG, *extra, "--json", str(FIX / capture)])
    out = capsys.readouterr().out.splitlines()
    return rc, out, json.loads(out[-1])


def test_session_proactive_costs_one_slow_path_call_per_connection(capsys):
    rc, out, res = replay(capsys, "session-srv1.pcap")
    assert rc == 0 and res["packets"] == 17
    # TCP to red2, UDP in blue, UDP to red3, ping to red2: four flows, replies all hit the reverse.
    assert res["slow_path_calls"] == 4
    assert sum(res["drops"].values()) == 0
    assert res["stats"]["arp_replies"] == 2 and res["stats"]["icmp_replies"] == 1
    assert res["stats"]["tcp_teardowns"] == 1                  # FIN both ways, then the last ACK
    # The finished TCP pair lingers as closed (closed_linger) for late packets; the rest stay open.
    assert {(f["vrf"], f["proto"]) for f in res["flows"]} == {(200, "udp"), (100, "udp"), (100, "icmp"),
                                                             (100, "tcp")}
    assert {f["tcp_state"] for f in res["flows"] if f["proto"] == "tcp"} == {"closed"}
    assert any(line.startswith("#5 ") and "fabric 10.0.2.1 mplsoudp" in line for line in out)


def test_session_reactive_costs_a_call_for_every_first_reply(capsys):
    rc, out, res = replay(capsys, "session-srv1.pcap", "--mode", "reactive")
    assert rc == 0 and res["slow_path_calls"] == 8


def test_drops_capture_explains_every_drop(capsys):
    rc, out, res = replay(capsys, "drops-srv1.pcap")
    drops = {k: v for k, v in res["drops"].items() if v}
    assert drops == {"policy_deny": 2, "malformed": 2, "spoofed_source": 1, "ttl_expired": 1, "no_route": 1,
                     "not_ip": 1, "invalid_vif": 1, "invalid_source": 1, "unknown_label": 1}
    assert "Drop counters (dropstats)" in out


def test_pcap_reader_reads_scapy_captures():
    packets = read_pcap(str(FIX / "session-srv1.pcap"))
    assert len(packets) == 17 and abs((packets[1][0] - packets[0][0]) - 0.001) < 1e-6


@pytest.mark.parametrize("config,capture,needle", [
    ("missing.yaml", str(FIX / "drops-srv1.pcap"), "cannot read config"),
    (CONFIG, "missing.pcap", "cannot read capture"),
    (CONFIG, CONFIG, "not a pcap file"),
    ("BADYAML", str(FIX / "drops-srv1.pcap"), "invalid YAML"),
    ("BADCONFIG", str(FIX / "drops-srv1.pcap"), "networks[0].id"),
])
def test_bad_input_is_one_line_and_exit_code_2(tmp_path, config, capture, needle):
    if config == "BADYAML":
        config = tmp_path / "bad.yaml"
        config.write_text("networks: [\n")
    elif config == "BADCONFIG":
        config = tmp_path / "bad.yaml"
        config.write_text("underlay_ip: 10.0.1.1\nnetworks: [{name: red, id: 3, subnets: [10.0.0.0/8]}]\n")
    proc = subprocess.run([sys.executable, "-m", "vrouter", "replay", "--config", str(config), capture],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 2
    assert proc.stdout == "" and len(proc.stderr.strip().splitlines()) == 1
    assert needle in proc.stderr and "Traceback" not in proc.stderr


def test_fixtures_are_reproducible(tmp_path):
    """The committed captures are exactly what scripts/make_fixtures.py produces."""
    spec = importlib.util.spec_from_file_location("make_fixtures", ROOT / "scripts" / "make_fixtures.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.OUT = tmp_path
    mod.main()
    for name in ("session-srv1.pcap", "drops-srv1.pcap"):
        assert (tmp_path / name).read_bytes() == (FIX / name).read_bytes()
