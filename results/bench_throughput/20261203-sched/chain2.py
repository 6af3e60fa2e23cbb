"""Per ping, the scheduler's view of the chain ping -> A(srv1) -> OVS -> B(srv3) -> OVS -> A -> ping."""
import re, statistics, subprocess, sys
pat = re.compile(r"^\s*(.+?)\s+(\d+)\s+\[(\d+)\]\s+([\d.]+):\s+sched:(\w+):\s+(.*)$")
def load(path):
    ev = []
    for line in subprocess.run(["perf", "script", "-i", path], capture_output=True, text=True).stdout.splitlines():
        m = pat.match(line)
        if m:
            comm, pid, cpu, t, name, rest = m.groups()
            ev.append((float(t) * 1e6, int(pid), int(cpu), name, dict(re.findall(r"(\w+)=(\S+)", rest)), comm))
    return ev
def analyse(path):
    ev = load(path)
    ping = {e[1] for e in ev if e[5] == "ping"}
    ovs = {e[1] for e in ev if e[5] == "ovs-vswitchd"}
    A = statistics.mode(int(e[4]["pid"]) for e in ev if e[1] in ping and e[3] == "sched_waking" and not e[4]["comm"].startswith("kworker"))
    names_A = next(e[4]["comm"] for e in ev if e[3] == "sched_waking" and int(e[4]["pid"]) == A)
    B = statistics.mode(int(e[4]["pid"]) for e in ev if e[1] in ovs and e[3] == "sched_waking" and int(e[4]["pid"]) != A and e[4]["comm"] not in ("rcu_preempt",) and (e[4]["comm"][:3] == "vr-") == (names_A[:3] == "vr-") and not e[4]["comm"].startswith(("kworker", "revalid", "handler", "urcu")))
    rows = []
    def find(i, pred, limit=4000):
        t0 = ev[i][0]
        for j in range(i + 1, len(ev)):
            if ev[j][0] - t0 > limit: return None
            if pred(ev[j]): return j
        return None
    cpu_of = lambda pid, i, j: sum(float(e[4]["runtime"]) / 1000 for e in ev[i:j + 1] if e[3] == "sched_stat_runtime" and int(e[4]["pid"]) == pid)
    for i, e in enumerate(ev):
        if not (e[1] in ping and e[3] == "sched_waking" and int(e[4]["pid"]) == A): continue
        t0 = e[0]
        j1 = find(i, lambda x: x[1] == A and x[3] == "sched_waking" and int(x[4]["pid"]) in ovs)      # A sends
        if j1 is None: continue
        j1o = find(j1, lambda x: x[3] == "sched_switch" and int(x[4]["prev_pid"]) == A)
        j2 = find(j1, lambda x: x[1] in ovs and x[3] == "sched_waking" and int(x[4]["pid"]) == B)      # OVS delivers to B
        if j2 is None or j1o is None: continue
        j3 = find(j2, lambda x: x[3] == "sched_switch" and int(x[4]["next_pid"]) == B)
        j3o = find(j2, lambda x: x[3] == "sched_switch" and int(x[4]["prev_pid"]) == B)
        j4 = find(j2, lambda x: x[1] in ovs and x[3] == "sched_waking" and int(x[4]["pid"]) == A)      # OVS delivers back to A
        if None in (j3o, j4): continue
        j5 = find(j4, lambda x: x[1] == A and x[3] == "sched_waking" and int(x[4]["pid"]) in ping)
        if j5 is None: continue
        j5o = find(j5, lambda x: x[3] == "sched_switch" and int(x[4]["prev_pid"]) == A)
        j6 = find(j5, lambda x: x[3] == "sched_switch" and int(x[4]["next_pid"]) in ping)
        if None in (j5o, j6): continue
        T = lambda j: ev[j][0]
        rows.append({
            "A: wake->send": T(j1) - t0, "A: after send": T(j1o) - T(j1), "A cpu out": cpu_of(A, i, j1o),
            "fabric out (send->B woken)": T(j2) - T(j1),
            "B: woken->on cpu": (T(j3) - T(j2)) if j3 is not None and j3 < j3o else None,
            "B: on cpu (wake->off)": T(j3o) - T(j2), "B cpu": cpu_of(B, j2, j3o), "B same cpu as ovs": ev[j3o][2] == ev[j2][2],
            "B off -> OVS delivers to A": T(j4) - T(j3o),
            "A: woken->tap write": T(j5) - T(j4), "A: after": T(j5o) - T(j5), "A cpu back": cpu_of(A, j4, j5o),
            "ping woken->on cpu": T(j6) - T(j5), "total": T(j6) - t0})
    print(f"{path}: {len(rows)} pings, A={A} B={B}")
    for k in rows[0]:
        xs = [r[k] for r in rows if r[k] is not None]
        if isinstance(xs[0], bool):
            print(f"  {k:30s} {sum(xs)} of {len(xs)} pings")
        else:
            print(f"  {k:30s} {statistics.median(xs):8.0f}  (n={len(xs)})")
for p in sys.argv[1:]:
    analyse(p)
