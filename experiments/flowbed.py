"""A testbed brought up with flow-table settings, as the flow experiments (flow_pressure, capacity)
need one: the settings go in through the topology's `flow:` section (issue 11's keys: capacity,
mode, vm_flow_limit, network_flow_limit, unreplied_timeout, held_limit, vm_held_limit, setup_rate,
burst_tokens; docs/topology-format.md), the topology actually used is kept for the results, and the
vrouters are asked what they were given.

Where topology files do not take a `flow:` section yet (a checkout before issue 11), a `mode` alone
is set at run time through the VNC (`testbed net mode`) and anything else is refused with one line.
"""
from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from experiments.common import ExperimentError, Progress
from testbed import overlay
from testbed.measure.loadrun import LoadError, with_flow
from testbed.overlay import OverlayError, forwarder_name
from testbed.runner import Testbed
from testbed.topology import Topology, TopologyError
from vrouter.io import introspect

MODE_WAIT = 5.0  # s for every vrouter to report a run-time mode change
QUIESCE_WAIT = 30.0
QUIESCE_STEP = 0.3


@dataclass
class FlowBed:
    """A running testbed and how its flow settings got in: "topology" (its `flow:` section),
    "run-time mode" (the mode set through the VNC: no `flow:` section in this checkout) or
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


def flow_topology(topology: Topology, flow: dict[str, Any]) -> tuple[Topology, str | None, str]:
    """(topology to bring up, mode to set at run time or None, how the settings get in)."""
    if not flow:
        return topology, None, "defaults"
    try:
        return with_flow(topology, flow), None, "topology"
    except TopologyError as exc:
        first = str(exc).splitlines()[0]
        if "flow: unknown key" not in first:
            raise ExperimentError(first) from None
        if set(flow) <= {"mode"}:
            return topology, flow["mode"], "run-time mode"
        raise ExperimentError(f"{topology.source}: topology files take no flow: section in this checkout (issue 11), "
                              f"which {', '.join(sorted(flow))} need") from None


def set_mode(tb: Testbed, servers: list[str], mode: str, timeout: float = MODE_WAIT) -> None:
    with overlay.admin(tb) as vnc:
        vnc.set_flow_mode(mode)
    deadline = time.monotonic() + timeout
    while {introspect.query(tb.path, s, "stats")["mode"] for s in servers} != {mode}:
        if time.monotonic() > deadline:
            raise ExperimentError(f"vrouters did not switch to {mode} mode within {timeout:.0f} s")
        time.sleep(0.05)


@contextmanager
def flow_testbed(topology: Topology, flow: dict[str, Any], prefix: str, run_root: str | None,
                 progress: Progress, servers: list[str]) -> Iterator[FlowBed]:
    """Bring up `topology` with `flow` settings, yield it, tear it down (also on Ctrl-C)."""
    topo, runtime_mode, applied = flow_topology(topology, flow)
    t0 = time.monotonic()
    tb = Testbed(topo, prefix=prefix, run_root=run_root, progress=lambda m: progress("    " + m)).start()
    try:
        if runtime_mode:
            set_mode(tb, servers, runtime_mode)
        progress(f"  testbed up in {time.monotonic() - t0:.1f} s, flow settings {flow or 'default'} ({applied})")
        yield FlowBed(tb, topo, dict(flow), applied)
    except (LoadError, introspect.IntrospectError, OverlayError) as exc:
        raise ExperimentError(str(exc)) from None
    finally:
        tb.stop()


