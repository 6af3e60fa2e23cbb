"""The slow-path channel between a forwarder (or a multi-core worker) and its agent, without root:
what the agent counts."""
from vrouter.processes.agent import Agent

REQUEST = {"vrf": 100, "proto": 17, "src": 0xC0A8010B, "dst": 0xC0A8010C, "sport": 4000, "dport": 53,
           "ingress": "vif", "port": "tr-red1", "tcp_flags": 0, "length": 29}


def test_agent_without_a_configuration_decides_nothing_and_counts_no_decision(tmp_path):
    """`decisions` counts SlowPath.decide calls (what the experiments compare); a punt that arrives
    before the first configuration is not one. The old code counted it in both counters."""
    agent = Agent(str(tmp_path), "srv1")
    agent._handle({"t": "punt", "id": 1, "request": REQUEST})
    assert agent.counters["decisions"] == 0 and agent.counters["punts_unconfigured"] == 1
