"""The vrouter's pure core: bytes and an injected clock in, decisions and bytes out.

Nothing here does I/O (no sockets, files, processes, clocks or randomness of its own):
tests/unit/test_core_purity.py checks every module of this package. Header codecs (``codec/``),
the one overlay schema (``schema``: topology files, the VNC and the vrouter config check with it),
the configuration (``config``), routing instances (``fib``, ``vrf``), the flow table and its keys
(``flowtable``, ``flowkey``), policy (``policy``), the slow-path decision (``slowpath``), the
per-packet ``pipeline``, GRO/GSO (``gro``, ``gso``, ``offload``), and the pure pieces of the
multi-core design (``steerhash``, ``buckets``, ``steering``, ``fairness``, ``multicore``,
``rps_route``, ``rps_channel``).
"""
