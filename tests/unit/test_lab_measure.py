"""`testbed lab measure`'s pure parts: the memory limit's syntax, what it reads from `lab start` and
`lab check`, where the memory cgroup controller is (v2 first, else v1), and the table."""
from pathlib import Path

import pytest

from testbed.cmd_lab_measure import Row, checks_passed, memory_mount, parse_size, table, up_seconds


def test_sizes():
    assert parse_size("4G") == 4 << 30 and parse_size("4096M") == 4 << 30 and parse_size("512MiB") == 512 << 20
    assert parse_size("1073741824") == 1 << 30
    for bad in ("", "4T", "-1G", "0", "four"):
        with pytest.raises(ValueError, match="not a memory size"):
            parse_size(bad)


def test_what_it_reads_from_the_lab_commands():
    assert up_seconds("  lab setup: testbed fault link leaf1-spine1 down\nlab 1's testbed is up in 4.0 s\n") == 4.0
    assert up_seconds("lab 6 started: ...") is None
    assert checks_passed("  FAIL  x\n2 of 6 checks pass: 4 to fix\n") == (2, 6)
    assert checks_passed("all 5 checks pass\n") == (5, 5)
    assert checks_passed("error: lab 8's check works on its running testbed") is None


SELF_V1 = "9:name=systemd:/\n4:memory:/process_api/abc\n0::/\n"
MOUNTS = ("cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0\n"
          "cgroup /sys/fs/cgroup/memory cgroup rw,relatime,memory 0 0\n"
          "cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0\n")


def test_the_memory_controller_v1_on_a_hybrid_host_and_v2_where_it_has_memory():
    assert memory_mount(SELF_V1, MOUNTS, "") == (1, Path("/sys/fs/cgroup/memory"), "/process_api/abc")
    v2 = "cgroup2 /sys/fs/cgroup cgroup2 rw,nsdelegate 0 0\n"
    assert memory_mount("0::/user.slice/x\n", v2, "cpuset cpu io memory pids") == (2, Path("/sys/fs/cgroup"),
                                                                                   "/user.slice/x")
    assert memory_mount("0::/\n", v2, "cpu pids") is None


def test_the_table_marks_a_slow_bring_up_and_says_what_it_measured():
    rows = [Row(1, "01-fabric", up=4.0, start=5.1, check=8.4, checks=(0, 3), peak=265 << 20, limit_hits=0),
            Row(9, "09-slow", up=16.2, start=17.0, check=1.0, checks=(1, 2), peak=1 << 30, limit_hits=3),
            Row(10, "10-broken", error="start failed: boom")]
    lines = table(rows, 15.0, 4 << 30)
    assert lines[0].split()[:3] == ["lab", "up", "s"] and lines[0].endswith("under 15 s")
    assert lines[1].split() == ["01-fabric", "4.0", "5.1", "8.4", "0/3", "265", "0", "yes"]
    assert lines[2].split()[-1] == "NO" and "1024" in lines[2]
    assert lines[3].endswith("-  (start failed: boom)")
    assert "not ovs-vswitchd" in lines[-1] and "4 GiB" in lines[-1]
