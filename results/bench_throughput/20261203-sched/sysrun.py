import re, statistics, sys, collections
pat = re.compile(r"^\s*(.+?)\s+(\d+)\s+\[(\d+)\]\s+([\d.]+):\s+(\S+):\s+(.*)$")
f = sys.argv[1]
ev = []
for line in open(f):
    m = pat.match(line)
    if m and (m.group(1) in ("ping", "ovs-vswitchd", "python", "vr-srv1-fwd", "vr-srv3-fwd") or "sched_" in m.group(5)):
        ev.append((m.group(1), int(m.group(2)), float(m.group(4))*1e6, m.group(5), m.group(6)))
pidof = lambda s: int(re.search(r" pid=(\d+)", " " + s).group(1))
ping = {e[1] for e in ev if e[0] == "ping"}
ovs = {e[1] for e in ev if e[0] == "ovs-vswitchd"}
names = {e[1]: e[0] for e in ev}
woken_by_ping = collections.Counter(pidof(e[4]) for e in ev if e[1] in ping and e[3] == "sched:sched_waking")
A = next(p for p, _ in woken_by_ping.most_common() if names.get(p) in ("python", "vr-srv1-fwd"))
woken_by_ovs = collections.Counter(pidof(e[4]) for e in ev if e[1] in ovs and e[3] == "sched:sched_waking")
B = next(p for p, _ in woken_by_ovs.most_common() if p != A and names.get(p) == ("python" if names[A] == "python" else "vr-srv3-fwd"))
print(f, "A", A, names[A], "B", B, names[B])
NR = {0: "read", 1: "write", 44: "sendto", 45: "recvfrom", 46: "sendmsg", 47: "recvmsg", 232: "epoll_wait", 281: "epoll_pwait", 299: "recvmmsg", 307: "sendmmsg", 16: "ioctl", 20: "writev", 19: "readv", 228: "clock_gettime"}
runs, cur = [], None
for e in ev:
    if e[3] == "sched:sched_waking" and e[1] in ovs and pidof(e[4]) == B:
        cur = [e[2], []]
    elif cur is not None and e[1] == B and e[3].startswith("raw_syscalls"):
        nr = int(re.search(r"NR (\d+)", e[4]).group(1))
        ret = re.search(r"= (-?\d+)", e[4])
        cur[1].append((round(e[2] - cur[0]), "in" if "enter" in e[3] else "out", NR.get(nr, nr), ret.group(1) if ret else ""))
    elif cur is not None and e[3] == "sched:sched_switch" and f"prev_pid={B} " in e[4] + " ":
        runs.append((round(e[2] - cur[0]), cur[1])); cur = None
runs = [r for r in runs if len(r[1]) > 6]
print("runs", len(runs), "median on-cpu", statistics.median(r[0] for r in runs))
for r in runs[10:13]:
    print(r[0], " ".join(f"{t}:{k}:{nr}{'='+ret if ret else ''}" for t, k, nr, ret in r[1]))
# typical signature
sig = collections.Counter(tuple((k, nr) for _, k, nr, _ in r[1]) for r in runs).most_common(1)[0][0]
sel = [r for r in runs if tuple((k, nr) for _, k, nr, _ in r[1]) == sig]
print("signature n", len(sel))
for i, (k, nr) in enumerate(sig):
    print(f"  {k:3s} {nr:12s} {statistics.median(r[1][i][0] for r in sel):6.0f}")
print("  end        ", statistics.median(r[0] for r in sel))
