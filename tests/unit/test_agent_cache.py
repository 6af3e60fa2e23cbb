"""The agent's cached configuration: what a restarted agent starts from while the VNC does not answer."""
import json
from pathlib import Path

import yaml

from vrouter.io import ipc
from vrouter.processes.agent import Agent

CONFIG = yaml.safe_load((Path(__file__).parents[1] / "fixtures" / "replay-srv1.yaml").read_text())


def agent(tmp_path):
    return Agent(str(tmp_path), "srv1", cache=ipc.config_cache(tmp_path, "srv1"))


def test_a_config_from_the_vnc_is_cached_and_a_restarted_agent_starts_from_it(tmp_path):
    first = agent(tmp_path)
    first.on_config(7, CONFIG)
    assert json.loads(ipc.config_cache(tmp_path, "srv1").read_text()) == {"generation": 7, "config": CONFIG}
    restarted = agent(tmp_path)
    assert restarted.slowpath is None
    assert restarted.use_cached_config() is True
    assert restarted.slowpath is not None and restarted.generation == 7 and restarted.config_dict == CONFIG
    assert restarted.counters["configs_from_cache"] == 1 and restarted.counters["configs"] == 0


def test_the_cache_never_replaces_what_the_vnc_sent(tmp_path):
    agent(tmp_path).on_config(7, CONFIG)
    newer = dict(CONFIG, flow={**CONFIG.get("flow", {}), "mode": "reactive"})
    a = agent(tmp_path)
    a.on_config(9, newer)               # the VNC answered before the fallback ran
    assert a.use_cached_config() is False
    assert a.generation == 9 and a.config_dict == newer
    assert json.loads(ipc.config_cache(tmp_path, "srv1").read_text())["generation"] == 9


def test_no_or_a_broken_cache_leaves_the_agent_unconfigured(tmp_path):
    a = agent(tmp_path)
    assert a.use_cached_config() is False and a.slowpath is None
    ipc.config_cache(tmp_path, "srv1").parent.mkdir(parents=True)
    ipc.config_cache(tmp_path, "srv1").write_text('{"generation": 3, "conf')
    assert a.use_cached_config() is False and a.slowpath is None
    ipc.config_cache(tmp_path, "srv1").write_text(json.dumps({"generation": 3, "config": {"server": 5}}))
    assert a.use_cached_config() is False and a.slowpath is None
    assert a.counters["config_rejected"] == 1


def test_a_static_config_agent_keeps_no_cache(tmp_path):
    a = Agent(str(tmp_path), "srv1")
    a.on_config(0, CONFIG)
    assert a.use_cached_config() is False
    assert not ipc.config_cache(tmp_path, "srv1").exists()
