"""Real rpm databases made by the real tools: ``rpmbuild`` builds small (file-less) packages, ``rpm -i --justdb``
writes their headers into an sqlite rpmdb, Berkeley DB's ``db5.3_load`` writes those headers into a Hash database
(rpm >= 4.17 can no longer write one), Berkeley DB's Python binding removes entries as ``rpm -e`` would, and rpm's
read-only ``bdb_ro`` backend says what such a database holds."""

from __future__ import annotations

import collections
import sqlite3
import struct
import subprocess
from pathlib import Path

# (spec name, spec): an EL8-like set, openssl-libs being a subpackage of openssl with an epoch
SPECS = {
    "openssl": "Name: openssl\nEpoch: 1\nVersion: 1.1.1k\nRelease: 5.el8_5\nSummary: t\nLicense: OpenSSL and ASL 2.0\n"
               "%description\nt\n%package libs\nSummary: t\n%description libs\nt\n%files libs\n",
    "bash": "Name: bash\nVersion: 4.4.20\nRelease: 4.el8_6\nSummary: t\nLicense: GPLv3+\n%description\nt\n%files\n",
    "zlib": "Name: zlib\nVersion: 1.2.11\nRelease: 18.el8_5\nSummary: t\nLicense: zlib and Boost\n%description\nt\n"
            "%files\n",
}
EXPECTED = {("openssl-libs", "1:1.1.1k-5.el8_5", "openssl"), ("bash", "4.4.20-4.el8_6", "bash"),
            ("zlib", "1.2.11-18.el8_5", "zlib")}


def _run(*command: str) -> str:
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{command[0]}: {done.stderr}"
    return done.stdout


def build_rpms(folder: Path, names: tuple[str, ...] = tuple(SPECS)) -> list[Path]:
    top = folder / "rpmbuild"
    for name in names:
        spec = folder / f"{name}.spec"
        spec.write_text(SPECS[name])
        _run("rpmbuild", "--quiet", "-bb", "--define", f"_topdir {top}", str(spec))
    return sorted(top.glob("RPMS/*/*.rpm"))


def sqlite_rpmdb(folder: Path, rpms: list[Path]) -> Path:
    """``folder/rpmdb.sqlite`` with ``rpms`` recorded as installed."""
    folder.mkdir(parents=True, exist_ok=True)
    _run("rpm", "--dbpath", str(folder), "--initdb")
    _run("rpm", "--dbpath", str(folder), "-i", "--justdb", "--nodeps", "--ignorearch", "--ignoreos",
         *map(str, rpms))
    _run("rpm", "--dbpath", str(folder), "--rebuilddb")  # folds the write-ahead log into the file
    return folder / "rpmdb.sqlite"


def bdb_packages(sqlite_db: Path, target: Path, page_size: int = 512, big_endian: bool = False,
                 copies: int = 1) -> Path:
    """The headers of ``sqlite_db`` in a Berkeley DB Hash ``Packages`` file at ``target``, keyed as rpm keys them
    (header number, 4 bytes in the writer's byte order); ``copies`` times each, as header numbers 1, 2, ...
    (enough entries make the hash split its buckets and chain pages of one bucket)."""
    db = sqlite3.connect(sqlite_db)
    blobs = [bytes(blob) for (blob,) in db.execute("SELECT blob FROM Packages ORDER BY hnum")] * copies
    db.close()
    order = ">" if big_endian else "<"
    lines = ["VERSION=3", "format=bytevalue", "type=hash", f"db_pagesize={page_size}", "HEADER=END"]
    for number, blob in enumerate(blobs, 1):
        lines += [" " + struct.pack(order + "I", number).hex(), " " + blob.hex()]
    dump = target.with_suffix(".dump")
    dump.write_text("\n".join([*lines, "DATA=END", ""]))
    _run("db5.3_load", "-c", f"db_lorder={4321 if big_endian else 1234}", "-f", str(dump), str(target))
    dump.unlink()
    return target


DELETE = """
import struct, sys
from bsddb3 import db
packages = db.DB()
packages.open(sys.argv[1], dbtype=db.DB_HASH)
for number in sys.argv[2:]:
    packages.delete(struct.pack("<I", int(number)))
packages.close()
"""


def bdb_delete(packages: Path, numbers: list[int]) -> None:
    """Remove header ``numbers`` with Berkeley DB itself (Debian's python3-bsddb3, for the system Python): their
    overflow pages go to the free list, as when ``rpm -e`` removed packages."""
    _run("/usr/bin/python3", "-c", DELETE, str(packages), *map(str, numbers))


def rpm_names(folder: Path) -> collections.Counter[str]:
    """The name of each header rpm's ``bdb_ro`` reads from the ``Packages`` file in ``folder``, counted."""
    out = _run("rpm", "-qa", "--dbpath", str(folder), "--define", "_db_backend bdb_ro", "--qf", "%{NAME}\n")
    return collections.Counter(out.split())


def rpm_lists(folder: Path, backend: str) -> set[tuple[str, str, str]]:
    """What rpm itself reads from the database in ``folder``: (name, [epoch:]version-release, source rpm name)."""
    out = _run("rpm", "-qa", "--dbpath", str(folder), "--define", f"_db_backend {backend}", "--qf",
               "%{NAME} %|EPOCH?{%{EPOCH}:}:{}|%{VERSION}-%{RELEASE} %{SOURCERPM}\n")
    rows = {tuple(line.split()) for line in out.splitlines() if line.strip()}
    return {(name, evr, source.rsplit("-", 2)[0]) for name, evr, source in rows if name != "gpg-pubkey"}
