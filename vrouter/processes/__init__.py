"""The vrouter's processes: the single forwarder, the slow-path agent, and the multi-core
dispatcher with its workers. Each is a selector loop composed of `vrouter.io` shells around
`vrouter.core`; the per-packet path itself is one object, `datapath.Datapath`."""
