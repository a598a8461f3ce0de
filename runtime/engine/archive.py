"""``docker cp`` and ``docker export``: tar streams out of and into a container's filesystem.

A running container is reached through ``/proc/<pid>/root`` (so its volumes are included); a stopped one through a
temporary overlay mount of its layers. Paths are resolved inside that root and never follow links out of it.
"""
from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import stat
import tarfile
import time
from collections.abc import Iterator
from typing import Any

from runtime.errors import InvalidParameter, NotFound
from runtime.linux import syscalls as sc
from runtime.linux.paths import mkdir_in_root, secure_join
from runtime.linux.paths import tree_size as tree_size  # the engine sizes container layers through this module

GO_MODE_BITS = ((stat.S_ISDIR, 1 << 31), (stat.S_ISLNK, 1 << 27), (stat.S_ISFIFO, 1 << 25),
                (stat.S_ISSOCK, 1 << 24), (stat.S_ISBLK, 1 << 26), (stat.S_ISCHR, (1 << 26) | (1 << 21)))


def unmount_quietly(path: str) -> None:
    try:
        sc.umount(path, sc.MNT_DETACH)
    except OSError:
        pass


@contextlib.contextmanager
def container_root(c: Any, proc_root: str | None, writable: bool) -> Iterator[str]:
    """The container's root directory for the duration of the block."""
    if proc_root:
        yield proc_root
        return
    target = c.file("mnt-" + secrets.token_hex(4))
    os.makedirs(target)
    lower = c.data["_lower"] or []
    if writable:
        options = f"lowerdir={':'.join(lower) or c.file('empty')},upperdir={c.file('upper')},workdir={c.file('work')}"
    else:
        options = f"lowerdir={':'.join([c.file('upper')] + lower + ([c.file('work')] if not lower else []))}"
    try:
        if writable and not lower:
            os.makedirs(c.file("empty"), exist_ok=True)
        sc.mount("overlay", target, "overlay", 0 if writable else sc.MS_RDONLY, options)
        try:
            yield target
        finally:
            unmount_quietly(target)
    finally:
        try:
            os.rmdir(target)
        except OSError:
            pass


def _go_mode(st: os.stat_result) -> int:
    mode = stat.S_IMODE(st.st_mode) & 0o777
    for test, bit in GO_MODE_BITS:
        if test(st.st_mode):
            mode |= bit
    if st.st_mode & stat.S_ISUID:
        mode |= 1 << 23
    if st.st_mode & stat.S_ISGID:
        mode |= 1 << 22
    if st.st_mode & stat.S_ISVTX:
        mode |= 1 << 20
    return mode


def _locate(root: str, path: str, name: str) -> str:
    """Host path of ``path`` (its last component not followed), or NotFound in Docker's words."""
    parent, base = os.path.split(path.rstrip("/") or "/")
    if base in ("", ".", ".."):
        host = secure_join(root, path)
    else:
        host = os.path.join(secure_join(root, parent), base)
    if not os.path.lexists(host):
        raise NotFound(f"Could not find the file {path} in container {name}")
    return host


def stat_path(root: str, path: str, name: str) -> dict:
    host = _locate(root, path, name)
    st = os.lstat(host)
    link = ""
    if stat.S_ISLNK(st.st_mode):
        link = "/" + os.path.relpath(secure_join(root, path), root).lstrip("./")
    ns = st.st_mtime_ns
    mtime = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ns // 10 ** 9)) + f".{ns % 10 ** 9:09d}Z"
    return {"name": os.path.basename(path.rstrip("/")) or "/", "size": st.st_size, "mode": _go_mode(st),
            "mtime": mtime, "linkTarget": link}


class _Sink:
    """A write-only file for tarfile that hands the written bytes out in chunks."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.offset = 0

    def write(self, data: bytes) -> int:
        self.chunks.append(bytes(data))
        self.offset += len(data)
        return len(data)

    def tell(self) -> int:
        return self.offset

    def take(self) -> bytes:
        out = b"".join(self.chunks)
        self.chunks = []
        return out


def _tar_tree(host: str, arcname: str, skip_root: bool = False) -> Iterator[bytes]:
    sink = _Sink()
    tar = tarfile.open(fileobj=sink, mode="w|", format=tarfile.PAX_FORMAT)  # type: ignore[call-overload]

    def add(path: str, name: str) -> None:
        info = tar.gettarinfo(path, arcname=name)
        if info.isreg():
            with open(path, "rb") as f:
                tar.addfile(info, f)
        else:
            tar.addfile(info)

    if not skip_root:
        add(host, arcname)
    if os.path.isdir(host) and not os.path.islink(host):
        for base, dirs, files in os.walk(host):
            dirs.sort()
            rel = os.path.relpath(base, host)
            for entry in sorted(dirs) + sorted(files):
                name = os.path.normpath(os.path.join(arcname, rel, entry))
                try:
                    add(os.path.join(base, entry), name)
                except (FileNotFoundError, PermissionError):
                    continue
                chunk = sink.take()
                if chunk:
                    yield chunk
    tar.close()
    yield sink.take()


def get(c: Any, proc_root: str | None, path: str) -> tuple[Iterator[bytes], dict]:
    stack = contextlib.ExitStack()
    try:
        root = stack.enter_context(container_root(c, proc_root, writable=False))
        info = stat_path(root, path, c.name)
        host = _locate(root, path, c.name)
    except BaseException:
        stack.close()
        raise
    arcname = "." if path.endswith("/.") else (os.path.basename(path.rstrip("/")) or ".")

    def chunks() -> Iterator[bytes]:
        with stack:
            yield from _tar_tree(host, arcname)

    return chunks(), info


def export(c: Any) -> Iterator[bytes]:
    stack = contextlib.ExitStack()
    root = stack.enter_context(container_root(c, None, writable=False))

    def chunks() -> Iterator[bytes]:
        with stack:
            yield from _tar_tree(root, ".", skip_root=True)

    return chunks()


def _clean_parts(name: str) -> list[str]:
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise InvalidParameter(f"refusing to extract {name!r}: path escapes the destination")
    return parts


def put(root: str, path: str, fileobj: Any, name: str, no_overwrite_dir_non_dir: bool) -> None:
    dest = secure_join(root, path)
    if not os.path.exists(dest):
        raise NotFound(f"Could not find the file {path} in container {name}")
    if not os.path.isdir(dest):
        raise InvalidParameter("extraction point is not a directory")
    base = "/" + os.path.relpath(dest, root).lstrip("./") if os.path.relpath(dest, root) != "." else "/"
    try:
        tar = tarfile.open(fileobj=fileobj, mode="r|*")
    except tarfile.TarError as e:
        raise InvalidParameter(f"invalid tar archive: {e}") from None
    with tar:
        for m in tar:
            parts = _clean_parts(m.name)
            if not parts:
                continue
            inner = os.path.join(base, *parts)
            parent = mkdir_in_root(root, os.path.dirname(inner))
            target = os.path.join(parent, parts[-1])
            exists = os.path.lexists(target)
            is_dir = exists and os.path.isdir(target) and not os.path.islink(target)
            if exists and no_overwrite_dir_non_dir and is_dir != m.isdir():
                raise InvalidParameter("cannot overwrite {} {!r} with {}".format(
                    "directory" if is_dir else "non-directory", inner, "non-directory" if is_dir else "directory"))
            if exists and not (is_dir and m.isdir()):
                if is_dir:
                    shutil.rmtree(target)
                else:
                    os.unlink(target)
            if m.isdir():
                if not is_dir:
                    os.mkdir(target, 0o755)
            elif m.isreg():
                src = tar.extractfile(m)
                fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
                with os.fdopen(fd, "wb") as out:
                    while src is not None:
                        chunk = src.read(1 << 20)
                        if not chunk:
                            break
                        out.write(chunk)
            elif m.issym():
                os.symlink(m.linkname, target)
            elif m.islnk():
                os.link(secure_join(root, os.path.join(base, *_clean_parts(m.linkname))), target)
            elif m.isfifo():
                os.mkfifo(target)
            else:
                continue  # devices are not copied into containers
            try:
                os.lchown(target, m.uid, m.gid)
            except OSError:
                pass
            if not m.issym():
                os.chmod(target, m.mode & 0o7777)
                os.utime(target, (m.mtime, m.mtime))
