import re, statistics, sys, collections
pat = re.compile(r"^\s*(.+?)\s+(\d+)\s+\[(\d+)\]\s+([\d.]+):\s+raw_syscalls:(sys_enter|sys_exit):\s+NR (\d+) (.*)$")
NR = {0: "read", 1: "write", 44: "sendto", 45: "recvfrom", 46: "sendmsg", 47: "recvmsg", 232: "epoll_wait", 281: "epoll_pwait", 20: "writev", 19: "readv"}
f = sys.argv[1]; want = set(sys.argv[2:])
open_ = {}; dur = collections.defaultdict(list); args = collections.Counter()
for line in open(f):
    m = pat.match(line)
    if not m or m.group(1) not in want: continue
    comm, pid, cpu, t, kind, nr, rest = m.groups()
    key = (comm, int(pid), int(nr))
    if kind == "sys_enter":
        open_[int(pid)] = (int(nr), float(t)); 
        if int(nr) in (232, 281): args[(comm, rest.split(",")[2:4].__str__())] += 1
    else:
        o = open_.pop(int(pid), None)
        if o and o[0] == int(nr):
            dur[(comm, NR.get(int(nr), nr), "ok" if not rest.strip().endswith("-11") else "EAGAIN")].append((float(t) - o[1]) * 1e6)
for k, v in sorted(dur.items(), key=lambda kv: kv[0]):
    if len(v) > 20 and k[1] != "epoll_wait": print(k, len(v), round(statistics.median(v), 1))
print(args.most_common(6))
