"""Reverse sshfs: a folder of this computer mounted in a remote machine over its pinned SSH connection.

The host runs ``sshfs -o passive`` (FUSE), which speaks SFTP on its stdin/stdout instead of dialling out; this
computer answers as the SFTP server on that same session channel (paramiko's ``SFTPServer``), serving one folder.
No port is opened anywhere and the host never holds a key to this computer.

The machine is not trusted with this computer: ``RootedSFTP`` resolves every path inside the served folder and
refuses any that leads out of it (``..``, absolute symlinks, symlinks that climb out), and refuses to create such
symlinks; ``--ro`` refuses every change. Requests are handled one at a time, so the machine cannot race a check.

``python -m machines.reversefs`` is the detached process ``machines mount`` starts per remote mount; it lives as
long as the mount (until ``machines umount``, or the host unmounts or goes away).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import posixpath
import shlex
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paramiko
from paramiko.sftp import SFTP_FAILURE, SFTP_NO_SUCH_FILE, SFTP_OK, SFTP_PERMISSION_DENIED

from machines import detached
from machines.errors import MachinesError

WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC


class _Handle(paramiko.SFTPHandle):
    """An open file: paramiko reads ``readfile`` and writes ``writefile`` (one file object here)."""

    def __init__(self, flags: int, file: Any, filename: str) -> None:
        super().__init__(flags)
        self.readfile = self.writefile = file
        self.filename = filename

    def stat(self) -> paramiko.SFTPAttributes | int:
        try:
            return paramiko.SFTPAttributes.from_stat(os.fstat(self.readfile.fileno()))
        except OSError as error:
            return paramiko.SFTPServer.convert_errno(error.errno or 5)

    def chattr(self, attr: paramiko.SFTPAttributes) -> int:
        return SFTP_PERMISSION_DENIED


class RootedSFTP(paramiko.SFTPServerInterface):
    """SFTP over one folder: ``/`` is the folder; nothing outside it can be reached."""

    def __init__(self, server: Any, root: str, readonly: bool) -> None:
        super().__init__(server)
        self.root = os.path.realpath(root)
        self.readonly = readonly

    # -- paths --------------------------------------------------------------------------------------------
    def _inside(self, real: str) -> bool:
        return real == self.root or real.startswith(self.root + os.sep)

    def _local(self, path: str, *, follow: bool = True) -> str:
        """The path here for an SFTP path; with ``follow=False`` the last component is not resolved (lstat,
        readlink, remove, rename, symlink). Raises PermissionError when it would leave the folder."""
        relative = posixpath.normpath("/" + path).lstrip("/")
        joined = os.path.join(self.root, relative) if relative else self.root
        if follow or joined == self.root:
            real = checked = os.path.realpath(joined)
        else:
            checked = os.path.realpath(os.path.dirname(joined))
            real = os.path.join(checked, os.path.basename(joined))
        if not self._inside(checked):
            raise PermissionError(13, "outside the shared folder")
        return real

    def _change(self) -> None:
        if self.readonly:
            raise PermissionError(13, "read-only mount")

    @staticmethod
    def _attempt(action: Callable[[], Any]) -> Any:
        try:
            return action()
        except PermissionError:
            return SFTP_PERMISSION_DENIED
        except FileNotFoundError:
            return SFTP_NO_SUCH_FILE
        except OSError as error:
            return paramiko.SFTPServer.convert_errno(error.errno) if error.errno else SFTP_FAILURE

    def _modify(self, action: Callable[[], object]) -> Any:
        """A change: refused on a read-only mount; SFTP_OK or the status of the error."""

        def run() -> int:
            self._change()
            action()
            return SFTP_OK

        return self._attempt(run)

    # -- the interface ------------------------------------------------------------------------------------
    def canonicalize(self, path: str) -> str:
        return posixpath.normpath("/" + path)

    def list_folder(self, path: str) -> Any:
        def listing() -> list[paramiko.SFTPAttributes]:
            folder = self._local(path)
            entries = []
            for name in os.listdir(folder):
                attributes = paramiko.SFTPAttributes.from_stat(os.lstat(os.path.join(folder, name)))
                attributes.filename = name
                entries.append(attributes)
            return entries

        return self._attempt(listing)

    def stat(self, path: str) -> Any:
        return self._attempt(lambda: paramiko.SFTPAttributes.from_stat(os.stat(self._local(path))))

    def lstat(self, path: str) -> Any:
        return self._attempt(lambda: paramiko.SFTPAttributes.from_stat(os.lstat(self._local(path, follow=False))))

    def open(self, path: str, flags: int, attr: paramiko.SFTPAttributes) -> Any:
        def opened() -> _Handle:
            if flags & WRITE_FLAGS:
                self._change()
            mode = attr.st_mode & 0o777 if attr is not None and attr.st_mode is not None else 0o644
            local = self._local(path)
            fd = os.open(local, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
            access = "r+b" if flags & os.O_RDWR else "ab" if flags & os.O_APPEND else "wb" if flags & os.O_WRONLY \
                else "rb"
            return _Handle(flags, os.fdopen(fd, access), local)

        return self._attempt(opened)

    def remove(self, path: str) -> Any:
        return self._modify(lambda: os.unlink(self._local(path, follow=False)))

    def rename(self, oldpath: str, newpath: str) -> Any:
        return self._modify(lambda: os.rename(self._local(oldpath, follow=False), self._local(newpath, follow=False)))

    def posix_rename(self, oldpath: str, newpath: str) -> Any:
        return self.rename(oldpath, newpath)

    def mkdir(self, path: str, attr: paramiko.SFTPAttributes) -> Any:
        mode = attr.st_mode & 0o777 if attr is not None and attr.st_mode is not None else 0o755
        return self._modify(lambda: os.mkdir(self._local(path, follow=False), mode))

    def rmdir(self, path: str) -> Any:
        return self._modify(lambda: os.rmdir(self._local(path, follow=False)))

    def chattr(self, path: str, attr: paramiko.SFTPAttributes) -> Any:
        def change() -> int:
            self._change()
            local = self._local(path)
            if attr.st_mode is not None:
                os.chmod(local, attr.st_mode & 0o777)  # never setuid/setgid/sticky from the machine
            if attr.st_atime is not None and attr.st_mtime is not None:
                os.utime(local, (attr.st_atime, attr.st_mtime))
            if attr.st_size is not None:
                os.truncate(local, attr.st_size)
            return SFTP_OK

        return self._attempt(change)

    def readlink(self, path: str) -> Any:
        return self._attempt(lambda: os.readlink(self._local(path, follow=False)))

    def symlink(self, target_path: str, path: str) -> Any:
        def link() -> int:
            self._change()
            local = self._local(path, follow=False)
            pointed = os.path.normpath(os.path.join(os.path.dirname(local), target_path))
            if os.path.isabs(target_path) or not self._inside(pointed):
                raise PermissionError(13, "a symlink out of the shared folder")
            os.symlink(target_path, local)
            return SFTP_OK

        return self._attempt(link)


def sshfs_command(target: str, readonly: bool) -> str:
    """The host's side: sshfs in the foreground, talking SFTP on stdin/stdout, mounting at ``target``."""
    # No caches: an edit made here must be what the machine reads next (sizes, listings and pages included).
    options = ("passive,allow_other,default_permissions,dir_cache=no,attr_timeout=0,entry_timeout=0,"
               "negative_timeout=0,auto_cache" + (",ro" if readonly else ""))
    return f"exec sshfs -f -o {options} :/ {shlex.quote(target)}"


def serve(storage_path: str, name: str, source: str, target: str, readonly: bool, state: Path) -> None:
    """The detached process: serve ``source`` to the host's sshfs until the mount ends."""
    from machines.default import Machines

    machine = Machines(storage_path).get(name)
    connection = machine.ssh()
    channel = connection.transport.open_session()
    channel.exec_command(connection.wrap_sudo(sshfs_command(target, readonly)))
    server = paramiko.SFTPServer(channel, "sftp", paramiko.ServerInterface(), RootedSFTP, source, readonly)
    ended = threading.Event()

    def run() -> None:
        try:
            server.start_subsystem("sftp", connection.transport, channel)
        finally:
            ended.set()

    threading.Thread(target=run, daemon=True).start()
    deadline = 15.0
    while not ended.wait(0.1):
        deadline -= 0.1
        if connection.run(f"mountpoint -q {shlex.quote(target)}", check=False).ok:
            break
        if deadline <= 0:
            raise MachinesError(f"sshfs did not mount {target} on {name}")
    if ended.is_set():
        errors = channel.recv_stderr(4096).decode(errors="replace").strip().splitlines()
        raise MachinesError(f"sshfs on {name} ended: {errors[-1] if errors else 'no message'}")
    temporary = state.with_suffix(".tmp")
    temporary.write_text(json.dumps({"pid": os.getpid(), "target": target}))
    os.replace(temporary, state)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: channel.close())
    ended.wait()
    with contextlib.suppress(MachinesError):
        connection.run(connection.wrap_sudo(f"umount -l {shlex.quote(target)}"), check=False)
    state.unlink(missing_ok=True)
    connection.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m machines.reversefs", description=__doc__)
    parser.add_argument("--storage-path", required=True)
    parser.add_argument("--state", required=True)
    parser.add_argument("--ro", action="store_true")
    parser.add_argument("name")
    parser.add_argument("source")
    parser.add_argument("target")
    arguments = parser.parse_args(argv)
    return detached.main(lambda: serve(arguments.storage_path, arguments.name, arguments.source, arguments.target,
                                       arguments.ro, Path(arguments.state)))


if __name__ == "__main__":
    sys.exit(main())
