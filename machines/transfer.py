"""``scp``: copy files between this computer and machines, or between two machines, over SFTP.

Paths are ``[MACHINE:]PATH``. Between two machines the data flows through this computer (like ``scp -3``), so the
machines need no route or trust between them. Host keys are the pinned ones, as for every connection.

A machine is not trusted with the layout of what it sends: a listing entry whose name holds ``/`` or NUL stops the
copy (OpenSSH's "Server sent suspicious filename"), ``.`` and ``..`` are skipped, trees deeper than
``MAX_DEPTH`` are refused, symlinks are recreated only when they point inside the copied tree, and setuid, setgid
and sticky bits are dropped. On this computer the tree is written through folder descriptors with ``O_NOFOLLOW``,
so no symlink, whether sent by the machine or already in the target, leads a write outside the target folder.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import logging
import os
import posixpath
import shutil
import stat
from collections.abc import Callable, Iterator
from typing import IO, Protocol

import paramiko

from machines.errors import SSHError, UsageError
from machines.machine import Machine, Machines

log = logging.getLogger(__name__)

MAX_DEPTH = 64  # OpenSSH's sftp-client MAX_DIR_DEPTH: a hostile machine could otherwise send an endless tree
PERMISSION_BITS = 0o777  # what a copy keeps of a mode: never setuid, setgid or sticky


@dataclasses.dataclass(frozen=True)
class _Entry:
    """One entry of a source folder, as the source described it (``lstat``: a symlink is not followed)."""

    name: str
    mode: int
    link: str | None = None  # the symlink's target

    @property
    def kind(self) -> str:
        if stat.S_ISDIR(self.mode):
            return "folder"
        if stat.S_ISREG(self.mode):
            return "file"
        return "symlink" if stat.S_ISLNK(self.mode) else "special file"


class _Side:
    """One end of a copy: the local filesystem or a machine's (through SFTP)."""

    def __init__(self, label: str, sftp: paramiko.SFTPClient | None = None) -> None:
        self.label = label
        self.sftp = sftp
        self.path = os.path if sftp is None else posixpath

    def describe(self, path: str) -> str:
        return f"{self.label}:{path}" if self.sftp else path

    def stat(self, path: str) -> os.stat_result | paramiko.SFTPAttributes | None:
        try:
            return os.stat(path) if self.sftp is None else self.sftp.stat(path)
        except FileNotFoundError:
            return None

    def is_dir(self, path: str) -> bool:
        info = self.stat(path)
        return info is not None and stat.S_ISDIR(info.st_mode or 0)

    def entries(self, path: str) -> list[_Entry]:
        """The folder's entries, sorted, each name checked: one that could name another place stops the copy."""
        if self.sftp is None:
            with os.scandir(path) as listing:
                found = [(item.name, item.stat(follow_symlinks=False).st_mode) for item in listing]
        else:
            found = [(attributes.filename, attributes.st_mode or 0) for attributes in self.sftp.listdir_attr(path)]
        entries = []
        for name, mode in sorted(found):
            if name in (".", ".."):
                continue
            if not name or "/" in name or "\0" in name:
                raise SSHError(f"{self.describe(path)}: the machine sent a suspicious file name {name!r}; copy stopped")
            link = self.readlink(self.path.join(path, name)) if stat.S_ISLNK(mode) else None
            entries.append(_Entry(name, mode, link))
        return entries

    def readlink(self, path: str) -> str:
        target = os.readlink(path) if self.sftp is None else self.sftp.readlink(path)
        return target or ""

    def open(self, path: str, flags: str) -> IO[bytes]:
        if self.sftp is None:
            return open(path, flags)  # noqa: SIM115 - closed by the caller's with
        handle = self.sftp.open(path, flags)
        if "r" in flags:
            handle.prefetch()
        else:
            handle.set_pipelined(True)
        return handle  # type: ignore[return-value]

    def chmod(self, path: str, mode: int) -> None:
        if self.sftp is None:
            os.chmod(path, mode)
        else:
            self.sftp.chmod(path, mode)

    def target_folder(self, path: str) -> _Folder:
        """The folder a tree is copied into, made if missing."""
        if self.sftp is None:
            return _LocalFolder.root(path)
        return _RemoteFolder(self, path)


class _Folder(Protocol):
    """A folder being written by a tree copy: every name given is one checked path component."""

    def folder(self, name: str) -> _Folder: ...

    def create(self, name: str, mode: int) -> contextlib.AbstractContextManager[IO[bytes]]: ...

    def symlink(self, name: str, target: str) -> None: ...

    def finish(self, mode: int) -> None: ...

    def close(self) -> None: ...


class _LocalFolder:
    """A local folder held open: children are reached with ``dir_fd`` and ``O_NOFOLLOW``, never by path."""

    def __init__(self, fd: int, path: str) -> None:
        self.fd = fd
        self.path = path

    @classmethod
    def root(cls, path: str) -> _LocalFolder:
        with contextlib.suppress(FileExistsError):
            os.mkdir(path, 0o700)
        return cls(os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC), path)

    def _failed(self, error: OSError, name: str) -> OSError:
        return OSError(error.errno, error.strerror, os.path.join(self.path, name))

    def folder(self, name: str) -> _LocalFolder:
        try:
            with contextlib.suppress(FileExistsError):
                os.mkdir(name, 0o700, dir_fd=self.fd)
            # A symlink (ELOOP) or a file (ENOTDIR) already there is refused, not followed.
            fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self.fd)
        except OSError as error:
            raise self._failed(error, name) from None
        return _LocalFolder(fd, os.path.join(self.path, name))

    @contextlib.contextmanager
    def create(self, name: str, mode: int) -> Iterator[IO[bytes]]:
        flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        try:
            fd = os.open(name, flags, 0o600, dir_fd=self.fd)
        except OSError as error:
            raise self._failed(error, name) from None
        with os.fdopen(fd, "wb") as handle:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise OSError(errno.EEXIST, "Exists and is not a regular file", os.path.join(self.path, name))
            os.truncate(fd, 0)
            yield handle
            handle.flush()
            os.fchmod(fd, mode & PERMISSION_BITS)

    def symlink(self, name: str, target: str) -> None:
        try:
            os.symlink(target, name, dir_fd=self.fd)
        except OSError as error:
            raise self._failed(error, name) from None

    def finish(self, mode: int) -> None:
        os.fchmod(self.fd, mode & PERMISSION_BITS)

    def close(self) -> None:
        os.close(self.fd)


class _RemoteFolder:
    """A folder on a machine: SFTP has no descriptors, but every component is a checked name."""

    def __init__(self, side: _Side, path: str) -> None:
        self.side = side
        self.path = path
        assert side.sftp is not None
        self.sftp = side.sftp
        if not side.is_dir(path):
            self.sftp.mkdir(path, 0o700)

    def folder(self, name: str) -> _RemoteFolder:
        return _RemoteFolder(self.side, posixpath.join(self.path, name))

    @contextlib.contextmanager
    def create(self, name: str, mode: int) -> Iterator[IO[bytes]]:
        path = posixpath.join(self.path, name)
        with self.side.open(path, "wb") as handle:
            yield handle
        self.sftp.chmod(path, mode & PERMISSION_BITS)

    def symlink(self, name: str, target: str) -> None:
        self.sftp.symlink(target, posixpath.join(self.path, name))

    def finish(self, mode: int) -> None:
        self.sftp.chmod(self.path, mode & PERMISSION_BITS)

    def close(self) -> None:
        """Nothing is held open for a remote folder."""


def split_location(location: str) -> tuple[str | None, str]:
    """``"web:/etc/hostname"`` -> ``("web", "/etc/hostname")``; a path with no ``machine:`` is local."""
    machine, sep, path = location.partition(":")
    if not sep or "/" in machine or not machine:
        return None, location
    return machine, path or "."


@contextlib.contextmanager
def _open_side(machines: Machines, name: str | None, opened: dict[str, Machine]) -> Iterator[_Side]:
    if name is None:
        yield _Side("local")
        return
    machine = opened.setdefault(name, machines.get(name))
    with machine.ssh().sftp() as sftp:
        yield _Side(name, sftp)


def copy(machines: Machines, source: str, destination: str, *, recursive: bool = False,
         report: Callable[[str], None] | None = None) -> None:
    """Copy ``source`` to ``destination`` (each ``[MACHINE:]PATH``); directories need ``recursive``."""
    source_machine, source_path = split_location(source)
    target_machine, target_path = split_location(destination)
    opened: dict[str, Machine] = {}
    try:
        with _open_side(machines, source_machine, opened) as src, _open_side(machines, target_machine, opened) as dst:
            info = src.stat(source_path)
            if info is None:
                raise UsageError(f"{src.describe(source_path)}: no such file or directory")
            if dst.is_dir(target_path):
                target_path = dst.path.join(target_path, src.path.basename(source_path.rstrip("/")) or ".")
            mode = info.st_mode or 0
            if stat.S_ISDIR(mode):
                if not recursive:
                    raise UsageError(f"{src.describe(source_path)} is a directory (use -r)")
                _TreeCopy(src, dst, target_path, report).run(source_path, mode)
            else:
                with src.open(source_path, "rb") as reader, dst.open(target_path, "wb") as writer:
                    shutil.copyfileobj(reader, writer, 1 << 20)
                dst.chmod(target_path, mode & PERMISSION_BITS)
                if report:
                    report(f"{src.describe(source_path)} -> {dst.describe(target_path)}")
    except OSError as error:
        raise SSHError(f"copy failed: {error.strerror or error}" + (f": {error.filename}" if error.filename else "")) from None
    finally:
        for machine in opened.values():
            machine.close()


class _TreeCopy:
    """``scp -r`` of one folder: the source's entries are walked without following symlinks."""

    def __init__(self, src: _Side, dst: _Side, target: str, report: Callable[[str], None] | None) -> None:
        self.src, self.dst, self.target, self.report = src, dst, target, report
        self.links: list[str] = []  # relative paths of the symlinks made, checked once the tree is complete

    def run(self, source: str, mode: int) -> None:
        self._copy_folder(source, self.dst.target_folder(self.target), mode, ())
        if self.dst.sftp is None:
            self._drop_links_leading_out()

    def _copy_folder(self, source: str, folder: _Folder, mode: int, relative: tuple[str, ...]) -> None:
        try:
            if len(relative) >= MAX_DEPTH:
                raise SSHError(f"{self.src.describe(source)}: more than {MAX_DEPTH} folder levels; copy stopped")
            for entry in self.src.entries(source):
                self._copy_entry(source, entry, folder, relative)
            folder.finish(mode)
        finally:
            folder.close()

    def _copy_entry(self, source: str, entry: _Entry, folder: _Folder, relative: tuple[str, ...]) -> None:
        child = self.src.path.join(source, entry.name)
        if entry.kind == "folder":
            self._copy_folder(child, folder.folder(entry.name), entry.mode, (*relative, entry.name))
        elif entry.kind == "file":
            with self.src.open(child, "rb") as reader, folder.create(entry.name, entry.mode) as writer:
                shutil.copyfileobj(reader, writer, 1 << 20)
        elif entry.kind == "symlink" and entry.link is not None and _inside(relative, entry.link):
            folder.symlink(entry.name, entry.link)
            self.links.append(os.path.join(*relative, entry.name))
        else:
            what = f"symlink to {entry.link} leads outside the copy" if entry.kind == "symlink" else entry.kind
            log.warning("skipped %s: %s", self.src.describe(child), what)
            return
        if self.report:
            self.report(f"{self.src.describe(child)} -> "
                        f"{self.dst.describe(self.dst.path.join(self.target, *relative, entry.name))}")

    def _drop_links_leading_out(self) -> None:
        """Links that pass one by one can still lead out together (``a -> .`` then ``b -> a/..``): resolve each."""
        root = os.path.realpath(self.target)
        for relative in self.links:
            path = os.path.join(self.target, relative)
            if os.path.commonpath([root, os.path.realpath(path)]) != root:
                os.unlink(path)
                log.warning("removed %s: its symlinks lead outside the copy", path)


def _inside(folder: tuple[str, ...], target: str) -> bool:
    """Whether a symlink in ``folder`` (relative to the copy's root) pointing at ``target`` stays in the copy."""
    if not target or target.startswith("/") or "\0" in target:
        return False
    resolved = posixpath.normpath(posixpath.join(*folder, target) if folder else target)
    return resolved != ".." and not resolved.startswith("../")
