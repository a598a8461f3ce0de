"""Fixtures for the image store tests: a fresh store per test and small tars built in memory."""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterable

import pytest

from machines.runtime.images.service import ImageService
from machines.runtime.images.store import ImageStore

Entry = tuple[str, str, bytes | str | None]  # (name, kind, data-or-linkname)


def make_tar(entries: Iterable[Entry], *, pax: dict | None = None, gz: bool = False) -> bytes:
    """A tar from (name, kind, payload) where kind is file/dir/symlink/hardlink/chardev/fifo."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz" if gz else "w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, payload in entries:
            info = tarfile.TarInfo(name)
            info.mtime = 1_600_000_000
            if pax and name in pax:
                info.pax_headers = pax[name]
            data = None
            if kind == "file":
                data = payload if isinstance(payload, bytes) else b""
                info.size, info.mode = len(data), 0o644
            elif kind == "dir":
                info.type, info.mode = tarfile.DIRTYPE, 0o755
            elif kind == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, str(payload)
            elif kind == "hardlink":
                info.type, info.linkname = tarfile.LNKTYPE, str(payload)
            elif kind == "chardev":
                info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 3
            elif kind == "fifo":
                info.type = tarfile.FIFOTYPE
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


@pytest.fixture
def store(tmp_path) -> ImageStore:
    return ImageStore(str(tmp_path / "store"))


@pytest.fixture
def service(store) -> ImageService:
    """The image service over ``store`` (pull, push, login, build, save, load)."""
    return ImageService(store)
