"""Folders of this computer inside a machine, live: ``machines mount NAME ./src:/src [--ro]``.

A ``local`` machine runs on this computer in its own mount namespace (``drivers.nshost``). mount(2) cannot bind
across namespaces, so a helper process clones the folder as a detached mount here (``open_tree``), enters the
host's mount namespace through its PID 1 (its sshd) and attaches the clone there (``move_mount``), as LXD does
for live mounts; read-only is ``mount_setattr`` on the clone. Edits on either side are the same files; ``docker run -v /src:/app`` on the machine sees them.

A remote machine gets reverse sshfs (``machines.reversefs``): sshfs on the host, in passive mode, reads an SFTP
server that this computer runs on the same pinned SSH connection, in a detached process per mount. Without sshfs on
the host the error names the package to install.

Mounts are recorded in the machine's record (``"mounts"``) and made again after ``machines start``/``restart``
(``restore``): a stopped host loses its mount namespace.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import hashlib
import json
import os
import posixpath
import shlex
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Protocol

from machines import detached
from machines.errors import MachinesError, StateError, UsageError


class Machine(Protocol):
    """What mounts need of ``machines.machine.Machine`` (which calls ``restore`` after a start)."""

    name: str
    dir: Path
    record: dict[str, Any]

    @property
    def driver_name(self) -> str: ...

    def save(self) -> None: ...

    def ssh(self) -> Any: ...

RECORD_KEY = "mounts"
STATE_DIR = "mounts"  # <machine dir>/mounts/<target hash>.json: the reverse sshfs process of a remote mount
# Where a mount would hide what the host needs to run (or what the runtime keeps).
FORBIDDEN = ("/", "/proc", "/sys", "/dev", "/run", "/etc", "/usr", "/bin", "/sbin", "/lib", "/lib64", "/var",
             "/boot", "/data")


@dataclasses.dataclass(frozen=True)
class Mount:
    source: str  # absolute, symlinks resolved, on this computer
    target: str  # absolute, normalised, in the machine
    readonly: bool = False

    def as_record(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def describe(self) -> str:
        return f"{self.source}:{self.target}" + (":ro" if self.readonly else "")


def parse(spec: str, *, readonly: bool = False) -> Mount:
    """``SOURCE:TARGET`` (``SOURCE:TARGET:ro``): an existing folder here, an absolute path in the machine."""
    source, separator, target = spec.partition(":")
    target, _, mode = target.partition(":")
    if not separator or not source or not target or mode not in ("", "ro", "rw"):
        raise UsageError(f"invalid mount {spec!r}: expected SOURCE:TARGET[:ro], e.g. ./src:/src")
    folder = Path(source).expanduser().resolve()
    if not folder.is_dir():
        raise UsageError(f"invalid mount {spec!r}: {folder} is not a folder on this computer")
    return Mount(str(folder), _target(target), readonly or mode == "ro")


def _target(text: str) -> str:
    if not text.startswith("/") or any(part == ".." for part in text.split("/")) or "\0" in text:
        raise UsageError(f"invalid mount target {text!r}: an absolute path without '..' in the machine")
    target = posixpath.normpath(text)
    if target.startswith("//"):
        target = target[1:]
    if target in FORBIDDEN or target.startswith(("/proc/", "/sys/", "/dev/")):
        raise UsageError(f"refusing to mount over {target}: the machine needs it; choose a folder such as /src")
    return target


def recorded(machine: Machine) -> list[Mount]:
    return [Mount(**entry) for entry in machine.record.get(RECORD_KEY) or []]


def _save(machine: Machine, mounts: list[Mount]) -> None:
    machine.record[RECORD_KEY] = [mount.as_record() for mount in mounts]
    machine.save()


def _host_pid(machine: Machine) -> int:
    """The local host's PID 1 (its sshd), whose mount namespace is the machine's."""
    from machines.drivers.nshost import IsolatedHost

    pid = IsolatedHost(str(machine.dir / "host")).pid
    if pid is None:
        raise StateError(f"machine {machine.name} is not running: start it first")
    return pid


def _in_host(pid: int, script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["nsenter", "-t", str(pid), "-m", "--", "sh", "-c", script], capture_output=True,
                          text=True, timeout=60)


def _bind(machine: Machine, mount: Mount) -> None:
    pid = _host_pid(machine)
    # A fresh process: setns into a mount namespace needs a single-threaded caller.
    command = [sys.executable, "-m", "machines.mounts", str(pid), mount.source, mount.target]
    result = subprocess.run([*command, *(["--ro"] if mount.readonly else [])], capture_output=True, text=True,
                            timeout=60)
    if result.returncode != 0:
        detail = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise StateError(f"cannot mount {mount.source} at {mount.target} in {machine.name}: {detail}")


def _is_local(machine: Machine) -> bool:
    return machine.driver_name == "local"


def _is_mounted(machine: Machine, target: str) -> bool:
    if not _is_local(machine):
        return bool(machine.ssh().run(f"mountpoint -q {shlex.quote(target)}", check=False).ok)
    result = _in_host(_host_pid(machine), f"mountpoint -q {shlex.quote(target)}")
    return result.returncode == 0


def _state(machine: Machine, target: str) -> Path:
    return machine.dir / STATE_DIR / (hashlib.sha256(target.encode()).hexdigest()[:16] + ".json")


def _attach(machine: Machine, mount: Mount) -> None:
    if _is_local(machine):
        _bind(machine, mount)
    else:
        _attach_remote(machine, mount)


def _attach_remote(machine: Machine, mount: Mount) -> None:
    """Start the reverse sshfs process for ``mount`` (``machines.reversefs``) once the host is ready for it."""
    connection = machine.ssh()
    if not connection.run("sshfs --version >/dev/null 2>&1", check=False).ok:
        raise StateError(f"mounting a folder into {machine.name} needs sshfs on the host: install the package "
                         "sshfs there (e.g. apt-get install sshfs)")
    target = shlex.quote(mount.target)
    prepared = connection.run(connection.wrap_sudo(
        f'mkdir -p {target} && [ ! -L {target} ] && [ "$(realpath {target})" = {target} ]'), check=False)
    if not prepared.ok:
        raise StateError(f"cannot mount at {mount.target} in {machine.name}: it is (or lies under) a symlink, or "
                         "cannot be made")
    state = _state(machine, mount.target)
    arguments = ["--storage-path", str(machine.dir.parent.parent), "--state", str(state),
                 *(["--ro"] if mount.readonly else []), machine.name, mount.source, mount.target]
    detached.start("machines.reversefs", arguments, state,
                   failure=f"cannot mount {mount.source} at {mount.target} in {machine.name}")


def _detach(machine: Machine, target: str) -> None:
    if _is_local(machine):
        result = _in_host(_host_pid(machine), f"umount {shlex.quote(target)}")
        if result.returncode != 0:
            raise StateError(f"cannot unmount {target} in {machine.name}: {result.stderr.strip()}")
        return
    connection = machine.ssh()
    result = connection.run(connection.wrap_sudo(f"umount {shlex.quote(target)}"), check=False)
    if not result.ok:
        raise StateError(f"cannot unmount {target} in {machine.name}: {result.stderr.strip()}")
    _stop_server(machine, target)


def _stop_server(machine: Machine, target: str) -> None:
    """End the reverse sshfs process of ``target`` (it ends by itself once sshfs has gone)."""
    state = _state(machine, target)
    try:
        pid = int(json.loads(state.read_text())["pid"])
    except (OSError, ValueError, KeyError):
        return
    with contextlib.suppress(OSError):
        if b"machines.reversefs" in Path(f"/proc/{pid}/cmdline").read_bytes():
            os.kill(pid, signal.SIGTERM)
    state.unlink(missing_ok=True)


def mount(machine: Machine, new: Mount) -> None:
    """Mount ``new`` now and record it (a target already in use is refused)."""
    current = recorded(machine)
    if any(existing.target == new.target for existing in current):
        raise StateError(f"{machine.name} already has a folder mounted at {new.target}: 'machines umount "
                         f"{machine.name} {new.target}' first")
    _attach(machine, new)
    _save(machine, [*current, new])


def umount(machine: Machine, target: str) -> Mount:
    """Unmount the folder at ``target`` and forget it."""
    target = posixpath.normpath(target)
    current = recorded(machine)
    found = next((entry for entry in current if entry.target == target), None)
    if found is None:
        raise StateError(f"{machine.name} has no folder mounted at {target} (see 'machines mount ls {machine.name}')")
    if _is_mounted(machine, target):
        _detach(machine, target)
    elif not _is_local(machine):
        _stop_server(machine, target)
    _save(machine, [entry for entry in current if entry.target != target])
    return found


def restore(machine: Machine) -> list[str]:
    """Mount the recorded folders again (after a start); returns one problem per mount that failed."""
    problems = []
    for entry in recorded(machine):
        try:
            if not _is_mounted(machine, entry.target):
                _attach(machine, entry)
        except MachinesError as error:
            problems.append(str(error))
    return problems


def release(machine: Machine) -> list[str]:
    """Unmount a remote machine's folders before it is removed (a local host goes away with its mounts)."""
    problems = []
    for entry in recorded(machine) if not _is_local(machine) else []:
        try:
            if _is_mounted(machine, entry.target):
                _detach(machine, entry.target)
        except MachinesError as error:
            problems.append(str(error))
        _stop_server(machine, entry.target)
    return problems


# -- the helper process: bind this computer's folder into the host's mount namespace -------------------------
OPEN_TREE_CLONE, AT_RECURSIVE, AT_EMPTY_PATH, MOVE_MOUNT_F_EMPTY_PATH = 0x1, 0x8000, 0x1000, 0x4
SYS_OPEN_TREE, SYS_MOVE_MOUNT, SYS_MOUNT_SETATTR = 428, 429, 442  # the same on every architecture Linux unified
MOUNT_ATTR_RDONLY, CLONE_NEWNS, AT_FDCWD = 0x1, 0x00020000, -100


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64), ("propagation", ctypes.c_uint64),
                ("userns_fd", ctypes.c_uint64)]


def _check(result: int, what: str) -> int:
    if result < 0:
        error = ctypes.get_errno()
        raise OSError(error, f"{what}: {os.strerror(error)}")
    return result


def inject(pid: int, source: str, target: str, readonly: bool) -> None:
    """Clone ``source`` as a detached mount here (open_tree), enter the host's mount namespace, and attach the
    clone at ``target`` (move_mount): a bind mount across namespaces, which mount(2) cannot do."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    tree = _check(libc.syscall(SYS_OPEN_TREE, AT_FDCWD, source.encode(),
                               OPEN_TREE_CLONE | os.O_CLOEXEC | AT_RECURSIVE), f"open_tree {source}")
    if readonly:
        attr = _MountAttr(MOUNT_ATTR_RDONLY, 0, 0, 0)
        _check(libc.syscall(SYS_MOUNT_SETATTR, tree, b"", AT_EMPTY_PATH | AT_RECURSIVE, ctypes.byref(attr),
                            ctypes.sizeof(attr)), "mount_setattr")
    namespace = os.open(f"/proc/{pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
    _check(libc.setns(namespace, CLONE_NEWNS), "setns")
    os.makedirs(target, exist_ok=True)
    # A folder the machine's users control may hold symlinks: the target must be exactly the path asked for.
    if os.path.realpath(target) != target:
        raise OSError(f"{target} is (or lies under) a symlink in the machine")
    _check(libc.syscall(SYS_MOVE_MOUNT, tree, b"", AT_FDCWD, target.encode(), MOVE_MOUNT_F_EMPTY_PATH),
           f"move_mount to {target}")


def main(argv: list[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    readonly = "--ro" in arguments
    pid, source, target = [argument for argument in arguments if argument != "--ro"]
    try:
        inject(int(pid), source, target, readonly)
    except OSError as error:
        print(error.strerror or error, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
