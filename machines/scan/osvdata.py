"""``machines scan --db-update``: osv.dev's per-ecosystem archives, downloaded where the workstation reaches them."""

from __future__ import annotations

import os
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path

from machines.errors import ScanError

OSV_URL = "https://osv-vulnerabilities.storage.googleapis.com"


def update(folder: Path, ecosystems: set[str]) -> list[Path]:
    """Download osv.dev's ``<ecosystem>/all.zip`` for each ecosystem into ``folder`` (``MACHINES_OSV_URL`` may
    name a mirror). ScanError with the reason when the data cannot be fetched, e.g. without internet access."""
    base = os.environ.get("MACHINES_OSV_URL", OSV_URL).rstrip("/")
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for ecosystem in sorted(ecosystems):
        url = f"{base}/{urllib.parse.quote(ecosystem)}/all.zip"
        target = folder / f"{ecosystem}.zip"
        partial = target.with_suffix(".zip.partial")
        try:
            with urllib.request.urlopen(url, timeout=30) as answer, open(partial, "wb") as out:  # noqa: S310
                while chunk := answer.read(1 << 20):
                    out.write(chunk)
            zipfile.ZipFile(partial).close()
        except (urllib.error.URLError, OSError, zipfile.BadZipFile) as exc:
            partial.unlink(missing_ok=True)
            reason = getattr(exc, "reason", exc)
            raise ScanError(f"cannot download OSV data from {url}: {reason} (--db-update needs internet access; "
                            "copy the data into a folder and use --db DIR)") from None
        partial.replace(target)
        written.append(target)
    return written
