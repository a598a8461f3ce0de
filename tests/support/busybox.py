"""The one busybox image of the tests: a root filesystem tar made from Debian's busybox-static, without root.

``rootfs()`` builds it in memory (no chroot, no temporary folder): ``bin/busybox`` with one symlink per applet
(``bin/sh -> /bin/busybox``, as ``busybox --install -s /bin`` makes them), ``etc/passwd`` and ``etc/group``, ``tmp``
(1777), ``root`` and any home folders asked for. ``ImageStore.import_tar`` takes it as it is; ``docker import -``
takes it on stdin (test hosts have no registry to pull from). Users get the same image from
``scripts/busybox-rootfs.sh``.
"""

from __future__ import annotations

import functools
import io
import os
import subprocess
import tarfile
from collections.abc import Sequence

import pytest

BUSYBOX = "/bin/busybox"
ROOT_PASSWD = "root:x:0:0:root:/root:/bin/sh\n"
ROOT_GROUP = "root:x:0:\n"


def _add(tar: tarfile.TarFile, name: str, *, kind: bytes = tarfile.DIRTYPE, mode: int = 0o755,
         data: bytes = b"", target: str = "") -> None:
    info = tarfile.TarInfo(f"./{name}" if name else ".")
    info.type, info.mode, info.mtime, info.linkname = kind, mode, 0, target
    if kind == tarfile.REGTYPE:
        info.size = len(data)
    tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


@functools.cache
def rootfs(passwd: str = ROOT_PASSWD, group: str = ROOT_GROUP, homes: Sequence[str] = ()) -> bytes:
    """The rootfs tar (about 2 MB). ``passwd``/``group`` are the files' contents; ``homes`` folders under /home."""
    if not os.access(BUSYBOX, os.X_OK):
        pytest.fail(f"{BUSYBOX} not found: apt-get install busybox-static")
    with open(BUSYBOX, "rb") as file:
        binary = file.read()
    applets = subprocess.run([BUSYBOX, "--list"], capture_output=True, text=True, check=True).stdout.split()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for folder in ("", "bin", "etc", "root", *(["home"] if homes else []), *(f"home/{home}" for home in homes)):
            _add(tar, folder)
        _add(tar, "tmp", mode=0o1777)
        _add(tar, "bin/busybox", kind=tarfile.REGTYPE, data=binary)
        for applet in sorted(set(applets) - {"busybox"}):
            _add(tar, f"bin/{applet}", kind=tarfile.SYMTYPE, mode=0o777, target="/bin/busybox")
        _add(tar, "etc/passwd", kind=tarfile.REGTYPE, mode=0o644, data=passwd.encode())
        _add(tar, "etc/group", kind=tarfile.REGTYPE, mode=0o644, data=group.encode())
    return buffer.getvalue()


@pytest.fixture(scope="session")
def busybox_tar() -> bytes:
    """The busybox rootfs tar with only root, for ``ImageStore.import_tar`` or ``docker import``."""
    return rootfs()
