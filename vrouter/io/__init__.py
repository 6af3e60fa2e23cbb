"""The vrouter's thin I/O shells: TAP devices and the VM interface, tunnel sockets, the local IPC
sockets, the introspection protocol and the control-channel client. No decisions are taken here:
they hand bytes to and from `vrouter.core`, driven by `vrouter.processes`."""
