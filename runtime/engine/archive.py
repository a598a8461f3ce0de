"""``docker cp``, ``HEAD/GET/PUT /archive`` and ``docker export``: tar streams out of and into a container.

Every path is resolved through ``safepath.Root`` inside the container's root, and every file is read or written
relative to an open directory fd without following links, so nothing a container holds (``x -> /``, a folder
swapped for a symlink while the copy runs: CVE-2018-15664) can point a copy at the host.

* A running container is reached through ``/proc/<pid>/root``, which shows its own mount table (volumes, anonymous
  volumes, binds). It is frozen (freezer cgroup, as moby pauses it) for the duration, so the tree does not change
  under the copy; the fd-relative resolution alone already keeps it inside.
* A stopped container gets a temporary overlay mount of its layers with each of its volume and bind mounts
  mounted on top, every mount point resolved inside that root and mounted through its fd.

The container's lock is held meanwhile (start, stop and pause wait), as moby does. Uploads are extracted as they
arrive (no second copy on disk), as moby does too: a slow client holds the container until the request body's
idle timeout.
"""
from __future__ import annotations

import contextlib
import errno
import os
import posixpath
import secrets
import stat
import tarfile
from collections.abc import Iterator
from typing import IO, Any

from machines.runtime import timefmt
from machines.runtime.errors import InvalidParameter, NotFound
from machines.runtime.images.archive import ReadAhead, stream_tar, tree_tar, write_new_file
from machines.runtime.linux import cgroups, safepath
from machines.runtime.linux import syscalls as sc
from machines.runtime.linux.paths import tree_size
from machines.runtime.linux.process import bind_mount

GO_MODE_BITS = ((stat.S_ISDIR, 1 << 31), (stat.S_ISLNK, 1 << 27), (stat.S_ISFIFO, 1 << 25),
                (stat.S_ISSOCK, 1 << 24), (stat.S_ISBLK, 1 << 26), (stat.S_ISCHR, (1 << 26) | (1 << 21)))


def unmount_quietly(path: str) -> None:
    try:
        sc.umount(path, sc.MNT_DETACH)
    except OSError:
        pass


@contextlib.contextmanager
def _overlay(c: Any, writable: bool) -> Iterator[str]:
    """A temporary overlay mount of the container's layers (rw: its own upper dir; ro: upper as a lower)."""
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
            unmount_quietly(target)  # lazily, with every mount below it (and their propagated copies)
    finally:
        try:
            os.rmdir(target)
        except OSError:
            pass


def _mount_volumes(c: Any, root: safepath.Root) -> None:
    """The container's volume and bind mounts on top of a stopped container's root, parents first."""
    mounts = [m for m in c.data.get("Mounts") or [] if m.get("Type") in ("volume", "bind") and m.get("Source")]
    for m in sorted(mounts, key=lambda m: len(safepath.split(m["Destination"]))):
        source = m["Source"]
        if not os.path.exists(source):
            continue  # a bind whose host path went away: nothing to show there
        bind_mount(source, root, m["Destination"], not m.get("RW", True))


@contextlib.contextmanager
def _frozen(c: Any) -> Iterator[None]:
    """Freeze a running container's processes for the block (unless it is paused already, then it stays so)."""
    if c.state.get("Paused"):
        yield
        return
    group = cgroups.open_cgroup("machines/" + c.id)
    try:
        group.set_frozen(True)
        frozen = True
    except OSError:
        frozen = False  # no freezer here: the fd-relative resolution still keeps every access inside
    try:
        yield
    finally:
        if frozen:
            group.set_frozen(False)


@contextlib.contextmanager
def container_view(c: Any) -> Iterator[safepath.Root]:
    """The container's filesystem as ``docker cp`` sees it (mounts included), locked and still."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(c.lock)
        if c.running:
            stack.enter_context(_frozen(c))
            root = stack.enter_context(safepath.Root(f"/proc/{c.state['Pid']}/root"))
        else:
            root = stack.enter_context(safepath.Root(stack.enter_context(_overlay(c, writable=True))))
            _mount_volumes(c, root)
        yield root


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


@contextlib.contextmanager
def _resolving(path: str, name: str) -> Iterator[None]:
    """Lookup failures in Docker's words: a missing path is a 404, a link loop (or a ``/proc`` magic link, which
    openat2 refuses) a 400, never a 500."""
    try:
        yield
    except (FileNotFoundError, NotADirectoryError):
        raise NotFound(f"Could not find the file {path} in container {name}") from None
    except OSError as e:
        if e.errno != errno.ELOOP:
            raise
        raise InvalidParameter(f"{path}: too many levels of symbolic links") from None


def _locate(root: safepath.Root, path: str, name: str) -> tuple[int, str, os.stat_result]:
    """(parent dir fd, name, lstat) of ``path``: links in all but the last component are followed inside the root,
    the last one too when the path ends in ``/`` or ``/.`` (moby's ResolvePath)."""
    lookup = path + "." if path.endswith("/") and path.strip("/") else path
    with _resolving(path, name):
        parent, base = root.open_parent(lookup)
    try:
        with _resolving(path, name):
            return parent, base, os.stat(base, dir_fd=parent, follow_symlinks=False)
    except BaseException:
        os.close(parent)
        raise


def _stat(root: safepath.Root, path: str, st: os.stat_result) -> dict:
    link = root.resolve(path) if stat.S_ISLNK(st.st_mode) else ""
    mtime = timefmt.rfc3339_nano(st.st_mtime_ns)
    return {"name": posixpath.basename(path.rstrip("/")) or "/", "size": st.st_size, "mode": _go_mode(st),
            "mtime": mtime, "linkTarget": link}


def head(c: Any, path: str) -> dict:
    """``HEAD /archive``: the stat of ``path`` (X-Docker-Container-Path-Stat)."""
    with container_view(c) as root:
        parent, _, st = _locate(root, path, c.name)
        os.close(parent)
        with _resolving(path, c.name):
            return _stat(root, path, st)


class _Held:
    """Tar chunks that hold the container (lock, freeze, temporary mounts) until they are exhausted or closed, or
    dropped unread: a plain generator that never started would never run its cleanup."""

    def __init__(self, chunks: Iterator[bytes], stack: contextlib.ExitStack) -> None:
        self._chunks = chunks
        self._stack = stack

    def __iter__(self) -> _Held:
        return self

    def __next__(self) -> bytes:
        try:
            return next(self._chunks)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        self._stack.close()

    def __del__(self) -> None:
        self.close()


def get(c: Any, path: str) -> tuple[Iterator[bytes], dict]:
    """``GET /archive``: a tar of ``path`` and its stat; the container stays locked (and frozen) while it streams."""
    stack = contextlib.ExitStack()
    try:
        root = stack.enter_context(container_view(c))
        parent, base, st = _locate(root, path, c.name)
        stack.callback(os.close, parent)
        with _resolving(path, c.name):
            info = _stat(root, path, st)
    except BaseException:
        stack.close()
        raise
    arcname = "." if path.endswith("/.") else (posixpath.basename(path.rstrip("/")) or ".")
    return _Held(tree_tar(parent, base, arcname), stack), info


def export(c: Any) -> Iterator[bytes]:
    """``docker export``: the layers only (no volumes), as Docker's."""
    stack = contextlib.ExitStack()
    root = stack.enter_context(safepath.Root(stack.enter_context(_overlay(c, writable=False))))
    return _Held(tree_tar(root.fd, ".", "", skip_root=True), stack)


def _clean_parts(name: str) -> list[str]:
    parts = safepath.split(name)
    if ".." in parts:
        raise InvalidParameter(f"refusing to extract {name!r}: path escapes the destination")
    return parts


def put(c: Any, path: str, fileobj: IO[bytes], no_overwrite_dir_non_dir: bool) -> None:
    """``PUT /archive``: extract a tar, streamed from the request body, into the folder ``path`` of the container.

    As moby, each member is written as it arrives while the container is held (locked, and frozen when running):
    a client that stalls holds it until the body's idle timeout, and an archive refused or cut off half-way
    leaves the members before the bad one in place. The body is read by a thread of its own, at most a few MiB
    ahead of the file writes (both release the GIL: a 1 GiB upload took 3.8 s read and written in turn, 1.3 s
    this way); it is stopped after the container is let go, so a refused archive never holds it while the
    reader waits for a stalled client."""
    with contextlib.ExitStack() as reading, container_view(c) as root:  # the view closes first, then the reader
        with _resolving(path, c.name):
            st = root.stat(path)
        if not stat.S_ISDIR(st.st_mode):
            raise InvalidParameter("extraction point is not a directory")
        with _resolving(path, c.name):
            base = root.resolve(path)
        _check_writable(c, base)
        body = reading.enter_context(ReadAhead(fileobj))  # only now: a refused path sends no 100 Continue
        try:
            with stream_tar(body) as tar:  # type: ignore[arg-type]
                for m in tar:
                    _extract(root, base, tar, m, no_overwrite_dir_non_dir)
        except tarfile.TarError as e:
            raise InvalidParameter(f"invalid tar archive: {e}") from None


def _check_writable(c: Any, path: str) -> None:
    """moby's checks before extracting: a read-only mount, or a read-only root outside any mount, refuses."""
    in_volume = False
    for m in c.data.get("Mounts") or []:
        dest = "/" + "/".join(safepath.split(m.get("Destination") or ""))
        if path == dest or path.startswith(dest.rstrip("/") + "/"):
            if not m.get("RW", True):
                raise InvalidParameter("mounted volume is marked read-only")
            in_volume = True
    if not in_volume and (c.data.get("HostConfig") or {}).get("ReadonlyRootfs"):
        raise InvalidParameter("container rootfs is marked read-only")


def _extract(root: safepath.Root, base: str, tar: tarfile.TarFile, m: tarfile.TarInfo, no_overwrite: bool) -> None:
    """One member: its folder made inside the root, then created with ``*at`` calls on the last name only (what
    is there is replaced unless both are folders, as moby's Unpack), attributes set without following links."""
    parts = _clean_parts(m.name)
    if not parts:
        return
    inner = posixpath.join(base, *parts)
    parent = root.makedirs(posixpath.join(base, *parts[:-1]))
    name = parts[-1]
    try:
        try:
            current: os.stat_result | None = os.stat(name, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            current = None
        is_dir = current is not None and stat.S_ISDIR(current.st_mode)
        if current is not None and no_overwrite and is_dir != m.isdir():
            raise InvalidParameter("cannot overwrite {} {!r} with {}".format(
                "directory" if is_dir else "non-directory", inner, "non-directory" if is_dir else "directory"))
        if current is not None:
            safepath.clear(parent, name, keep_dir=m.isdir())
        if m.isdir():
            if not is_dir:
                os.mkdir(name, 0o755, dir_fd=parent)
        elif m.isreg():
            write_new_file(tar, m, parent, name)
        elif m.issym():
            os.symlink(m.linkname, name, dir_fd=parent)
        elif m.islnk():
            source, source_name = root.open_parent(posixpath.join(base, *_clean_parts(m.linkname)))
            try:
                os.link(source_name, name, src_dir_fd=source, dst_dir_fd=parent, follow_symlinks=False)
            finally:
                os.close(source)
            return
        elif m.isfifo():
            os.mkfifo(name, 0o600, dir_fd=parent)
        else:
            return  # devices are not copied into containers
        try:
            os.chown(name, m.uid, m.gid, dir_fd=parent, follow_symlinks=False)
        except OSError:
            pass
        if not m.issym():
            safepath.chmod_at(parent, name, m.mode & 0o7777)
        os.utime(name, (m.mtime, m.mtime), dir_fd=parent, follow_symlinks=False)
    finally:
        os.close(parent)


__all__ = ["container_view", "export", "get", "head", "put", "tree_size", "unmount_quietly"]
