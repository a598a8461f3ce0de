"""``scp``: copy files between this computer and machines, or between two machines, over SFTP.

Paths are ``[MACHINE:]PATH``. Between two machines the data flows through this computer (like ``scp -3``), so the
machines need no route or trust between them. Host keys are the pinned ones, as for every connection.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import shutil
import stat
from collections.abc import Callable, Iterator
from typing import IO

import paramiko

from machines.errors import SSHError, UsageError
from machines.machine import Machine, Machines


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

    def listdir(self, path: str) -> list[str]:
        return sorted(os.listdir(path) if self.sftp is None else self.sftp.listdir(path))

    def mkdir(self, path: str, mode: int) -> None:
        if not self.is_dir(path):
            if self.sftp is None:
                os.mkdir(path, mode)
            else:
                self.sftp.mkdir(path, mode)

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
            if stat.S_ISDIR(info.st_mode or 0):
                if not recursive:
                    raise UsageError(f"{src.describe(source_path)} is a directory (use -r)")
                _copy_tree(src, source_path, dst, target_path, report)
            else:
                _copy_file(src, source_path, dst, target_path, stat.S_IMODE(info.st_mode or 0o644), report)
    except OSError as error:
        raise SSHError(f"copy failed: {error.strerror or error}" + (f": {error.filename}" if error.filename else "")) from None
    finally:
        for machine in opened.values():
            machine.close()


def _copy_file(src: _Side, source: str, dst: _Side, target: str, mode: int,
               report: Callable[[str], None] | None) -> None:
    with src.open(source, "rb") as reader, dst.open(target, "wb") as writer:
        shutil.copyfileobj(reader, writer, 1 << 20)
    dst.chmod(target, mode)
    if report:
        report(f"{src.describe(source)} -> {dst.describe(target)}")


def _copy_tree(src: _Side, source: str, dst: _Side, target: str, report: Callable[[str], None] | None) -> None:
    info = src.stat(source)
    dst.mkdir(target, stat.S_IMODE(info.st_mode or 0o755) if info else 0o755)
    for entry in src.listdir(source):
        child_source, child_target = src.path.join(source, entry), dst.path.join(target, entry)
        child = src.stat(child_source)
        if child is None:
            continue
        if stat.S_ISDIR(child.st_mode or 0):
            _copy_tree(src, child_source, dst, child_target, report)
        elif stat.S_ISREG(child.st_mode or 0):
            _copy_file(src, child_source, dst, child_target, stat.S_IMODE(child.st_mode or 0o644), report)
