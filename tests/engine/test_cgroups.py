"""The cgroup layer on this host's layout, and the cgroup2 code path on the hybrid ``unified`` mount (which has
no controllers here, but freezing, membership and removal work the same as on a pure v2 host)."""
from __future__ import annotations

import os
import signal
import time

import pytest

from machines.runtime.linux import cgroups

UNIFIED = "/sys/fs/cgroup/unified"


def _ticker() -> tuple:
    """A child writing a byte every 10 ms: whether it runs shows whether it is frozen."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        for _ in range(3000):
            os.write(w, b".")
            time.sleep(0.01)
        os._exit(0)
    os.close(w)
    os.set_blocking(r, False)
    return pid, r


def _ticks(fd: int, wait: float) -> int:
    time.sleep(wait)
    try:
        return len(os.read(fd, 65536))
    except BlockingIOError:
        return 0


@pytest.mark.parametrize("kind", ["host", "v2"])
def test_group_membership_freeze_kill_and_removal(kind: str) -> None:
    name = f"machines/test-{os.getpid()}-{kind}"
    if kind == "v2":
        if not os.path.exists(os.path.join(UNIFIED, "cgroup.controllers")):
            pytest.fail("expected the hybrid cgroup2 mount at " + UNIFIED)
        group = cgroups.CgroupV2(name, UNIFIED)
    else:
        group = cgroups.open_cgroup(name)
    group.create({"PidsLimit": 50} if kind == "host" else {})
    pid, ticks = _ticker()
    try:
        group.join(pid)
        assert group.procs() == [pid]
        group.set_frozen(True)
        _ticks(ticks, 0.05)  # drain what was written before the freeze landed
        assert _ticks(ticks, 0.2) == 0
        group.set_frozen(False)
        assert _ticks(ticks, 0.2) > 0
        group.kill_all()
        _, status = os.waitpid(pid, 0)
        assert os.WTERMSIG(status) == signal.SIGKILL
        assert group.procs() == []
    finally:
        os.close(ticks)
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
        group.remove()
    assert not group.exists()


def test_live_update_on_this_host_layout() -> None:
    """``apply`` on a group holding a process: raising and lowering limits in either order is accepted by the
    kernel (memory+swap must stay above memory at every step), and clearing them gives "unlimited" back."""
    name = f"machines/test-apply-{os.getpid()}"
    group = cgroups.open_cgroup(name)
    group.create({"Memory": 64 << 20, "MemorySwap": 128 << 20, "PidsLimit": 50})
    pid, ticks = _ticker()
    try:
        group.join(pid)
        for resources in ({"Memory": 256 << 20, "MemorySwap": 512 << 20, "NanoCpus": 500_000_000, "PidsLimit": 9},
                          {"Memory": 32 << 20, "MemorySwap": 40 << 20, "CpuQuota": 20000, "CpuPeriod": 50000},
                          {"Memory": 0, "MemorySwap": 0, "PidsLimit": 0}):
            group.apply(resources)
            stats = group.stats()
            memory = resources["Memory"]
            assert stats["mem_limit"] == memory or (memory == 0 and (stats["mem_limit"] or 0) > 1 << 50)
            assert stats["pids_limit"] == (resources.get("PidsLimit") or None)
        assert _ticks(ticks, 0.05) > 0  # the process ran through all of it
    finally:
        os.close(ticks)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        group.remove()


def test_v2_limit_files_written_as_the_kernel_reads_them(tmp_path) -> None:
    """This host's cgroup2 mount has no controllers, so the v2 interface files are checked for their format in a
    directory: the values runc writes for the same HostConfig."""
    group = cgroups.CgroupV2("c", str(tmp_path))
    os.makedirs(group.dir)
    files = ("memory.max", "memory.swap.max", "memory.low", "cpu.max", "cpu.weight", "pids.max", "cpuset.cpus",
             "io.weight")
    for item in files:
        (tmp_path / "c" / item).write_text("")
    group.apply({"Memory": 100 << 20, "MemorySwap": 300 << 20, "NanoCpus": 1_500_000_000, "CpuShares": 512,
                 "PidsLimit": 20, "CpusetCpus": "0", "BlkioWeight": 500})
    written = {item: (tmp_path / "c" / item).read_text() for item in files}
    assert written == {"memory.max": str(100 << 20), "memory.swap.max": str(200 << 20), "memory.low": "0",
                       "cpu.max": "150000 100000", "cpu.weight": "20", "pids.max": "20", "cpuset.cpus": "0",
                       "io.weight": "default 4950"}
    group.apply({"Memory": 0, "MemorySwap": 0, "PidsLimit": 0})
    assert [(tmp_path / "c" / item).read_text() for item in ("memory.max", "memory.swap.max", "cpu.max",
                                                             "pids.max")] == ["max", "max", "max 100000", "max"]
