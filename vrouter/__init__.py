"""Userspace vrouter with a proactive flow table.

Pure core (bytes + clock in, actions out; see docs/vrouter-core.md): ``codec/``, ``config``, ``actions``,
``drops``, ``flowkey``, ``fib``, ``policy``, ``vrf``, ``flowtable``, ``slowpath``, ``pipeline``.
Offline tools on top of it: ``python -m vrouter replay`` and ``python -m vrouter.bench``.
The I/O shells (TAP, tunnel sockets, forwarder and agent processes, introspection) call the core.
"""
