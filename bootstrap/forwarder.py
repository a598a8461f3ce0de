"""``machines env --ssh``: a local unix socket whose connections reach the machine's runtime socket over SSH.

Like Lima's and podman machine's API forwarding, no port needs to be open on the host: a detached process
(``python -m bootstrap.forwarder --storage-path ROOT NAME``) serves the socket and bridges each connection over the
machine's SSH connection (pinned host key) to the runtime's unix socket. ``ensure`` starts it or reuses a live one,
``stop`` ends it (``env --ssh --unset`` and ``rm``). Its pid and socket path live in ``<machine dir>/forwarder.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from machines.errors import MachinesError, ProvisionError
from machines.store import CONFIG_FILE

if TYPE_CHECKING:
    from machines.ssh import UnixForwarder

STATE_FILE = "forwarder.json"
LOG_FILE = "forwarder.log"
MAX_SOCKET_PATH = 100  # sun_path holds 108 bytes; leave room
START_TIMEOUT = 15.0


def socket_path(machine_dir: str | os.PathLike[str]) -> Path:
    """``<machine dir>/docker.sock``, or a short path in a private runtime folder when that would not fit in
    sun_path: ``$XDG_RUNTIME_DIR/machines`` when that variable names a private folder, else ``<tmp>/machines-UID``."""
    preferred = Path(machine_dir) / "docker.sock"
    if len(str(preferred)) <= MAX_SOCKET_PATH:
        return preferred
    digest = hashlib.sha256(str(Path(machine_dir).resolve()).encode()).hexdigest()[:16]
    runtime_dir = os.environ.get("XDG_RUNTIME_DIR", "")
    if os.path.isabs(runtime_dir) and _refusal(Path(runtime_dir)) is None:
        return Path(runtime_dir) / "machines" / f"{digest}.sock"
    return Path(tempfile.gettempdir()) / f"machines-{os.getuid()}" / f"{digest}.sock"


def _refusal(folder: Path) -> str | None:
    """Why another user could reach into ``folder`` (swap or read the socket), or None when it is private."""
    try:
        info = os.lstat(folder)
    except OSError as error:
        return f"cannot use it: {error.strerror}"
    if stat.S_ISLNK(info.st_mode):
        return "it is a symlink"
    if not stat.S_ISDIR(info.st_mode):
        return "it is not a folder"
    if info.st_uid != os.getuid():
        return f"it is owned by uid {info.st_uid}, not by you (uid {os.getuid()})"
    if info.st_mode & 0o077:
        return f"its mode is {stat.S_IMODE(info.st_mode):04o}, not 0700"
    return None


def private_socket_folder(path: Path) -> None:
    """Make the socket's folder (0700) if missing; refuse one that is not the user's own private folder."""
    with contextlib.suppress(FileExistsError):
        os.mkdir(path.parent, 0o700)
    reason = _refusal(path.parent)
    if reason is not None:
        raise ProvisionError(f"refusing to serve the SSH forwarder's socket in {path.parent}: {reason}")


def _state(machine_dir: Path) -> dict[str, Any] | None:
    try:
        state: dict[str, Any] = json.loads((machine_dir / STATE_FILE).read_text())
        return state
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    """Whether the process runs; an exited forwarder that nobody reaped yet (a zombie) counts as gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return fields.rpartition(")")[2].split()[0] != "Z"


def running(machine_dir: str | os.PathLike[str]) -> Path | None:
    """The socket of a live forwarder of this machine, or None."""
    state = _state(Path(machine_dir))
    # A live forwarder process and its socket file: probing the socket would cost a session on the host.
    if state and _alive(int(state["pid"])) and _is_forwarder(int(state["pid"])) and Path(state["socket"]).is_socket():
        return Path(state["socket"])
    return None


def ensure(storage_path: str | os.PathLike[str], name: str, machine_dir: str | os.PathLike[str]) -> Path:
    """Start the machine's forwarder unless one is live; returns the local socket path once it accepts."""
    directory = Path(machine_dir)
    live = running(directory)
    if live is not None:
        return live
    stop(directory)
    path = socket_path(directory)
    private_socket_folder(path)
    path.unlink(missing_ok=True)  # a socket left by a forwarder that died must not pass for the new one
    log_path = directory / LOG_FILE
    with open(log_path, "ab") as log, open(os.devnull, "rb") as devnull:
        process = subprocess.Popen(
            [sys.executable, "-m", "machines.bootstrap.forwarder", "--storage-path", str(storage_path), name],
            stdin=devnull,
            stdout=log,
            stderr=log,
            start_new_session=True,  # outlives the shell that ran `machines env --ssh`
            close_fds=True,
        )
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log_path.read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
            raise ProvisionError(f"{name}: the SSH forwarder exited: {tail[0]}")
        if path.is_socket() and running(directory) == path:
            return path
        time.sleep(0.05)
    process.terminate()
    raise ProvisionError(f"{name}: the SSH forwarder did not open {path} within {START_TIMEOUT:g}s")


def stop(machine_dir: str | os.PathLike[str]) -> bool:
    """Stop the machine's forwarder if one runs; returns whether one did. Safe to call when none exists."""
    directory = Path(machine_dir)
    state = _state(directory)
    (directory / STATE_FILE).unlink(missing_ok=True)
    if not state:
        return False
    pid = int(state["pid"])
    stopped = False
    if _alive(pid) and _is_forwarder(pid):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 5
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        stopped = True
    with contextlib.suppress(FileNotFoundError):
        os.unlink(state["socket"])
    return stopped


def _is_forwarder(pid: int) -> bool:
    """Guard against a recycled pid: only signal a process that is one of our forwarders."""
    try:
        return b"machines.bootstrap.forwarder" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def serve(storage_path: str, name: str) -> None:
    """The forwarder process: serve the socket until SIGTERM."""
    from machines.bootstrap import service
    from machines.machine import Machines

    machine = Machines(storage_path).get(name)
    directory = Path(machine.dir)
    path = socket_path(directory)
    private_socket_folder(path)
    connection = machine.ssh()
    tmp = directory / f".{STATE_FILE}.tmp"
    tmp.write_text(json.dumps({"pid": os.getpid(), "socket": str(path)}))
    os.replace(tmp, directory / STATE_FILE)
    remote = machine.record.get("runtime", {}).get("socket") or service.SOCKET_PATH
    forwarder = connection.forward_local_unix(str(path), remote)
    signal.signal(signal.SIGTERM, lambda *_: forwarder.close())
    signal.signal(signal.SIGINT, lambda *_: forwarder.close())
    threading.Thread(target=_close_when_removed, args=(directory, forwarder), daemon=True).start()
    forwarder.serve_forever()
    connection.close()


def _close_when_removed(directory: Path, forwarder: UnixForwarder) -> None:
    """``machines rm`` deletes the machine folder: the forwarder then has nothing to serve and ends."""
    while (directory / CONFIG_FILE).is_file():
        time.sleep(1)
    forwarder.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bootstrap.forwarder", description=__doc__)
    parser.add_argument("--storage-path", required=True)
    parser.add_argument("name")
    arguments = parser.parse_args(argv)
    try:
        serve(arguments.storage_path, arguments.name)
    except MachinesError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
