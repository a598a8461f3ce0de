"""The cgroup layer on this host's layout, and the cgroup2 code path on the hybrid ``unified`` mount (which has
no controllers here, but freezing, membership and removal work the same as on a pure v2 host)."""
from __future__ import annotations

import os
import signal
import time

import pytest

from runtime.linux import cgroups

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
