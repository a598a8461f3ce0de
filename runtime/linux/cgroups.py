"""Control groups behind one interface for cgroup v1, v2 and the hybrid layout (v1 controllers plus a cgroup2 mount).

A container's group is ``machines/<id>`` below the root of every hierarchy. Limits use Docker's HostConfig names so
the engine passes them through unchanged.
"""
from __future__ import annotations

import errno
import os
import signal
import time

V1_CONTROLLERS = ("memory", "cpu", "cpuacct", "pids", "freezer", "cpuset", "blkio", "devices")
CPU_PERIOD = 100000
# Docker's default device allowlist: create any node, use only the harmless ones (null, zero, full, random,
# urandom, tty, console, ptmx, ptys, tun).
DEFAULT_DEVICE_RULES = ("c *:* m", "b *:* m", "c 1:3 rwm", "c 1:5 rwm", "c 1:7 rwm", "c 1:8 rwm", "c 1:9 rwm",
                        "c 5:0 rwm", "c 5:1 rwm", "c 5:2 rwm", "c 136:* rwm", "c 10:200 rwm")


def _read(path: str) -> str:
    with open(path) as f:
        return f.read().strip()


def _write(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def _keyed(path: str) -> dict[str, int]:
    """Parses ``key value`` files such as memory.stat, cpu.stat, memory.events."""
    out: dict[str, int] = {}
    try:
        for line in _read(path).splitlines():
            key, _, value = line.partition(" ")
            try:
                out[key] = int(value)
            except ValueError:
                continue
    except OSError:
        pass
    return out


def _write_if_exists(path: str, value: str) -> None:
    if os.path.exists(path):
        _write(path, value)


def blkio_weight_file(blkio_dir: str) -> str | None:
    """The v1 weight file the I/O scheduler offers (CFQ's blkio.weight, BFQ's blkio.bfq.weight), if any."""
    for name in ("blkio.weight", "blkio.bfq.weight"):
        if os.path.exists(os.path.join(blkio_dir, name)):
            return os.path.join(blkio_dir, name)
    return None


def _int_or_none(path: str) -> int | None:
    try:
        text = _read(path)
    except OSError:
        return None
    return None if text == "max" else int(text)


def _mounts() -> list[tuple]:
    """(mountpoint, fstype, super options) of cgroup mounts from /proc/self/mountinfo."""
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields = right.split()
            if len(fields) >= 3 and fields[0] in ("cgroup", "cgroup2"):
                out.append((left.split()[4], fields[0], fields[2].split(",")))
    return out


class Cgroup:
    """One container's control group in every hierarchy the host mounts."""

    version = 0

    def __init__(self, name: str) -> None:
        self.name = name

    # Implemented by the subclasses.
    def create(self, resources: dict) -> None: raise NotImplementedError
    def apply(self, resources: dict) -> None: raise NotImplementedError
    def join_path(self) -> list[str]: raise NotImplementedError
    def procs(self) -> list[int]: raise NotImplementedError
    def set_frozen(self, frozen: bool) -> None: raise NotImplementedError
    def oom_kills(self) -> int: raise NotImplementedError
    def stats(self) -> dict: raise NotImplementedError
    def _dirs(self) -> list[str]: raise NotImplementedError

    def exists(self) -> bool:
        return any(os.path.isdir(d) for d in self._dirs())

    def join(self, pid: int = 0) -> None:
        """Moves ``pid`` (0: the caller) into the group in every hierarchy."""
        for procs in self.join_path():
            try:
                _write(procs, str(pid))
            except OSError as e:
                if e.errno != errno.ENOENT:
                    raise

    def kill_all(self, sig: int = signal.SIGKILL, timeout: float = 5.0) -> None:
        """Kills every process in the group and waits until it is empty (a frozen group is thawed so SIGKILL lands)."""
        deadline = time.monotonic() + timeout
        while True:
            pids = self.procs()
            if not pids or time.monotonic() > deadline:
                return
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            self.set_frozen(False)
            time.sleep(0.01)

    def try_remove(self) -> bool:
        """One quick attempt (no killing, no waiting); True when nothing is left."""
        for path in self._dirs():
            try:
                os.rmdir(path)
            except FileNotFoundError:
                pass
            except OSError:
                return False
        return True

    def remove(self) -> None:
        """Removes the group everywhere; kills stragglers first because a non-empty group cannot be removed."""
        self.kill_all()
        for path in self._dirs():
            for _ in range(100):
                try:
                    os.rmdir(path)
                    break
                except FileNotFoundError:
                    break
                except OSError as e:
                    if e.errno != errno.EBUSY:
                        break
                    time.sleep(0.01)


class CgroupV1(Cgroup):
    """Separate hierarchies per controller (also the hybrid layout: the cgroup2 mount there holds no controller we
    need, so processes are grouped by the v1 hierarchies)."""

    version = 1

    def __init__(self, name: str, roots: dict[str, str]) -> None:
        super().__init__(name)
        self.roots = roots

    def path(self, controller: str) -> str | None:
        root = self.roots.get(controller)
        return os.path.join(root, self.name) if root else None

    def _dirs(self) -> list[str]:
        return sorted({os.path.join(root, self.name) for root in self.roots.values()})

    def join_path(self) -> list[str]:
        return [os.path.join(d, "cgroup.procs") for d in self._dirs()]

    def create(self, resources: dict) -> None:
        for d in self._dirs():
            os.makedirs(d, exist_ok=True)
        cpuset = self.path("cpuset")
        if cpuset:  # a new cpuset group starts empty and refuses tasks until cpus/mems are copied from the parent
            for key in ("cpuset.cpus", "cpuset.mems"):
                target = os.path.join(cpuset, key)
                if not _read(target):
                    wanted = resources.get("CpusetCpus") if key == "cpuset.cpus" else resources.get("CpusetMems")
                    _write(target, wanted or self._inherited(cpuset, key))
        devices = self.path("devices")
        if devices and not resources.get("Privileged"):
            _write(os.path.join(devices, "devices.deny"), "a")
            for rule in DEFAULT_DEVICE_RULES + tuple(resources.get("DeviceRules") or ()):
                _write(os.path.join(devices, "devices.allow"), rule)
        self.apply(resources)

    def apply(self, resources: dict) -> None:
        """Sets every limit to what ``resources`` says (unset means unlimited), on a new or a running group."""
        mem = self.path("memory")
        if mem:
            memory = resources.get("Memory") or 0
            swap = resources.get("MemorySwap") or 0
            memsw = os.path.join(mem, "memory.memsw.limit_in_bytes")
            limit = os.path.join(mem, "memory.limit_in_bytes")
            total = -1 if swap == -1 or memory <= 0 else (swap if swap > 0 else 2 * memory)
            # memsw must stay >= the memory limit at every step: lift it, set the limit, then set it.
            if os.path.exists(memsw):
                _write(memsw, "-1")
                _write(limit, str(memory if memory > 0 else -1))
                _write(memsw, str(total))
            else:
                _write(limit, str(memory if memory > 0 else -1))
            _write_if_exists(os.path.join(mem, "memory.soft_limit_in_bytes"),
                             str(resources.get("MemoryReservation") or -1))
        cpu = self.path("cpu")
        if cpu:
            if resources.get("CpuShares"):
                _write(os.path.join(cpu, "cpu.shares"), str(resources["CpuShares"]))
            period, quota = cpu_quota(resources)
            quota_file = os.path.join(cpu, "cpu.cfs_quota_us")
            if os.path.exists(quota_file):
                _write(quota_file, "-1")  # a period shorter than the old quota would be refused
                _write(os.path.join(cpu, "cpu.cfs_period_us"), str(period))
                if quota > 0:
                    _write(quota_file, str(quota))
        cpuset = self.path("cpuset")
        if cpuset:
            for key, name in (("CpusetCpus", "cpuset.cpus"), ("CpusetMems", "cpuset.mems")):
                if resources.get(key):
                    _write(os.path.join(cpuset, name), resources[key])
        pids = self.path("pids")
        if pids:
            limit_pids = resources.get("PidsLimit") or 0
            _write(os.path.join(pids, "pids.max"), str(limit_pids) if limit_pids > 0 else "max")
        blkio = self.path("blkio")
        if blkio and resources.get("BlkioWeight"):
            weight = blkio_weight_file(blkio)
            if weight:
                _write(weight, str(resources["BlkioWeight"]))

    @staticmethod
    def _inherited(path: str, key: str) -> str:
        parent = os.path.dirname(path)
        value = _read(os.path.join(parent, key))
        if not value:
            value = CgroupV1._inherited(parent, key)
            _write(os.path.join(parent, key), value)
        return value

    def procs(self) -> list[int]:
        for controller in ("pids", "memory", "freezer", "cpu"):
            path = self.path(controller)
            if path:
                try:
                    return [int(p) for p in _read(os.path.join(path, "cgroup.procs")).split()]
                except FileNotFoundError:
                    return []
        return []

    def set_frozen(self, frozen: bool) -> None:
        path = self.path("freezer")
        if not path or not os.path.isdir(path):
            if frozen:
                raise OSError(errno.ENOTSUP, "the freezer cgroup controller is not mounted")
            return
        state = os.path.join(path, "freezer.state")
        want = "FROZEN" if frozen else "THAWED"
        for _ in range(1000):
            _write(state, want)
            if _read(state) == want:
                return
            time.sleep(0.002)
        raise OSError(errno.EBUSY, f"cgroup freezer did not reach {want}")

    def oom_kills(self) -> int:
        path = self.path("memory")
        if not path:
            return 0
        control = _keyed(os.path.join(path, "memory.oom_control"))
        if "oom_kill" in control:
            return control["oom_kill"]
        return 1 if (_int_or_none(os.path.join(path, "memory.failcnt")) or 0) > 0 else 0

    def stats(self) -> dict:
        mem, cpuacct, pids = self.path("memory"), self.path("cpuacct"), self.path("pids")
        ticks = os.sysconf("SC_CLK_TCK")
        acct = _keyed(os.path.join(cpuacct, "cpuacct.stat")) if cpuacct else {}
        limit = _int_or_none(os.path.join(mem, "memory.limit_in_bytes")) if mem else None
        return {
            "cpu_total": (_int_or_none(os.path.join(cpuacct, "cpuacct.usage")) or 0) if cpuacct else 0,
            "cpu_user": acct.get("user", 0) * 1000000000 // ticks,
            "cpu_system": acct.get("system", 0) * 1000000000 // ticks,
            "mem_usage": (_int_or_none(os.path.join(mem, "memory.usage_in_bytes")) or 0) if mem else 0,
            "mem_limit": limit,
            "mem_stats": _keyed(os.path.join(mem, "memory.stat")) if mem else {},
            "pids_current": (_int_or_none(os.path.join(pids, "pids.current")) or 0) if pids else len(self.procs()),
            "pids_limit": _int_or_none(os.path.join(pids, "pids.max")) if pids else None,
        }


class CgroupV2(Cgroup):
    """The unified hierarchy: one directory, controllers enabled through subtree_control on the way down."""

    version = 2

    def __init__(self, name: str, root: str) -> None:
        super().__init__(name)
        self.root = root
        self.dir = os.path.join(root, name)

    def _dirs(self) -> list[str]:
        return [self.dir]

    def join_path(self) -> list[str]:
        return [os.path.join(self.dir, "cgroup.procs")]

    def create(self, resources: dict) -> None:
        parent = self.root
        for part in self.name.split("/"):
            available = _read(os.path.join(parent, "cgroup.controllers")).split()
            wanted = [c for c in ("cpu", "memory", "pids", "cpuset", "io") if c in available]
            try:
                _write(os.path.join(parent, "cgroup.subtree_control"), " ".join("+" + c for c in wanted))
            except OSError:
                pass  # a parent that holds processes cannot delegate; limits below it are then unavailable
            parent = os.path.join(parent, part)
            os.makedirs(parent, exist_ok=True)
        self.apply(resources)

    def apply(self, resources: dict) -> None:
        """Sets every limit to what ``resources`` says (unset means unlimited); files of a controller the parent
        did not delegate are absent and skipped, as the limits then are."""
        memory = resources.get("Memory") or 0
        swap = resources.get("MemorySwap") or 0
        _write_if_exists(os.path.join(self.dir, "memory.max"), str(memory) if memory > 0 else "max")
        _write_if_exists(os.path.join(self.dir, "memory.swap.max"), "max" if swap == -1 or memory <= 0 else
                         str(max(swap - memory, 0) if swap > 0 else memory))
        reservation = resources.get("MemoryReservation") or 0
        _write_if_exists(os.path.join(self.dir, "memory.low"), str(reservation) if reservation > 0 else "0")
        if resources.get("CpuShares"):
            shares = resources["CpuShares"]
            _write_if_exists(os.path.join(self.dir, "cpu.weight"),
                             str(max(1, min(10000, 1 + ((shares - 2) * 9999) // 262142))))
        period, quota = cpu_quota(resources)
        _write_if_exists(os.path.join(self.dir, "cpu.max"), f'{quota if quota > 0 else "max"} {period}')
        for key, name in (("CpusetCpus", "cpuset.cpus"), ("CpusetMems", "cpuset.mems")):
            if resources.get(key):
                _write_if_exists(os.path.join(self.dir, name), resources[key])
        limit_pids = resources.get("PidsLimit") or 0
        _write_if_exists(os.path.join(self.dir, "pids.max"), str(limit_pids) if limit_pids > 0 else "max")
        weight = resources.get("BlkioWeight") or 0
        if weight:
            if os.path.exists(os.path.join(self.dir, "io.bfq.weight")):
                _write(os.path.join(self.dir, "io.bfq.weight"), str(weight))
            else:  # runc's conversion of the blkio range (10-1000) to io.weight's (1-10000)
                _write_if_exists(os.path.join(self.dir, "io.weight"), f"default {1 + (weight - 10) * 9999 // 990}")

    def procs(self) -> list[int]:
        try:
            return [int(p) for p in _read(os.path.join(self.dir, "cgroup.procs")).split()]
        except FileNotFoundError:
            return []

    def set_frozen(self, frozen: bool) -> None:
        freeze = os.path.join(self.dir, "cgroup.freeze")
        if not os.path.exists(freeze):
            if frozen:
                raise OSError(errno.ENOTSUP, "cgroup.freeze is not available")
            return
        _write(freeze, "1" if frozen else "0")
        for _ in range(1000):
            if _keyed(os.path.join(self.dir, "cgroup.events")).get("frozen") == int(frozen):
                return
            time.sleep(0.002)

    def oom_kills(self) -> int:
        return _keyed(os.path.join(self.dir, "memory.events")).get("oom_kill", 0)

    def stats(self) -> dict:
        cpu = _keyed(os.path.join(self.dir, "cpu.stat"))
        return {
            "cpu_total": cpu.get("usage_usec", 0) * 1000,
            "cpu_user": cpu.get("user_usec", 0) * 1000,
            "cpu_system": cpu.get("system_usec", 0) * 1000,
            "mem_usage": _int_or_none(os.path.join(self.dir, "memory.current")) or 0,
            "mem_limit": _int_or_none(os.path.join(self.dir, "memory.max")),
            "mem_stats": _keyed(os.path.join(self.dir, "memory.stat")),
            "pids_current": _int_or_none(os.path.join(self.dir, "pids.current")) or len(self.procs()),
            "pids_limit": _int_or_none(os.path.join(self.dir, "pids.max")),
        }


def cpu_quota(resources: dict) -> tuple:
    """(period, quota) in microseconds from NanoCpus or CpuQuota/CpuPeriod; quota 0 means unlimited."""
    period = resources.get("CpuPeriod") or CPU_PERIOD
    if resources.get("NanoCpus"):
        return period, resources["NanoCpus"] * period // 1000000000
    return period, resources.get("CpuQuota") or 0


_layout: tuple | None = None


def layout() -> tuple:
    """("v2", root) when the host has a pure cgroup2 hierarchy, else ("v1", {controller: mountpoint})."""
    global _layout
    if _layout is None:
        v1: dict[str, str] = {}
        v2 = None
        for mountpoint, fstype, options in _mounts():
            if fstype == "cgroup2":
                v2 = v2 or mountpoint
                continue
            for controller in V1_CONTROLLERS:
                if controller in options:
                    v1.setdefault(controller, mountpoint)
        if v1:
            _layout = ("v1", v1)
        elif v2:
            _layout = ("v2", v2)
        else:
            _layout = ("none", {})
    return _layout


def supports_swap_limit() -> bool:
    """Whether memory+swap can be limited (v1 needs swap accounting; v2 the memory controller)."""
    kind, where = layout()
    if kind == "v1":
        return "memory" in where and os.path.exists(os.path.join(where["memory"], "memory.memsw.limit_in_bytes"))
    return kind == "v2" and "memory" in _root_controllers(where)


def _root_controllers(root: str) -> list[str]:
    try:
        return _read(os.path.join(root, "cgroup.controllers")).split()
    except OSError:
        return []


def cpuset_available() -> tuple:
    """(cpus, memory nodes) containers may be pinned to, as lists like ``0-3`` (moby's sysinfo.Cpus/Mems)."""
    kind, where = layout()
    directory, suffix = (where.get("cpuset"), "") if kind == "v1" else (where or None, ".effective")
    if directory:
        try:
            return (_read(os.path.join(directory, "cpuset.cpus" + suffix)),
                    _read(os.path.join(directory, "cpuset.mems" + suffix)))
        except OSError:
            pass
    return ",".join(str(cpu) for cpu in sorted(os.sched_getaffinity(0))), "0"


def supports_blkio_weight() -> bool:
    """Whether a block I/O weight can be set (docker info's "No blkio weight support" warning otherwise)."""
    kind, where = layout()
    if kind == "v1":
        return "blkio" in where and blkio_weight_file(where["blkio"]) is not None
    return kind == "v2" and "io" in _root_controllers(where)


def controls_devices() -> bool:
    """Whether device access can be limited (the v1 devices controller; v2 would need eBPF, not done here)."""
    kind, where = layout()
    return kind == "v1" and "devices" in where


def version() -> int:
    kind = layout()[0]
    return 2 if kind == "v2" else (1 if kind == "v1" else 0)


def open_cgroup(name: str) -> Cgroup:
    kind, where = layout()
    if kind == "v2":
        return CgroupV2(name, where)
    return CgroupV1(name, where if kind == "v1" else {})
