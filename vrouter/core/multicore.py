"""Multi-core vrouter settings (pure): how many workers, on which CPUs, and who reads the NICs.

    {"mode": "rps" | "extended" | "kernel",        # who picks the worker of a packet
     "workers": [0, 1] | {0: 1, 1: 2},             # worker ids are the CPUs they are pinned to
     "dispatcher_cpu": null,                       # pin the designated-core process (null: let it float)
     ... any other field of vrouter.core.steering.SteeringConfig (fields, buckets, cpus, interfaces, ...)}

``rps`` and ``extended``: a designated-core process (the dispatcher) owns the NIC fds and hands each
packet to the worker its steering object names (extended: through a second-core relay process for
tunnel packets). ``kernel``: no dispatcher on the data path; every worker reads its own SO_REUSEPORT
tunnel sockets and its own queue of a multi-queue TAP, so the kernel picks the worker (from the
OUTER 4-tuple for tunnels, from the VM's transmit queue choice for TAPs). See docs/vrouter.md
"Multi-core" for what that costs the sharded flow table.
"""
from collections.abc import Collection

from .config import ConfigError
from .steering import SteeringConfig

MODES = ("rps", "extended", "kernel")


class MulticoreConfig:
    def __init__(self, mode: str, steering: SteeringConfig, dispatcher_cpu: int | None) -> None:
        self.mode, self.steering, self.dispatcher_cpu = mode, steering, dispatcher_cpu

    @property
    def workers(self) -> list[int]:
        return self.steering.workers

    @property
    def second_cores(self) -> list[int]:
        # Not None in extended mode: SteeringConfig.from_dict builds the second-core table for it.
        return self.steering.second_table.workers if self.mode == "extended" else []  # type: ignore[union-attr]

    @classmethod
    def from_dict(cls, d: object, available_cpus: Collection[int] | None = None) -> "MulticoreConfig":
        """``available_cpus``: the CPUs this process may run on (checked so pinning cannot fail later)."""
        if not isinstance(d, dict):
            raise ConfigError("steering: expected a mapping")
        d = dict(d)
        mode = d.get("mode", "rps")
        if mode not in MODES:
            raise ConfigError(f"steering.mode: {mode!r} is not one of {', '.join(MODES)}")
        dispatcher_cpu = d.pop("dispatcher_cpu", None)
        # Kernel mode steers nothing in user space; the table still names the workers (and their CPUs).
        steering = SteeringConfig.from_dict({**d, "mode": "off" if mode == "kernel" else mode})
        if mode == "kernel" and steering.interfaces:
            raise ConfigError("steering.interfaces: per-interface modes need a dispatcher (mode rps or extended)")
        cpus = set(steering.workers)
        if mode == "extended":
            cpus |= set(steering.second_table.workers)  # type: ignore[union-attr]  # as in second_cores
        if dispatcher_cpu is not None:
            if isinstance(dispatcher_cpu, bool) or not isinstance(dispatcher_cpu, int) or dispatcher_cpu < 0:
                raise ConfigError(f"steering.dispatcher_cpu: {dispatcher_cpu!r} is not a CPU number")
            cpus.add(dispatcher_cpu)
        if available_cpus is not None:
            missing = sorted(cpus - set(available_cpus))
            if missing:
                raise ConfigError(f"steering: CPU {missing[0]} is not available here "
                                  f"(available: {', '.join(map(str, sorted(available_cpus)))})")
        return cls(mode, steering, dispatcher_cpu)
