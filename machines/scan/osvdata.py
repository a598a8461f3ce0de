"""``machines scan --db-update``: osv.dev's per-ecosystem archives, downloaded where the workstation reaches them.

osv.dev's exporter writes every record of an ecosystem (the part of its name before ``:``, so ``Debian`` holds
``Debian:12`` too) into ``<base>/<ecosystem>/all.zip``, one ``<ID>.json`` per record. The archives are fetched into
a staging folder next to the database and checked whole (complete body, every member's CRC) before the staging
folder takes the database's place in one step, so a failed or partial download leaves the previous data as it was.
"""

from __future__ import annotations

import ctypes
import errno
import http.client
import os
import shutil
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path

from machines.errors import ScanError

OSV_URL = "https://osv-vulnerabilities.storage.googleapis.com"
URL_ENV = "MACHINES_OSV_URL"


def base_url() -> str:
    """Where the archives come from: ``MACHINES_OSV_URL`` (a mirror with osv.dev's layout) or osv.dev's bucket."""
    return (os.environ.get(URL_ENV) or OSV_URL).rstrip("/")


def update(folder: Path, ecosystems: set[str]) -> list[Path]:
    """Replace ``<ecosystem>.zip`` in ``folder`` for each of ``ecosystems`` with osv.dev's current archive; other
    files in ``folder`` are kept. ScanError with a one-line reason when any archive cannot be had."""
    base = base_url()
    folder = folder.resolve()  # a link to the data: the data is replaced, the link kept
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.update-", dir=folder.parent))
    except OSError as exc:
        raise ScanError(f"cannot prepare {folder} for OSV data: {exc.strerror or exc}") from None
    try:
        names = [f"{ecosystem}.zip" for ecosystem in sorted(ecosystems)]
        for ecosystem in sorted(ecosystems):
            _download(f"{base}/{urllib.parse.quote(ecosystem)}/all.zip", staging / f"{ecosystem}.zip")
        try:
            if folder.is_dir():
                shutil.copytree(folder, staging, dirs_exist_ok=True, copy_function=_link_or_copy,
                                ignore=lambda where, _: names if Path(where) == folder else [])
                os.chmod(staging, folder.stat().st_mode & 0o7777)
            else:
                os.chmod(staging, 0o755)
            _replace(staging, folder)
        except OSError as exc:
            raise ScanError(f"cannot replace the OSV data in {folder}: {exc.strerror or exc}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # the previous data after the swap, or the failed download
    return [folder / name for name in names]


def _download(url: str, target: Path) -> None:
    try:
        with urllib.request.urlopen(url, timeout=30) as answer, open(target, "wb") as out:  # noqa: S310
            while chunk := answer.read(1 << 20):
                out.write(chunk)
            missing = getattr(answer, "length", None)
        if missing:
            raise ScanError(f"cannot download OSV data from {url}: the connection closed {missing} bytes early")
        with zipfile.ZipFile(target) as archive:
            broken = archive.testzip()
        if broken is not None:
            raise ScanError(f"cannot use OSV data from {url}: {broken} is damaged in the archive")
    except urllib.error.HTTPError as exc:
        raise ScanError(f"cannot download OSV data from {url}: HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        raise ScanError(f"cannot download OSV data from {url}: {exc.reason} (--db-update needs internet access; "
                        "copy the data into a folder and use --db DIR)") from None
    except (zipfile.BadZipFile, EOFError) as exc:
        raise ScanError(f"cannot use OSV data from {url}: not a complete zip archive ({exc})") from None
    except (OSError, http.client.HTTPException) as exc:
        raise ScanError(f"cannot download OSV data from {url}: {getattr(exc, 'strerror', None) or exc!r}") from None


def _link_or_copy(source: str, target: str) -> None:
    """Keep a file of the previous data in the new folder: a hard link (same file system, no copy) if possible."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def _replace(staging: Path, folder: Path) -> None:
    """Put ``staging`` in ``folder``'s place; ``staging`` then names the previous data. One step where the system
    can swap two directories (Linux ``renameat2(RENAME_EXCHANGE)``), else two renames."""
    if not folder.exists():
        os.rename(staging, folder)
        return
    if _exchange(staging, folder):
        return
    aside = staging.with_name(staging.name + ".old")
    os.rename(folder, aside)
    os.rename(staging, folder)
    os.rename(aside, staging)


def _exchange(one: Path, other: Path) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(one), at_fdcwd, os.fsencode(other), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EPERM):
        return False  # a file system or kernel without the flag
    raise OSError(code, os.strerror(code), str(other))
