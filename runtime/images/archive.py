"""Layer tars: safe extraction into an overlay lower dir, and tars made back from an overlay upper dir.

Extraction never follows a link and never writes outside its directory: a hostile layer (``../x``, absolute names,
a symlink then a file written through it, a hardlink out, a header bomb) raises LayerRefused. Device nodes and fifos
are created as Docker creates them (``tar -c .`` of a debootstrap tree holds ``/dev``'s nodes); where the daemon may
not make device nodes (not root, or in a user namespace) they are skipped with a warning in its log, as dockerd
skips them. Containers reach such nodes only through the devices cgroup (or not at all: see ``prepare_root``).
Callers extract into a fresh temporary directory and rename it into place only on success, so a refused layer
leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import hashlib
import io
import logging
import os
import posixpath
import queue
import shutil
import stat
import subprocess
import tarfile
import threading
import zlib
from collections.abc import Callable, Iterator
from typing import IO, Any

from machines.runtime.errors import InvalidParameter
from machines.runtime.linux import safepath

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
OVERLAY_OPAQUE_XATTR = "trusted.overlay.opaque"
XATTR_PAX_PREFIX = "SCHILY.xattr."
# Go's archive/tar refuses pax and GNU long-name records above 1 MiB; we do the same before tarfile reads them.
MAX_SPECIAL_HEADER = 1 << 20
MAX_SPECIAL_TOTAL = 8 << 20
COPY_CHUNK = 1 << 20

log = logging.getLogger("runtime.images")


class LayerRefused(InvalidParameter):
    """A layer tries to reach outside itself or carries something we do not create from archives."""


class _GuardedTarInfo(tarfile.TarInfo):
    """Refuses oversized pax / GNU long-name headers before tarfile buffers them in memory, and caps their total
    (global pax headers accumulate for the whole archive)."""

    def _proc_member(self, tarfile_: tarfile.TarFile) -> tarfile.TarInfo:  # type: ignore[override]
        special = (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE,
                   tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK)
        if self.type in special:
            if self.size > MAX_SPECIAL_HEADER:
                raise LayerRefused(f"layer refused: {self.size}-byte extended header exceeds the {MAX_SPECIAL_HEADER}-byte limit")
            total = getattr(tarfile_, "_special_bytes", 0) + self.size
            if total > MAX_SPECIAL_TOTAL:
                raise LayerRefused(f"layer refused: extended headers exceed {MAX_SPECIAL_TOTAL} bytes in total")
            tarfile_._special_bytes = total  # type: ignore[attr-defined]
        return super()._proc_member(tarfile_)  # type: ignore[misc]


# --- compression ---------------------------------------------------------------------------------------------

def detect_compression(head: bytes) -> str:
    """``gzip``, ``zstd``, ``bzip2``, ``xz`` or ``none`` from a stream's first bytes."""
    if head[:2] == b"\x1f\x8b":
        return "gzip"
    if head[:4] == b"\x28\xb5\x2f\xfd":
        return "zstd"
    if head[:3] == b"BZh":
        return "bzip2"
    if head[:6] == b"\xfd7zXZ\x00":
        return "xz"
    return "none"


class _Decompressed:
    """Context manager: a readable stream of ``path`` decompressed (zstd through the ``zstd`` CLI)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._proc: subprocess.Popen | None = None
        self._file: Any = None  # a gzip, bz2, lzma or plain binary file

    def __enter__(self) -> IO[bytes]:
        with open(self.path, "rb") as f:
            kind = detect_compression(f.read(6))
        if kind == "zstd":
            if shutil.which("zstd") is None:
                raise InvalidParameter("zstd-compressed layer but no zstd program on this host")
            self._proc = subprocess.Popen(["zstd", "-dcq", self.path], stdout=subprocess.PIPE)
            return self._proc.stdout  # type: ignore[return-value]
        if kind == "gzip":
            self._file = gzip.open(self.path, "rb")
        elif kind == "bzip2":
            import bz2
            self._file = bz2.open(self.path, "rb")
        elif kind == "xz":
            import lzma
            self._file = lzma.open(self.path, "rb")
        else:
            self._file = open(self.path, "rb")
        return self._file

    def __exit__(self, *exc: object) -> None:
        if self._file is not None:
            self._file.close()
        if self._proc is not None:
            assert self._proc.stdout is not None
            self._proc.stdout.close()
            if self._proc.wait() != 0 and exc[0] is None:
                raise InvalidParameter("zstd failed to decompress the layer")


def decompressed(path: str) -> _Decompressed:
    """Open a possibly compressed blob for reading its uncompressed bytes."""
    return _Decompressed(path)


def read_exact(raw: IO[bytes], size: int) -> bytes:
    """Exactly ``size`` bytes of ``raw`` (fewer only at its end; all that is left when negative), however few each
    read of it gives (a socket, a chunked request body)."""
    parts: list[bytes] = []
    left = size
    while left != 0:
        data = raw.read(left if left > 0 else COPY_CHUNK)
        if not data:
            break
        parts.append(data)
        if left > 0:
            left -= len(data)
    return b"".join(parts)


def read_into(raw: IO[bytes], view: memoryview) -> int:
    """One read of ``raw`` into ``view`` (its ``readinto`` when it has one: no intermediate bytes object)."""
    readinto = getattr(raw, "readinto", None)
    if readinto is not None:
        return readinto(view) or 0
    data = raw.read(len(view))
    view[:len(data)] = data
    return len(data)


class TarSource:
    """The stream a tar is read from, shaped for speed: exact reads for tarfile's headers (so its own reader never
    holds data ahead of us), and member data copied straight into files with large reads. tarfile's stream reader
    copies every byte three times in Python; this reads it once into one buffer and writes it from there.
    ``sha``, when given, hashes every byte read (a layer's diff ID, trailing padding included)."""

    def __init__(self, raw: IO[bytes], sha: Any = None) -> None:
        self._raw = raw
        self._buffer: memoryview | None = None
        self.sha = sha
        self.count = 0

    def _seen(self, data: Any) -> None:
        if self.sha is not None:
            self.sha.update(data)
        self.count += len(data)

    def read(self, size: int = -1) -> bytes:
        """Exactly ``size`` bytes (fewer only at the end; all that is left when negative)."""
        data = read_exact(self._raw, size)
        self._seen(data)
        return data

    def copy_to(self, fd: int, size: int) -> None:
        """The next ``size`` bytes written to ``fd``; tarfile's error when the data ends early."""
        if self._buffer is None:
            self._buffer = memoryview(bytearray(COPY_CHUNK))
        while size:
            view = self._buffer[:min(size, COPY_CHUNK)]
            n = read_into(self._raw, view)
            if not n:
                raise tarfile.ReadError("unexpected end of data")
            chunk = view[:n]
            self._seen(chunk)
            while chunk:
                chunk = chunk[os.write(fd, chunk):]
            size -= n

    def skip(self, size: int) -> None:
        """Pass over up to ``size`` bytes (a member's padding, which tarfile does not miss at the very end)."""
        self.read(size)

    def drain(self) -> None:
        """Read to the end: the padding after the tar's end marker belongs to the diff ID too."""
        while self.read(COPY_CHUNK):
            pass

    @property
    def digest(self) -> str:
        return "sha256:" + self.sha.hexdigest()


def open_tar(source: TarSource) -> tarfile.TarFile:
    """A streamed tar over ``source`` whose reader asks for one 512-byte block at a time, so that after each header
    the stream stands exactly at the member's data (see ``copy_member``)."""
    return tarfile.open(fileobj=source, mode="r|", tarinfo=_GuardedTarInfo,  # type: ignore[call-overload]
                        bufsize=tarfile.BLOCKSIZE)


def write_new_file(tar: tarfile.TarFile, m: tarfile.TarInfo, parent: int, name: str) -> None:
    """Create ``name`` in the folder open as ``parent`` and write regular member ``m``'s data into it: never through a
    link nor over an existing file (O_EXCL, O_NOFOLLOW), private (0600) until the member's own mode is applied."""
    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=parent)
    try:
        copy_member(tar, m, fd)
    finally:
        os.close(fd)


def copy_member(tar: tarfile.TarFile, m: tarfile.TarInfo, fd: int) -> None:
    """Write regular member ``m``'s data to ``fd``: straight from the ``TarSource`` under a tar from ``open_tar``
    (its padding skipped and tarfile's position moved past both), else through ``extractfile``."""
    stream: Any = tar.fileobj
    source = getattr(stream, "fileobj", None)
    next_header = m.offset_data + ((m.size + tarfile.BLOCKSIZE - 1) // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
    if isinstance(source, TarSource) and not m.sparse and stream.buf == b"" and stream.pos == m.offset_data:
        source.copy_to(fd, m.size)
        source.skip(next_header - m.offset_data - m.size)
        stream.pos = next_header
        return
    src = tar.extractfile(m)
    assert src is not None
    for chunk in iter(lambda: src.read(COPY_CHUNK), b""):
        while chunk:
            chunk = chunk[os.write(fd, chunk):]


def stream_tar(fileobj: IO[bytes]) -> tarfile.TarFile:
    """A tar read from ``fileobj``, plain (the fast ``open_tar`` path) or compressed (tarfile's own ``r|*`` reader,
    with its errors: what ``docker cp`` and build contexts send is plain)."""
    head = read_exact(fileobj, 6)
    raw = _Replay(head, fileobj)
    if detect_compression(head) == "none":
        return open_tar(TarSource(raw))  # type: ignore[arg-type]
    return tarfile.open(fileobj=raw, mode="r|*", tarinfo=_GuardedTarInfo,  # type: ignore[call-overload]
                        bufsize=COPY_CHUNK)


class _Replay(io.RawIOBase):
    """``head`` (bytes already read to detect compression) and then the rest of ``inner``."""

    def __init__(self, head: bytes, inner: IO[bytes]) -> None:
        super().__init__()
        self._head = head
        self._inner = inner

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if self._head:
            data = self._head if size < 0 else self._head[:size]
            self._head = self._head[len(data):]
            return data
        return self._inner.read(size)

    def readinto(self, buffer: Any) -> int:
        if not self._head and hasattr(self._inner, "readinto"):
            return self._inner.readinto(buffer)
        data = self.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)


# --- layer blobs, read once ----------------------------------------------------------------------------------

class Blob(io.RawIOBase):
    """A layer blob read once from start to end while its layer is unpacked: hashed as it goes and kept in ``path``.
    ``finish`` reads what is left and checks the digest (``expected``), so a blob is verified before its layer is
    committed without a pass of its own. Subclasses say where the bytes come from (``_next``)."""

    def __init__(self, path: str, expected: str | None = None, hashed: bool = True) -> None:
        super().__init__()
        self.path = path
        self.expected = expected
        self.size = 0
        self._sha = hashlib.sha256() if hashed else None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        n = self._next(view)
        if n and self._sha is not None:
            self._sha.update(view[:n])
        self.size += n
        return n

    def _next(self, view: memoryview) -> int:
        raise NotImplementedError

    def finish(self) -> tuple[str, int]:
        """(digest, size) of the whole blob once read to its end; a digest other than ``expected`` raises (again
        on every call)."""
        if self._sha is None:  # known already: nothing left to check
            assert self.expected is not None
            return self.expected, os.path.getsize(self.path)
        buffer = bytearray(COPY_CHUNK)
        while self.readinto(buffer):
            pass
        digest = "sha256:" + self._sha.hexdigest()
        if self.expected is not None and digest != self.expected:
            self._mismatch(digest)
        return digest, self.size

    def _mismatch(self, digest: str) -> None:
        raise InvalidParameter(f"blob digest mismatch: expected {self.expected}, got {digest}")


class FileBlob(Blob):
    """A blob already in a file; ``verified``: its digest is known to be ``expected`` (it was hashed on arrival)."""

    def __init__(self, path: str, expected: str | None = None, verified: bool = False) -> None:
        super().__init__(path, expected, hashed=not (verified and expected is not None))
        self._file = open(path, "rb")

    def _next(self, view: memoryview) -> int:
        return self._file.readinto(view) or 0

    def close(self) -> None:
        self._file.close()
        super().close()


class CopiedBlob(Blob):
    """A blob arriving as a stream (a request body), written to the new file ``path`` as it is read."""

    def __init__(self, fileobj: IO[bytes], path: str) -> None:
        super().__init__(path)
        self._source = fileobj
        self._out = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)

    def _next(self, view: memoryview) -> int:
        n = read_into(self._source, view)
        chunk = view[:n]
        while chunk:
            chunk = chunk[os.write(self._out, chunk):]
        return n

    def close(self) -> None:
        if not self.closed:
            os.close(self._out)
        super().close()


class _Inflater(io.RawIOBase):
    """The gzip members of ``raw`` inflated in pieces of at most the caller's size, from 1 MiB reads of ``raw``
    (``gzip.GzipFile`` reads its input 8 KiB at a time on Python 3.11). Zero padding after a member is skipped, as
    gzip does; a stream that ends inside a member is an error (zlib checks each member's CRC and length)."""

    def __init__(self, raw: IO[bytes]) -> None:
        super().__init__()
        self._raw = raw
        self._inflate = zlib.decompressobj(31)
        self._input = b""
        self._started = False

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        size = size if size > 0 else COPY_CHUNK
        while True:
            if not self._input:
                self._input = self._raw.read(COPY_CHUNK)
                if not self._input:
                    if self._inflate.eof or not self._started:
                        return b""
                    raise tarfile.ReadError("unexpected end of compressed data")
            if self._inflate.eof:  # another member follows, or zero padding
                self._input = self._input.lstrip(b"\0")
                if not self._input:
                    continue
                self._inflate = zlib.decompressobj(31)
            try:
                out = self._inflate.decompress(self._input, size)
            except zlib.error as exc:
                raise tarfile.ReadError(f"invalid compressed data: {exc}") from None
            self._started = True
            self._input = self._inflate.unused_data if self._inflate.eof else self._inflate.unconsumed_tail
            if out:
                return out

    def readinto(self, buffer: Any) -> int:
        out = self.read(len(buffer))
        memoryview(buffer).cast("B")[:len(out)] = out
        return len(out)


class ReadAhead(io.RawIOBase):
    """``raw`` read by a thread of its own, up to ``DEPTH`` pieces ahead of the reader. A pull's work then runs on
    every core there is (download and blob digest in one thread, inflate in another, tar, diff ID and file writes in
    the caller's): each of them releases the GIL. So does ``docker cp`` into a container: the request body's
    chunked decoding overlaps the file writes. Its errors are raised here, in order; ``close`` stops the thread
    and waits for it, so the stream under it has one reader again."""

    DEPTH = 4

    def __init__(self, raw: IO[bytes]) -> None:
        super().__init__()
        self._pieces: queue.Queue[tuple[bytes | bytearray, BaseException | None]] = queue.Queue(self.DEPTH)
        self._stop = threading.Event()
        self._rest = memoryview(b"")
        self._ended = False
        self._thread = threading.Thread(target=self._produce, args=(raw,), name="unpack-read", daemon=True)
        self._thread.start()

    def readable(self) -> bool:
        return True

    def _produce(self, raw: IO[bytes]) -> None:
        try:
            while not self._stop.is_set():
                piece = bytearray(COPY_CHUNK)  # filled by readinto: a chunked body gives 32 KiB a read, not 1 MiB
                n = read_into(raw, memoryview(piece))
                del piece[n:]
                self._put(piece, None)
                if not n:
                    return
        except BaseException as exc:  # handed to the reader, in order
            self._put(b"", exc)

    def _put(self, data: bytes | bytearray, error: BaseException | None) -> None:
        while not self._stop.is_set():
            try:
                self._pieces.put((data, error), timeout=0.5)
                return
            except queue.Full:
                continue

    def readinto(self, buffer: Any) -> int:
        if not self._rest:
            if self._ended:
                return 0
            data, error = self._pieces.get()
            if error is not None or not data:
                self._ended = True
                if error is not None:
                    raise error
                return 0
            self._rest = memoryview(data)
        view = memoryview(buffer).cast("B")
        n = min(len(view), len(self._rest))
        view[:n] = self._rest[:n]
        self._rest = self._rest[n:]
        return n

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        super().close()


@contextlib.contextmanager
def unpacking_stream(blob: Blob) -> Iterator[tuple[str, IO[bytes]]]:
    """``blob``'s compression and its uncompressed bytes, streamed while the blob is read (plain and gzip, see
    ``ReadAhead``); a zstd
    blob is read to its end (and verified) first, then decompressed from its file by the zstd program."""
    head = read_exact(blob, 6)  # type: ignore[arg-type]
    kind = detect_compression(head)
    raw: IO[bytes] = _Replay(head, blob)  # type: ignore[arg-type, assignment]
    if kind == "zstd":
        blob.finish()
        with decompressed(blob.path) as unpacked:
            yield kind, unpacked
        return
    with contextlib.ExitStack() as stack:  # closed in reverse: the inflating thread stops before the reading one
        stream: IO[bytes] = stack.enter_context(ReadAhead(raw))  # type: ignore[arg-type]
        if kind == "gzip":
            stream = stack.enter_context(ReadAhead(_Inflater(stream)))  # type: ignore[arg-type]
        yield kind, stream


def drain(stream: IO[bytes]) -> None:
    """Read a request body to its end (a tar reader stops at the end marker, before the padding)."""
    while stream.read(COPY_CHUNK):
        pass


def copy_hashing(src: IO[bytes], path: str) -> str:
    """Write ``src`` to the new file ``path``; return the sha256 digest of what was written."""
    sha = hashlib.sha256()
    with open(path, "wb") as out:
        for chunk in iter(lambda: src.read(COPY_CHUNK), b""):
            sha.update(chunk)
            out.write(chunk)
    return "sha256:" + sha.hexdigest()


def file_digest(path: str) -> tuple[str, int]:
    """sha256 digest and size of a file."""
    sha = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(COPY_CHUNK), b""):
            sha.update(chunk)
            size += len(chunk)
    return "sha256:" + sha.hexdigest(), size


# --- safe extraction -----------------------------------------------------------------------------------------

def _clean_name(name: str, what: str) -> list[str]:
    """Archive path -> components; refuse absolute paths and ``..`` instead of silently rewriting them."""
    if name.startswith("/"):
        raise LayerRefused(f"layer refused: absolute path {name!r} in {what}")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise LayerRefused(f"layer refused: path {name!r} escapes the layer ({what})")
    return parts


class _Extractor:
    """One layer extraction into ``root`` (a fresh directory). Every entry is made relative to the fd of its parent
    folder, opened through ``safepath`` without following any link: a link planted in the tree (by an earlier
    entry or by anyone racing us) is never written through."""

    _DIR = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

    def __init__(self, root: str, whiteouts: bool = True) -> None:
        self.root = safepath.Root(root, follow_links=False)
        self.whiteouts = whiteouts
        self.dir_times: list[tuple[str, int]] = []
        self.size = 0

    def close(self) -> None:
        self.root.close()

    def _parent(self, parts: list[str], name: str) -> int:
        """An fd of the real parent dir of ``parts``, made on demand; refuse if any component is a symlink or a
        file. The caller closes the fd."""
        try:
            return self.root.open("/".join(parts[:-1]), self._DIR)
        except OSError as exc:
            if exc.errno not in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                raise
        fd = os.dup(self.root.fd)  # something is missing or in the way: one component at a time, to say which
        try:
            for depth, part in enumerate(parts[:-1], 1):
                try:
                    os.mkdir(part, 0o755, dir_fd=fd)
                except FileExistsError:
                    pass
                try:
                    child = os.open(part, self._DIR, dir_fd=fd)
                except OSError as exc:
                    if exc.errno not in (errno.ENOTDIR, errno.ELOOP):
                        raise
                    if stat.S_ISLNK(os.stat(part, dir_fd=fd, follow_symlinks=False).st_mode):
                        raise LayerRefused("layer refused: {!r} would be written through the symlink {!r}".format(
                            name, "/".join(parts[:depth]))) from None
                    raise LayerRefused(f"layer refused: {name!r} is below a non-directory") from None
                os.close(fd)
                fd = child
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _attrs(self, parent: int, base: str, parts: list[str], m: tarfile.TarInfo) -> None:
        os.chown(base, m.uid, m.gid, dir_fd=parent, follow_symlinks=False)
        if not m.issym():
            safepath.chmod_at(parent, base, m.mode & 0o7777)
        for key, value in m.pax_headers.items():
            if key.startswith(XATTR_PAX_PREFIX):
                attr = key[len(XATTR_PAX_PREFIX):]
                if attr.startswith("trusted.overlay."):
                    continue  # only we decide what overlayfs sees
                raw = value.encode("utf-8", "surrogateescape")
                try:
                    os.setxattr(safepath.fd_path(parent, base), attr, raw, follow_symlinks=False)
                except OSError as exc:
                    if exc.errno not in (errno.ENOTSUP, errno.EPERM):
                        raise
        if m.isdir():
            self.dir_times.append(("/".join(parts), int(m.mtime)))
        else:
            os.utime(base, (m.mtime, m.mtime), dir_fd=parent, follow_symlinks=False)

    def member(self, tar: tarfile.TarFile, m: tarfile.TarInfo) -> None:
        parts = _clean_name(m.name, "name")
        if not parts:
            return  # the "./" entry: the layer root itself
        parent = self._parent(parts, m.name)
        try:
            self._member(tar, m, parts, parent)
        finally:
            os.close(parent)

    def _member(self, tar: tarfile.TarFile, m: tarfile.TarInfo, parts: list[str], parent: int) -> None:
        base = parts[-1]
        if self.whiteouts and base.startswith(WHITEOUT_PREFIX):
            self._whiteout(parent, base, m.name)
            return
        if m.isdir():
            safepath.clear(parent, base, keep_dir=True)  # a later entry for a path replaces the earlier, as tar
            try:
                os.mkdir(base, 0o700, dir_fd=parent)
            except FileExistsError:
                pass
        elif m.isreg():
            safepath.clear(parent, base)
            write_new_file(tar, m, parent, base)
            self.size += m.size
        elif m.issym():
            if not m.linkname.startswith("/"):
                target = posixpath.normpath(posixpath.join("/".join(parts[:-1]), m.linkname))
                if target == ".." or target.startswith("../"):
                    raise LayerRefused(f"layer refused: symlink {m.name!r} -> {m.linkname!r} points outside the layer")
            safepath.clear(parent, base)
            os.symlink(m.linkname, base, dir_fd=parent)
        elif m.islnk():
            self._hardlink(m, parent, base)
            return  # a hardlink shares its target's attributes
        elif m.isfifo():
            safepath.clear(parent, base)
            os.mkfifo(base, 0o600, dir_fd=parent)
        elif m.ischr() or m.isblk():
            if not self._device(parent, base, m):
                return
        else:
            raise LayerRefused(f"layer refused: unsupported entry type {m.type!r} for {m.name!r}")
        self._attrs(parent, base, parts, m)

    def _hardlink(self, m: tarfile.TarInfo, parent: int, base: str) -> None:
        target_parts = _clean_name(m.linkname, f"hardlink target of {m.name!r}")
        missing = LayerRefused(f"layer refused: hardlink {m.name!r} -> {m.linkname!r} has no target inside the layer")
        if not target_parts:
            raise missing
        target_parent = self._parent(target_parts, m.linkname)
        try:
            try:
                target_st = os.stat(target_parts[-1], dir_fd=target_parent, follow_symlinks=False)
            except (FileNotFoundError, NotADirectoryError):
                raise missing from None
            if stat.S_ISDIR(target_st.st_mode):
                raise missing
            safepath.clear(parent, base)
            os.link(target_parts[-1], base, src_dir_fd=target_parent, dst_dir_fd=parent, follow_symlinks=False)
        finally:
            os.close(target_parent)

    def _device(self, parent: int, base: str, m: tarfile.TarInfo) -> bool:
        """mknod as dockerd does; False (and a warning) where this daemon may not create device nodes."""
        safepath.clear(parent, base)
        kind = stat.S_IFCHR if m.ischr() else stat.S_IFBLK
        try:
            os.mknod(base, 0o600 | kind, os.makedev(m.devmajor, m.devminor), dir_fd=parent)
        except PermissionError as exc:
            log.warning("skipping device node %s (%d:%d) from a layer: %s", m.name, m.devmajor, m.devminor,
                        exc.strerror)
            return False
        return True

    def _whiteout(self, parent: int, base: str, name: str) -> None:
        """OCI whiteouts -> overlayfs: ``.wh..wh..opq`` marks the dir opaque, ``.wh.x`` becomes a 0/0 char device."""
        if base == OPAQUE_MARKER:
            os.setxattr(safepath.fd_path(parent), OVERLAY_OPAQUE_XATTR, b"y")
            return
        if base.startswith(WHITEOUT_PREFIX + WHITEOUT_PREFIX):
            return  # other AUFS metadata (.wh..wh.plnk, ...) means nothing to overlayfs
        hidden = base[len(WHITEOUT_PREFIX):]
        if hidden in ("", ".", ".."):
            raise LayerRefused(f"layer refused: bad whiteout {name!r}")
        safepath.clear(parent, hidden)
        os.mknod(hidden, 0o600 | stat.S_IFCHR, os.makedev(0, 0), dir_fd=parent)

    def finish(self) -> None:
        """Folder times last (entries made inside a folder change its mtime); a folder a later entry replaced by a
        link or a file is gone and keeps no time."""
        for path, mtime in reversed(self.dir_times):
            try:
                parent, name = self.root.open_parent(path)
            except OSError as exc:
                if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                    continue
                raise
            try:
                os.utime(name, (mtime, mtime), dir_fd=parent, follow_symlinks=False)
            finally:
                os.close(parent)


def _members(tar: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    """The members of a streamed tar, ending where Go's archive/tar ends: the docker CLI's context for a Dockerfile
    from outside the context stops right after the last file's bytes, with no padding and no end-of-archive
    blocks. Running out of data there ends the archive; running out inside a member is still an error."""
    members = iter(tar)
    last: tarfile.TarInfo | None = None
    while True:
        try:
            member = next(members)
        except StopIteration:
            return
        except tarfile.ReadError as exc:
            consumed = last is not None and tar.fileobj.tell() >= last.offset_data + last.size  # type: ignore
            if str(exc) == "unexpected end of data" and consumed:
                return
            raise
        yield member
        last = member


def _unpack(open_: Callable[[], tarfile.TarFile], ex: _Extractor) -> None:
    try:
        with open_() as tar:
            for m in _members(tar):
                ex.member(tar, m)
        ex.finish()
    except tarfile.TarError as exc:
        raise LayerRefused(f"layer refused: invalid tar: {exc}") from None
    finally:
        ex.close()


def extract_layer(stream: IO[bytes], dest: str) -> tuple[str, int, int]:
    """Extract an uncompressed layer tar from ``stream`` into the new directory ``dest``.

    Returns ``(diff_id, unpacked_size, tar_size)``. The caller deletes ``dest`` if this raises.
    """
    source = TarSource(stream, hashlib.sha256())
    os.mkdir(dest, 0o755)
    ex = _Extractor(dest)
    _unpack(lambda: open_tar(source), ex)
    source.drain()
    return source.digest, ex.size, source.count


def extract_tree(stream: IO[bytes], dest: str) -> None:
    """Safely unpack a (possibly compressed) plain tar into ``dest``: build contexts and ``ADD x.tar``.

    Same refusals as layers, but ``.wh.`` names are ordinary files here.
    """
    os.makedirs(dest, exist_ok=True)
    _unpack(lambda: stream_tar(stream), _Extractor(dest, whiteouts=False))


# --- tars from overlay upper dirs ----------------------------------------------------------------------------

class _Sink(io.RawIOBase):
    """Collects what tarfile writes so it can be handed out in chunks (streaming without a pipe thread)."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.position = 0

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.position

    def write(self, data) -> int:  # type: ignore[no-untyped-def]
        self.chunks.append(bytes(data))
        self.position += len(data)
        return len(data)

    def take(self) -> bytes:
        data = b"".join(self.chunks)
        self.chunks.clear()
        return data


class TarStream:
    """Build a tar incrementally and yield its bytes as they are produced (for save, push and commit)."""

    def __init__(self) -> None:
        self.sink = _Sink()
        self.tar = tarfile.open(fileobj=self.sink, mode="w", format=tarfile.PAX_FORMAT)  # type: ignore[arg-type]

    def add_bytes(self, name: str, data: bytes, mtime: int = 0) -> bytes:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mtime = mtime
        info.mode = 0o644
        self.tar.addfile(info, io.BytesIO(data))
        return self.sink.take()

    def add_dir(self, name: str, mtime: int = 0) -> bytes:
        info = tarfile.TarInfo(name)
        info.type = tarfile.DIRTYPE
        info.mode = 0o755
        info.mtime = mtime
        self.tar.addfile(info)
        return self.sink.take()

    def add_stream(self, info: tarfile.TarInfo, src: IO[bytes] | None) -> Iterator[bytes]:
        """Add an entry whose content is read from ``src`` (exactly ``info.size`` bytes), yielding as it goes."""
        self.tar.addfile(info)
        yield self.sink.take()
        if src is None or not info.size:
            return
        remaining = info.size
        while remaining:
            chunk = src.read(min(COPY_CHUNK, remaining))
            if not chunk:
                raise InvalidParameter(f"{info.name}: unexpected end of data")
            remaining -= len(chunk)
            yield chunk
        pad = (-info.size) % tarfile.BLOCKSIZE
        if pad:
            yield b"\0" * pad
        # tarfile's own offset (it pads the archive from it on close) must count the bytes we wrote around it
        self.tar.offset += info.size + pad  # type: ignore[attr-defined]
        self.sink.position += info.size + pad

    def close(self) -> bytes:
        self.tar.close()
        return self.sink.take()


def _entries(parent: int, name: str, arc: str) -> Iterator[tuple[int, str, str, os.stat_result]]:
    """(dir fd, name, archive name, lstat) of an entry and, for a folder, of everything below it in a stable order;
    every step is relative to an open directory fd and no link is followed."""
    st = os.stat(name, dir_fd=parent, follow_symlinks=False)
    yield parent, name, arc, st
    if not stat.S_ISDIR(st.st_mode):
        return
    top = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
    try:
        for rel, dirfd, entry, entry_st in safepath.walk(top):
            yield dirfd, entry, posixpath.join(arc, rel, entry), entry_st  # "./x" under ".", as moby
    finally:
        os.close(top)


def _xattrs(dirfd: int, name: str) -> dict[str, str]:
    out: dict[str, str] = {}
    path = safepath.fd_path(dirfd, name)
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return out
    for attr in names:
        if attr.startswith("trusted.overlay.") or attr.startswith("user.overlay."):
            continue
        try:
            out[XATTR_PAX_PREFIX + attr] = os.getxattr(path, attr, follow_symlinks=False).decode(
                "utf-8", "surrogateescape")
        except OSError:
            continue
    return out


def _entry_info(dirfd: int, name: str, arc: str, st: os.stat_result,
                seen: dict[tuple[int, int], str]) -> tuple[tarfile.TarInfo | None, IO[bytes] | None]:
    """The tar header of one entry, and for a regular file its content opened without following a link (a file
    swapped for a link meanwhile is skipped, never read through). (None, None) for sockets and devices."""
    info = tarfile.TarInfo(arc)
    info.uid, info.gid, info.mode = st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)
    info.mtime = int(st.st_mtime)
    src: IO[bytes] | None = None
    if stat.S_ISDIR(st.st_mode):
        info.type = tarfile.DIRTYPE
    elif stat.S_ISLNK(st.st_mode):
        info.type, info.linkname = tarfile.SYMTYPE, os.readlink(name, dir_fd=dirfd)
    elif stat.S_ISREG(st.st_mode):
        key = (st.st_dev, st.st_ino)
        if st.st_nlink > 1 and key in seen:
            info.type, info.linkname = tarfile.LNKTYPE, seen[key]
        else:
            try:
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dirfd)
            except OSError:
                return None, None
            opened = os.fstat(fd)
            if not stat.S_ISREG(opened.st_mode):
                os.close(fd)
                return None, None
            seen[key] = arc
            info.size = opened.st_size
            src = os.fdopen(fd, "rb")
    elif stat.S_ISFIFO(st.st_mode):
        info.type = tarfile.FIFOTYPE
    else:
        return None, None  # sockets and device nodes do not belong in images or copies
    info.pax_headers = _xattrs(dirfd, name)
    return info, src


def tree_tar(parent: int, name: str, arcname: str, *, skip_root: bool = False,
             whiteouts: bool = False) -> Iterator[bytes]:
    """A tar of entry ``name`` of directory fd ``parent`` (and all below it), named ``arcname`` in the archive.
    ``whiteouts`` turns overlay whiteouts and opaque folders into OCI ones (layers from upper dirs)."""
    ts = TarStream()
    seen: dict[tuple[int, int], str] = {}
    for n, (dirfd, entry, arc, st) in enumerate(_entries(parent, name, arcname)):
        if n == 0 and skip_root:
            continue
        if whiteouts and stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
            head, _, base = arc.rpartition("/")
            yield ts.add_bytes((head + "/" if head else "") + WHITEOUT_PREFIX + base, b"")
            continue
        info, src = _entry_info(dirfd, entry, arc, st, seen)
        if info is None:
            continue
        try:
            yield from ts.add_stream(info, src)
        finally:
            if src is not None:
                src.close()
        if whiteouts and stat.S_ISDIR(st.st_mode):
            try:
                opaque = os.getxattr(safepath.fd_path(dirfd, entry), OVERLAY_OPAQUE_XATTR,
                                     follow_symlinks=False) == b"y"
            except OSError:
                opaque = False
            if opaque:
                yield ts.add_bytes(arc + "/" + OPAQUE_MARKER, b"")
    yield ts.close()


def upper_dir_tar(upper: str) -> Iterator[bytes]:
    """A layer tar of an overlay upper dir, turning overlay whiteouts back into OCI ones (for commit/build). The
    upper dir of a running container changes under us: it is read through fds, never through a link."""
    top = os.open(upper, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield from tree_tar(top, ".", "", skip_root=True, whiteouts=True)
    finally:
        os.close(top)


class _ChunkReader:
    """A read() view of an iterator of byte chunks."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self.chunks = chunks
        self.pending = b""

    def read(self, n: int = -1) -> bytes:
        while len(self.pending) < n or n < 0:
            chunk = next(self.chunks, None)
            if chunk is None:
                break
            self.pending += chunk
        out, self.pending = (self.pending, b"") if n < 0 else (self.pending[:n], self.pending[n:])
        return out


def write_stream(chunks: Iterator[bytes], path: str) -> str:
    """Write an iterator of byte chunks to ``path``; return its sha256 digest."""
    return copy_hashing(_ChunkReader(chunks), path)  # type: ignore[arg-type]
