"""File operations that stay inside a directory tree whatever its content says.

Image layers, build contexts, staging dirs, volumes and container roots are written by people we do not trust: any
component of a path inside them may be a symlink (``etc -> /etc``, ``x -> ../../..``), and in a running container
it may change between two system calls. A ``Root`` holds an fd of the tree's top directory and resolves every path
relative to it, as if it were ``/``:

* with ``openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)`` where the kernel has it (5.6+): the kernel clamps
  ``..`` and absolute symlinks to the root and refuses ``/proc/self/fd``-style magic links, atomically;
* otherwise by walking the path one component at a time with ``O_PATH | O_NOFOLLOW`` opens relative to held
  directory fds, reading each symlink and resolving it ourselves against the root (``..`` at the root stays at the
  root), with a limit on the number of links followed.

Callers then act on the last component with the ``*at`` forms (``dir_fd=``, ``follow_symlinks=False``), never with
a joined path string. ``Root(..., follow_links=False)`` refuses symlinks anywhere in a path instead of following
them: for layer directories, whose links only mean something in the merged image (see ``ImageView``).
"""
from __future__ import annotations

import ctypes
import errno
import os
import posixpath
import stat
from collections.abc import Iterator

RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_IN_ROOT = 0x10
MAX_LINKS = 40  # the kernel's own limit on links followed in one lookup

_OPENAT2_NR = {"x86_64": 437, "aarch64": 437}
_libc = ctypes.CDLL(None, use_errno=True)  # the interpreter's own C library (see syscalls)
_libc.syscall.restype = ctypes.c_long


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


_openat2_available: bool | None = None if os.uname().machine in _OPENAT2_NR else False


def use_openat2(enabled: bool | None) -> None:
    """``False`` forces the component walk (tests of the fallback); ``None`` probes the kernel again."""
    global _openat2_available
    _openat2_available = enabled


def openat2_in_use() -> bool:
    return bool(_openat2_available)


def _openat2(dirfd: int, path: str, flags: int, mode: int, resolve: int) -> int:
    """One openat2 call; raises OSError, or returns -1 if the kernel has no openat2 (ENOSYS)."""
    global _openat2_available
    tmpfile = getattr(os, "O_TMPFILE", 0)
    how = _OpenHow(flags, mode if flags & os.O_CREAT or (tmpfile and flags & tmpfile == tmpfile) else 0, resolve)
    raw = os.fsencode(path)
    for _ in range(16):  # EAGAIN: a concurrent rename made the kernel unsure ".." stayed inside; try again
        fd = _libc.syscall(_OPENAT2_NR[os.uname().machine], dirfd, raw, ctypes.byref(how), ctypes.sizeof(how))
        err = ctypes.get_errno()
        if fd < 0 and err == errno.ENOSYS:
            _openat2_available = False  # an older kernel (or a seccomp filter answering ENOSYS): walk instead
            return -1
        _openat2_available = True
        if fd >= 0:
            return int(fd)
        if err != errno.EAGAIN:
            raise OSError(err, os.strerror(err), path)
    raise OSError(errno.EAGAIN, os.strerror(errno.EAGAIN), path)


def split(path: str) -> list[str]:
    return [p for p in path.split("/") if p not in ("", ".")]


class Root:
    """A directory tree that every path given to this object is resolved inside of (see the module docstring)."""

    def __init__(self, path: str, *, follow_links: bool = True) -> None:
        self.follow_links = follow_links
        self.fd = os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Root:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except (OSError, AttributeError):
            pass

    # --- resolution ---------------------------------------------------------------------------------------------

    def open(self, path: str, flags: int = os.O_RDONLY, mode: int = 0o644, *, follow: bool = True) -> int:
        """An fd of ``path`` inside the tree; ``follow=False`` does not follow a symlink in the last component
        (with ``O_PATH`` that opens the link itself). The caller closes the fd."""
        flags |= os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW)
        if _openat2_available is not False:
            resolve = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS | (0 if self.follow_links else RESOLVE_NO_SYMLINKS)
            fd = _openat2(self.fd, "/".join(split(path)) or ".", flags, mode, resolve)
            if fd >= 0:
                return fd
        return self._walk(path, flags, mode, follow)

    def _walk(self, path: str, flags: int, mode: int, follow_last: bool) -> int:
        """The fallback: one component at a time, symlinks resolved by us against the root."""
        stack = [os.dup(self.fd)]  # the directories we came through; stack[0] is the root
        parts = split(path)
        links = 0
        try:
            while parts:
                part = parts.pop(0)
                if part == "..":
                    if len(stack) > 1:
                        os.close(stack.pop())
                    continue
                last = not parts
                try:
                    probe = os.open(part, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=stack[-1])
                except FileNotFoundError:
                    if last and flags & os.O_CREAT:
                        return os.open(part, flags | os.O_NOFOLLOW, mode, dir_fd=stack[-1])
                    raise
                st = os.fstat(probe)
                if stat.S_ISLNK(st.st_mode) and (not last or follow_last):
                    try:
                        target = os.readlink("", dir_fd=probe)
                    finally:
                        os.close(probe)
                    links += 1
                    if not self.follow_links or links > MAX_LINKS:
                        raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), path)
                    if target.startswith("/"):
                        while len(stack) > 1:
                            os.close(stack.pop())
                    parts = split(target) + parts
                    continue
                if not last:
                    if not stat.S_ISDIR(st.st_mode):
                        os.close(probe)
                        raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), path)
                    stack.append(probe)
                    continue
                if flags & os.O_PATH and not flags & os.O_DIRECTORY:
                    return probe
                os.close(probe)
                # Reopened by name with O_NOFOLLOW: if it became a symlink meanwhile, this fails instead of following
                return os.open(part, flags | os.O_NOFOLLOW, mode, dir_fd=stack[-1])
            return os.open(".", flags & ~(os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW), dir_fd=stack[-1])
        finally:
            for fd in stack:
                os.close(fd)

    def open_parent(self, path: str) -> tuple[int, str]:
        """(fd of the directory holding the last component, that component's name). The name is ``"."`` for the
        root itself, or when the path ends in ``.`` or ``..`` (the fd is then the directory the path names)."""
        parts = path.split("/")
        while parts and parts[-1] == "":
            parts.pop()
        if not split(path) or parts[-1] in (".", ".."):
            return self.open(path, os.O_PATH | os.O_DIRECTORY), "."
        return self.open("/".join(parts[:-1]), os.O_PATH | os.O_DIRECTORY), parts[-1]

    def resolve(self, path: str) -> str:
        """The absolute path (inside the tree) that ``path`` names, links followed, as moby's
        FollowSymlinkInScope; components that do not exist are kept as written."""
        parts = split(path)
        out: list[str] = []
        links = 0
        while parts:
            part = parts.pop(0)
            if part == "..":
                if out:
                    out.pop()
                continue
            try:
                st = self.lstat("/".join(out + [part]))
            except (FileNotFoundError, NotADirectoryError):
                out.append(part)
                continue
            if not stat.S_ISLNK(st.st_mode):
                out.append(part)
                continue
            links += 1
            if links > MAX_LINKS:
                raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), path)
            target = self.readlink("/".join(out + [part]))
            if target.startswith("/"):
                out = []
            parts = split(target) + parts
        return "/" + "/".join(out)

    # --- queries ------------------------------------------------------------------------------------------------

    def lstat(self, path: str) -> os.stat_result:
        parent, name = self.open_parent(path)
        try:
            return os.stat(name, dir_fd=parent, follow_symlinks=False)
        finally:
            os.close(parent)

    def stat(self, path: str) -> os.stat_result:
        fd = self.open(path, os.O_PATH)
        try:
            return os.fstat(fd)
        finally:
            os.close(fd)

    def lexists(self, path: str) -> bool:
        try:
            self.lstat(path)
        except (FileNotFoundError, NotADirectoryError):
            return False
        return True

    def readlink(self, path: str) -> str:
        parent, name = self.open_parent(path)
        try:
            return os.readlink(name, dir_fd=parent)
        finally:
            os.close(parent)

    def listdir(self, path: str) -> list[str]:
        fd = self.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            return os.listdir(fd)
        finally:
            os.close(fd)

    def getxattr(self, path: str, attr: str) -> bytes | None:
        parent, name = self.open_parent(path)
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=parent)
        except OSError:
            return None  # a symlink or a special file: no xattrs we care about
        finally:
            os.close(parent)
        try:
            return os.getxattr(fd, attr)
        except OSError:
            return None
        finally:
            os.close(fd)

    # --- changes ------------------------------------------------------------------------------------------------

    def makedirs(self, path: str, mode: int = 0o755, *, replace: bool = False) -> int:
        """An ``O_RDONLY`` fd of directory ``path``, creating missing components (links inside the tree are followed
        per the Root's policy). ``replace=True`` removes a non-directory in the way, as tar extraction does."""
        done: list[str] = []
        # A dangling link on the way (``mnt -> /srv/data``) names where to create, inside the tree, as securejoin
        for part in split(path if replace or not self.follow_links else self.resolve(path)):
            done.append(part)
            prefix = "/".join(done)
            try:
                os.close(self.open(prefix, os.O_PATH | os.O_DIRECTORY, follow=not replace))
                continue
            except FileNotFoundError:
                pass
            except (NotADirectoryError, OSError) as exc:
                if not replace or exc.errno not in (errno.ENOTDIR, errno.ELOOP):
                    raise
            parent, name = self.open_parent(prefix)
            try:
                if replace:
                    clear(parent, name)
                try:
                    os.mkdir(name, mode, dir_fd=parent)
                except FileExistsError:
                    pass
            finally:
                os.close(parent)
        return self.open(path, os.O_RDONLY | os.O_DIRECTORY)

    def mount_point(self, path: str, directory: bool = True) -> int:
        """An fd of ``path`` to mount on, made when missing as Docker does: a folder, or an empty file (for a
        file bind mount)."""
        if directory:
            return self.makedirs(path)
        parent = self.makedirs(posixpath.dirname(path.rstrip("/")) or "/")
        try:
            return os.open(posixpath.basename(path.rstrip("/")), os.O_RDONLY | os.O_CREAT | os.O_NOFOLLOW |
                           os.O_CLOEXEC, 0o644, dir_fd=parent)
        finally:
            os.close(parent)


def clear(parent: int, name: str, keep_dir: bool = False) -> None:
    """Remove ``name`` in directory ``parent`` (a whole folder unless ``keep_dir``) without following links."""
    try:
        st = os.stat(name, dir_fd=parent, follow_symlinks=False)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(name, dir_fd=parent)
    elif not keep_dir:  # shutil.rmtree has dir_fd only from Python 3.11
        folder = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
        try:
            for entry in os.listdir(folder):
                clear(folder, entry)
        finally:
            os.close(folder)
        os.rmdir(name, dir_fd=parent)


def set_attrs(parent: int, name: str, st: os.stat_result, uid: int | None = None, gid: int | None = None,
              mode: int | None = None) -> None:
    """Owner, mode (not for links) and times of ``name`` in ``parent`` from ``st``; never follows a link."""
    os.chown(name, st.st_uid if uid is None else uid, st.st_gid if gid is None else gid, dir_fd=parent,
             follow_symlinks=False)
    if not stat.S_ISLNK(st.st_mode):
        chmod_at(parent, name, stat.S_IMODE(st.st_mode) if mode is None else mode)
    os.utime(name, ns=(st.st_atime_ns, st.st_mtime_ns), dir_fd=parent, follow_symlinks=False)


def chmod_at(parent: int, name: str, mode: int) -> None:
    """chmod of ``name`` in ``parent`` that never follows a link (links have no mode of their own: skipped).
    Through an ``O_PATH`` fd, as glibc's fchmodat(AT_SYMLINK_NOFOLLOW) does where it has it."""
    fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
    try:
        if not stat.S_ISLNK(os.fstat(fd).st_mode):
            os.chmod(fd_path(fd), mode)
    finally:
        os.close(fd)


def copy_file_at(src_parent: int, src_name: str, dst_parent: int, dst_name: str) -> os.stat_result:
    """Copy one directory entry (a regular file's bytes, a symlink as a link, a fifo) between two directory fds,
    replacing what is at the destination. Returns the source's stat; other types (devices, sockets) are skipped
    and their stat returned for the caller to decide. Attributes are left to ``set_attrs``."""
    st = os.stat(src_name, dir_fd=src_parent, follow_symlinks=False)
    if stat.S_ISREG(st.st_mode):
        src = os.open(src_name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=src_parent)
        try:
            if not stat.S_ISREG(os.fstat(src).st_mode):
                raise OSError(errno.EAGAIN, f"{src_name} changed while it was copied")
            clear(dst_parent, dst_name)
            dst = os.open(dst_name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                          dir_fd=dst_parent)
            try:
                copy_fd(src, dst)
            finally:
                os.close(dst)
        finally:
            os.close(src)
    elif stat.S_ISLNK(st.st_mode):
        target = os.readlink(src_name, dir_fd=src_parent)
        clear(dst_parent, dst_name)
        os.symlink(target, dst_name, dir_fd=dst_parent)
    elif stat.S_ISFIFO(st.st_mode):
        clear(dst_parent, dst_name)
        os.mkfifo(dst_name, 0o600, dir_fd=dst_parent)
    return st


def copy_fd(src: int, dst: int) -> None:
    while True:
        chunk = os.read(src, 1 << 20)
        if not chunk:
            return
        view = memoryview(chunk)
        while view:
            view = view[os.write(dst, view):]


def copy_tree(src: int, dst: int) -> None:
    """Copy the contents of directory fd ``src`` into directory fd ``dst`` keeping owners, modes, times and
    symlinks (as links); device nodes and sockets are skipped. Nothing is followed on either side."""
    for name in sorted(os.listdir(src)):
        st = os.stat(name, dir_fd=src, follow_symlinks=False)
        if stat.S_ISDIR(st.st_mode):
            clear(dst, name, keep_dir=True)
            try:
                os.mkdir(name, 0o700, dir_fd=dst)
            except FileExistsError:
                pass
            sub_src = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=src)
            try:
                sub_dst = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dst)
                try:
                    copy_tree(sub_src, sub_dst)
                finally:
                    os.close(sub_dst)
            finally:
                os.close(sub_src)
        elif not (stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode) or stat.S_ISFIFO(st.st_mode)):
            continue
        else:
            st = copy_file_at(src, name, dst, name)
        set_attrs(dst, name, st)


def fd_path(dirfd: int, name: str = "") -> str:
    """A path for calls that have no ``dir_fd`` form (xattrs, mount targets): the kernel resolves our own fd's
    magic link, then only ``name`` (pass ``follow_symlinks=False`` to keep its last component unfollowed)."""
    return f"/proc/self/fd/{dirfd}" + ("/" + name if name else "")


def walk(top: int) -> Iterator[tuple[str, int, str, os.stat_result]]:
    """(relative folder, its fd, entry name, lstat) for everything below directory fd ``top``, top-down, folders
    before files, each sorted; never following a link (the fds are valid during the iteration step only)."""
    for dirpath, dirnames, filenames, dirfd in os.fwalk(".", dir_fd=top):
        dirnames.sort()
        rel = os.path.normpath(dirpath)
        for name in dirnames + sorted(filenames):
            try:
                st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
            except FileNotFoundError:
                continue  # removed while we walk
            yield ("" if rel == "." else rel), dirfd, name, st


__all__ = ["Root", "chmod_at", "clear", "copy_fd", "copy_file_at", "copy_tree", "fd_path", "openat2_in_use", "set_attrs", "split",
           "use_openat2", "walk"]
