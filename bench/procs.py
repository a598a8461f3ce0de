"""Process memory and the disk's own copy speed: the yardsticks the API and image benchmarks report against."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path


def _status(pid: int) -> dict[str, str]:
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    return fields


def _pss_kib(pid: int) -> int:
    """Proportional set size: pages shared with other processes (a forked monitor's with the daemon) count in part."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def daemon_memory(daemon_pid: int, marker: str) -> dict[str, float]:
    """RSS and PSS in MiB of a daemon and of its helpers outside any container.

    Helpers are the daemon's descendants and every process whose command line names ``marker`` (the bench's own
    folder): our per-container monitors, or containerd and its shims, which daemonise away from dockerd. Processes in
    another PID namespace are container payloads and are left out.
    """
    own_ns = os.readlink("/proc/self/ns/pid")
    parents: dict[int, int] = {}
    rss: dict[int, int] = {}
    named: set[int] = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        try:
            if os.readlink(f"/proc/{pid}/ns/pid") != own_ns:
                continue
            status = _status(pid)
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read().decode(errors="replace")
        except OSError:
            continue
        parents[pid] = int(status["PPid"])
        rss[pid] = int(status.get("VmRSS", "0 kB").split()[0])
        if marker in cmdline:
            named.add(pid)

    def descends(pid: int) -> bool:
        while pid > 1:
            if pid == daemon_pid:
                return True
            pid = parents.get(pid, 0)
        return False

    helpers = [pid for pid in rss if pid != daemon_pid and (pid in named or descends(pid))]
    helper_kib = [rss[pid] for pid in helpers]
    pss_kib = sum(_pss_kib(pid) for pid in [daemon_pid, *helpers])
    return {"daemon_mib": rss.get(daemon_pid, 0) / 1024, "helpers": len(helpers),
            "helpers_mib": sum(helper_kib) / 1024,
            "total_mib": (rss.get(daemon_pid, 0) + sum(helper_kib)) / 1024, "total_pss_mib": pss_kib / 1024}


def big_file(path: Path, size_mb: int) -> Path:
    """A file of ``size_mb`` MiB, half random (incompressible) and half zeros, written once per run."""
    chunk = 1 << 20
    with open(path, "wb") as f:
        for n in range(size_mb):
            f.write(os.urandom(chunk) if n % 2 else bytes(chunk))
    return path


def copy_floor(source: Path, work: Path) -> dict[str, float]:
    """Seconds for ``cp`` of a file and for ``tar`` out and back in, on the same disk, flushed to it."""
    target = work / "floor"
    target.mkdir()
    try:
        started = time.perf_counter()
        subprocess.run(["cp", str(source), str(target / "copy")], check=True)
        os.sync()
        copy = time.perf_counter() - started
        archive = work / "floor.tar"
        started = time.perf_counter()
        subprocess.run(["tar", "-cf", str(archive), "-C", str(source.parent), source.name], check=True)
        subprocess.run(["tar", "-xf", str(archive), "-C", str(target)], check=True)
        os.sync()
        tar = time.perf_counter() - started
        archive.unlink()
    finally:
        shutil.rmtree(target)
    return {"cp_s": copy, "tar_s": tar}
