"""Real rpm databases made by the real tools: ``rpmbuild`` builds small (file-less) packages, ``rpm -i --justdb``
writes their headers into an sqlite rpmdb, Berkeley DB's ``db5.3_load`` writes those headers into a Hash database
(rpm >= 4.17 can no longer write one), and rpm's read-only ``bdb_ro`` backend says what such a database holds."""

from __future__ import annotations

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


def bdb_packages(sqlite_db: Path, target: Path, page_size: int = 512, big_endian: bool = False) -> Path:
    """The headers of ``sqlite_db`` in a Berkeley DB Hash ``Packages`` file at ``target``, keyed as rpm keys them
    (header number, 4 bytes in the writer's byte order)."""
    db = sqlite3.connect(sqlite_db)
    rows = db.execute("SELECT hnum, blob FROM Packages").fetchall()
    db.close()
    order = ">" if big_endian else "<"
    lines = ["VERSION=3", "format=bytevalue", "type=hash", f"db_pagesize={page_size}", "HEADER=END"]
    for number, blob in rows:
        lines += [" " + struct.pack(order + "I", number).hex(), " " + bytes(blob).hex()]
    dump = target.with_suffix(".dump")
    dump.write_text("\n".join([*lines, "DATA=END", ""]))
    _run("db5.3_load", "-c", f"db_lorder={4321 if big_endian else 1234}", "-f", str(dump), str(target))
    dump.unlink()
    return target


def rpm_lists(folder: Path, backend: str) -> set[tuple[str, str, str]]:
    """What rpm itself reads from the database in ``folder``: (name, [epoch:]version-release, source rpm name)."""
    out = _run("rpm", "-qa", "--dbpath", str(folder), "--define", f"_db_backend {backend}", "--qf",
               "%{NAME} %|EPOCH?{%{EPOCH}:}:{}|%{VERSION}-%{RELEASE} %{SOURCERPM}\n")
    rows = {tuple(line.split()) for line in out.splitlines() if line.strip()}
    return {(name, evr, source.rsplit("-", 2)[0]) for name, evr, source in rows if name != "gpg-pubkey"}
