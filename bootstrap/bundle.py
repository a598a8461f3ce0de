"""Build the runtime zipapp that provisioning uploads: one file, standard library only, runs on python3 >= 3.9.

The archive is byte-for-byte reproducible (sorted entries, fixed timestamps), so its SHA-256 names its content: the
provisioner skips the upload when the host already has that hash, and the build is cached under the same name.

Building compiles every module (about 0.2 s of CPU), so a build is looked up first by a fingerprint of the sources'
names, sizes and modification times (and the builder's own): provisioning, and eight creates at once in one
process, reuse it instead of compiling again. The cached file is checked against its recorded hash before use.

Each module also travels compiled, as a hash-checked ``.pyc`` beside its source (where zipimport looks for it):
compiling the sources was most of the daemon's start. zipimport uses the bytecode only on a host whose Python has
the same magic number as ours and whose source hash matches; any other host compiles from source as before.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import io
import json
import marshal
import os
import threading
import zipfile
from pathlib import Path

from machines import runtime
from machines.store import atomic_write

ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
MAIN = (b'"""Entry point of the bundled runtime."""\nimport runpy\n\n'
        b'runpy.run_module("machines.runtime", run_name="__main__", alter_sys=True)\n')
# The runtime travels inside its namespace package, without the workstation's library (and its dependencies).
NAMESPACE = b'"""machines, as bundled for a host: only ``machines.runtime`` travels."""\n'


@dataclasses.dataclass(frozen=True)
class Bundle:
    """A built runtime zipapp: where it is, its content hash and the runtime version inside."""

    path: Path
    sha256: str
    version: str


def _package_files(root: Path) -> list[tuple[str, Path]]:
    """(archive name, source path) of every source file of the package at ``root``, sorted."""
    files: list[tuple[str, Path]] = []
    for directory, subdirs, names in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if d != "__pycache__")
        for name in names:
            if name.endswith((".pyc", ".pyo")):
                continue
            path = Path(directory, name)
            files.append((f"machines/runtime/{path.relative_to(root).as_posix()}", path))
    return sorted(files)


def _bytecode(name: str, source: bytes) -> bytes:
    """A checked hash-based ``.pyc`` (PEP 552) of ``source``: no timestamps, so the archive stays reproducible."""
    code = compile(source, name, "exec", dont_inherit=True)
    flags = 0b11  # hash-based, checked against the source
    return (importlib.util.MAGIC_NUMBER + flags.to_bytes(4, "little") + importlib.util.source_hash(source)
            + marshal.dumps(code))


def _archive_bytes(root: Path) -> bytes:
    buffer = io.BytesIO()
    buffer.write(b"#!/usr/bin/env python3\n")
    with zipfile.ZipFile(buffer, "a", compression=zipfile.ZIP_DEFLATED) as archive:
        sources = [("machines/__init__.py", NAMESPACE)] + [(name, path.read_bytes()) for name, path in _package_files(root)]
        compiled = [(name + "c", _bytecode(name, data)) for name, data in sources if name.endswith(".py")]
        entries = sorted([("__main__.py", MAIN)] + sources + compiled)
        for name, data in entries:
            info = zipfile.ZipInfo(name, date_time=ZIP_EPOCH)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, data)
    return buffer.getvalue()


_building = threading.Lock()  # threads of one process (parallel creates) build once and share the result


def _fingerprint(root: Path) -> str:
    """What the archive is made of, from file metadata only: any edited, added or removed source changes it."""
    files = [(name, path) for name, path in _package_files(root)] + [("builder", Path(__file__))]
    entries = []
    for name, path in files:
        status = path.stat()
        entries.append([name, status.st_size, status.st_mtime_ns])
    text = json.dumps([importlib.util.MAGIC_NUMBER.hex(), str(root), entries])
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _cached(cache: Path, fingerprint: str) -> Bundle | None:
    """The build recorded for ``fingerprint``, if its file is still there with the recorded hash."""
    try:
        digest = (cache / f"sources-{fingerprint}").read_text().strip()
        path = cache / f"runtime-{digest[:16]}.pyz"
        if hashlib.sha256(path.read_bytes()).hexdigest() != digest:
            return None
    except OSError:
        return None
    return Bundle(path=path, sha256=digest, version=runtime.VERSION)


def build(cache_dir: str | os.PathLike[str], source: str | os.PathLike[str] | None = None) -> Bundle:
    """Return the zipapp of the runtime sources, building it into ``cache_dir`` unless already there.

    ``source`` is a ``runtime`` package folder; default the installed one (another folder: tests of ``upgrade``).
    """
    root = Path(source) if source is not None else Path(runtime.__file__).resolve().parent
    cache = Path(cache_dir)
    fingerprint = _fingerprint(root)
    with _building:
        found = _cached(cache, fingerprint)
        if found is not None:
            return found
        data = _archive_bytes(root)
        digest = hashlib.sha256(data).hexdigest()
        path = cache / f"runtime-{digest[:16]}.pyz"
        atomic_write(path, data, mode=0o755)  # other processes may build at once: each writes whole or not at all
        atomic_write(cache / f"sources-{fingerprint}", digest.encode(), mode=0o644)
        for stale in [*cache.glob("runtime-*.pyz"), *cache.glob("sources-*")]:  # one cached build is enough
            if stale not in (path, cache / f"sources-{fingerprint}"):
                stale.unlink(missing_ok=True)
    return Bundle(path=path, sha256=digest, version=runtime.VERSION)
