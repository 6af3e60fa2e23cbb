"""Offline tools on the vrouter core: the benches (`python -m vrouter.bench`), the pcap replay
(`python -m vrouter replay`) and the operator tables printed by `testbed vr`."""
