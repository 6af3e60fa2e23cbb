"""A testbed brought up with flow-table settings, as the flow experiments (flow_pressure, capacity)
need one: the settings go in through the topology's `flow:` section (issue 11's keys: capacity,
mode, vm_flow_limit, network_flow_limit, unreplied_timeout, held_limit, vm_held_limit, setup_rate,
burst_tokens; docs/topology-format.md), the topology actually used is kept for the results, and the
vrouters are asked what they were given. A setting the topology refuses is a one-line
ExperimentError.
"""
from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from experiments.common import ExperimentError, Progress
from testbed.measure.loadrun import LoadError, with_flow
from testbed.overlay import forwarder_name
from testbed.runner import Testbed
from testbed.topology import Topology, TopologyError
from vrouter.io import introspect

QUIESCE_WAIT = 30.0
QUIESCE_STEP = 0.3


@dataclass
class FlowBed:
    """A running testbed and how its flow settings got in: "topology" (its `flow:` section) or
    "defaults" (no settings given)."""

    tb: Testbed
    topology: Topology
    flow: dict[str, Any]
    applied: str

    def host(self, name: str) -> Any:
        return self.tb.host(name)

    def forwarder_pids(self, server: str) -> list[int]:
        pid = self.tb.supervisor.pid(forwarder_name(server)) if self.tb.supervisor else None
        return [pid] if pid else []

    def reset(self, servers: list[str]) -> None:
        """Empty the servers' flow tables and zero their counters (introspection "reset")."""
        for s in servers:
            introspect.query(self.tb.path, s, "reset")

    def quiesce(self, servers: list[str], timeout: float = QUIESCE_WAIT) -> bool:
        """Wait until the servers' slow paths are idle: their agents' decision counts and the
        forwarders' punt counts unchanged over QUIESCE_STEP (a flood leaves a backlog of punts that
        would spill into whatever is measured next). False if they never were within `timeout`."""
        def counts() -> list[tuple[Any, Any]]:
            out = []
            for s in servers:
                st = self.stats(s)
                out.append((st.get("agent", {}).get("decisions"), st.get("forwarder", {}).get("punts")))
            return out
        deadline = time.monotonic() + timeout
        last = counts()
        while time.monotonic() < deadline:
            time.sleep(QUIESCE_STEP)
            now = counts()
            if now == last:
                return True
            last = now
        return False

    def stats(self, server: str) -> dict[str, Any]:
        return introspect.query(self.tb.path, server, "stats")

    def pushed_flow(self, server: str) -> dict[str, Any]:
        """The `flow` section of the vrouter config the server's forwarder was last given."""
        return dict((introspect.query(self.tb.path, server, "config").get("config") or {}).get("flow") or {})


def flow_topology(topology: Topology, flow: dict[str, Any]) -> tuple[Topology, str]:
    """(topology to bring up, how the settings get in: "topology" or "defaults")."""
    if not flow:
        return topology, "defaults"
    try:
        return with_flow(topology, flow), "topology"
    except TopologyError as exc:
        raise ExperimentError(str(exc).splitlines()[0]) from None


@contextmanager
def flow_testbed(topology: Topology, flow: dict[str, Any], prefix: str, run_root: str | None,
                 progress: Progress) -> Iterator[FlowBed]:
    """Bring up `topology` with `flow` settings, yield it, tear it down (also on Ctrl-C)."""
    topo, applied = flow_topology(topology, flow)
    t0 = time.monotonic()
    tb = Testbed(topo, prefix=prefix, run_root=run_root, progress=lambda m: progress("    " + m)).start()
    try:
        progress(f"  testbed up in {time.monotonic() - t0:.1f} s, flow settings {flow or 'default'} ({applied})")
        yield FlowBed(tb, topo, dict(flow), applied)
    except (LoadError, introspect.IntrospectError) as exc:
        raise ExperimentError(str(exc)) from None
    finally:
        tb.stop()


