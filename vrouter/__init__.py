"""Userspace vrouter with a proactive flow table.

- ``core/``: the pure core (bytes + clock in, decisions + bytes out; docs/vrouter-core.md).
- ``io/``: TAP, tunnel and IPC sockets, the introspection and control-channel clients.
- ``processes/``: the forwarder, the agent (slow path), the multi-core dispatcher and workers.
- ``tools/``: benches, the pcap replay, operator tables.

The map of the packet's way: docs/architecture.md. The old entry points ``python -m vrouter.bench``,
``vrouter.bench_steering``, ``vrouter.bench_workers``, ``vrouter.forwarder``, ``vrouter.agent`` and
``vrouter.rps_dispatch`` are aliases of their modules in the subpackages.
"""
