"""Packages of an image, read from its layers the way the package managers keep them (standard library only:
the runtime scans images on arrival with it, ``machines scan`` on the workstation).

Layers are read in order as streamed tars, keeping only the files that describe packages (dpkg's status and
``status.d``, apk's ``installed`` database, rpm's ``rpmdb.sqlite``, Python ``.dist-info``/``.egg-info`` metadata,
npm ``node_modules/**/package.json``, ``os-release``) and the build info of Go executables; whiteouts and opaque
directories of later layers remove what earlier layers had, so the result is the image's final filesystem.
"""

from __future__ import annotations

import dataclasses
import email.parser
import json
import re
import sqlite3
import struct
import tarfile
import tempfile
from collections.abc import Iterable
from typing import IO

GO_MAGIC = b"\xff Go buildinf:"
MAX_METADATA = 64 << 20
MAX_BINARY = 256 << 20
RPMDB_PATHS = ("var/lib/rpm/rpmdb.sqlite", "usr/lib/sysimage/rpm/rpmdb.sqlite")
OS_RELEASE = ("etc/os-release", "usr/lib/os-release")


def canonicalize_name(name: str) -> str:
    """PEP 503's normalized project name (what PyPI and OSV compare)."""
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclasses.dataclass(frozen=True)
class Package:
    """One installed package. ``kind``: dpkg, apk, rpm, python, npm, go. ``source``/``source_version``: the
    source package OS advisories are written against (dpkg Source, apk origin, rpm source RPM)."""

    name: str
    version: str
    kind: str
    path: str
    source: str = ""
    source_version: str = ""
    arch: str = ""
    license: str = ""

    @property
    def match_name(self) -> str:
        name = self.source or self.name
        return canonicalize_name(name) if self.kind == "python" else name

    @property
    def match_version(self) -> str:
        return self.source_version or self.version


@dataclasses.dataclass
class Inventory:
    packages: list[Package]
    os_release: dict[str, str]

    @property
    def distro(self) -> str:
        return f"{self.os_release.get('ID', '')} {self.os_release.get('VERSION_ID', '')}".strip()


def _norm(name: str) -> str:
    name = name.lstrip("./")
    return re.sub(r"/+", "/", name)


def _kind_of(path: str, member: tarfile.TarInfo) -> str | None:
    if path == "var/lib/dpkg/status" or (path.startswith("var/lib/dpkg/status.d/") and "." not in path[22:]):
        return "dpkg"
    if path == "lib/apk/db/installed":
        return "apk"
    if path in RPMDB_PATHS:
        return "rpm"
    if path in OS_RELEASE:
        return "os-release"
    if path.endswith((".dist-info/METADATA", ".egg-info/PKG-INFO")) or (path.endswith(".egg-info") and member.isfile()):
        return "python"
    if re.search(r"(^|/)node_modules/(@[^/]+/)?[^/@][^/]*/package\.json$", path):
        return "npm"
    if member.isfile() and member.mode & 0o111 and 1024 < member.size <= MAX_BINARY:
        return "binary"
    return None


def parse_dpkg(text: str, path: str) -> list[Package]:
    out = []
    for block in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        key = ""
        for line in block.splitlines():
            if line[:1] in (" ", "\t") and key:
                continue  # continuation lines (Description, Conffiles) carry nothing we need
            key, _, value = line.partition(":")
            fields[key.strip()] = value.strip()
        if not fields.get("Package") or not fields.get("Version"):
            continue
        if "Status" in fields and not fields["Status"].endswith(" installed"):
            continue
        source, _, source_version = fields.get("Source", "").partition(" ")
        out.append(Package(fields["Package"], fields["Version"], "dpkg", path, source or fields["Package"],
                           source_version.strip("()") or fields["Version"], fields.get("Architecture", "")))
    return out


def parse_apk(text: str, path: str) -> list[Package]:
    out = []
    for block in re.split(r"\n\s*\n", text):
        fields = dict(line.split(":", 1) for line in block.splitlines() if len(line) > 2 and line[1] == ":")
        if fields.get("P") and fields.get("V"):
            out.append(Package(fields["P"], fields["V"], "apk", path, fields.get("o") or fields["P"], fields["V"],
                               fields.get("A", ""), fields.get("L", "")))
    return out


RPM_TAGS = {1000: "name", 1001: "version", 1002: "release", 1003: "epoch", 1014: "license", 1022: "arch",
            1044: "sourcerpm"}


def rpm_header(blob: bytes) -> dict[str, object]:
    """The tags we need from an rpm header blob (as rpmdb.sqlite's Packages table stores it, without magic)."""
    count, size = struct.unpack(">II", blob[:8])
    base = 8 + 16 * count
    if count > 100000 or base + size > len(blob):
        raise ValueError("truncated rpm header")
    out: dict[str, object] = {}
    for index in range(count):
        tag, kind, offset, number = struct.unpack(">IIII", blob[8 + 16 * index: 24 + 16 * index])
        if tag not in RPM_TAGS or offset >= size:
            continue
        data = blob[base + offset: base + size]
        if kind == 4:  # INT32
            out[RPM_TAGS[tag]] = struct.unpack(">I", data[:4])[0]
        elif kind in (6, 8, 9):  # STRING, STRING_ARRAY, I18NSTRING: the first string
            out[RPM_TAGS[tag]] = data.split(b"\0", 1)[0].decode(errors="replace")
    return out


def parse_rpmdb(data: bytes, path: str) -> list[Package]:
    with tempfile.NamedTemporaryFile(suffix=".sqlite") as copy:
        copy.write(data)
        copy.flush()
        db = sqlite3.connect(f"file:{copy.name}?mode=ro", uri=True)
        try:
            rows = db.execute("SELECT blob FROM Packages").fetchall()
        except sqlite3.DatabaseError:
            return []
        finally:
            db.close()
    out = []
    for (blob,) in rows:
        try:
            tags = rpm_header(bytes(blob))
        except (ValueError, struct.error):
            continue
        if not tags.get("name") or tags.get("name") == "gpg-pubkey":
            continue
        evr = f"{tags.get('version', '')}-{tags.get('release', '')}"
        if tags.get("epoch") is not None:
            evr = f"{tags['epoch']}:{evr}"
        source = re.sub(r"-[^-]+-[^-]+\.src\.rpm$", "", str(tags.get("sourcerpm") or "")) or str(tags["name"])
        out.append(Package(str(tags["name"]), evr, "rpm", path, source, evr, str(tags.get("arch") or ""),
                           str(tags.get("license") or "")))
    return out


def parse_python(text: str, path: str) -> list[Package]:
    headers = email.parser.Parser().parsestr(text, headersonly=True)
    name, version = headers.get("Name"), headers.get("Version")
    if not name or not version:
        return []
    return [Package(name.strip(), version.strip(), "python", path, license=(headers.get("License") or "")[:200])]


def parse_npm(text: str, path: str) -> list[Package]:
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError):
        return []
    if not isinstance(doc, dict) or not isinstance(doc.get("name"), str) or not isinstance(doc.get("version"), str):
        return []
    license_ = doc["license"] if isinstance(doc.get("license"), str) else ""
    return [Package(doc["name"], doc["version"], "npm", path, license=license_)]


def _uvarint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while pos < len(data):
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
    raise ValueError("truncated varint")


def parse_go_buildinfo(data: bytes, path: str) -> list[Package]:
    """Modules of a Go 1.18+ executable (the inline-string build info; older pointer-based layouts are skipped)."""
    start = data.find(GO_MAGIC)
    if start < 0 or not data.startswith(b"\x7fELF") or len(data) < start + 32 or not data[start + 15] & 2:
        return []
    try:
        length, pos = _uvarint(data, start + 32)
        go_version = data[pos:pos + length].decode(errors="replace")
        length, pos = _uvarint(data, pos + length)
        raw = data[pos:pos + length]
    except ValueError:
        return []
    if len(raw) >= 33 and raw[-17:-16] == b"\n":
        raw = raw[16:-16]  # Go's 16-byte sentinels around the module info
    modinfo = raw.decode(errors="replace")
    out = [Package("stdlib", go_version, "go", path)] if go_version.startswith("go") else []
    modules: list[list[str]] = []
    for line in modinfo.splitlines():
        fields = line.split("\t")
        if fields[0] in ("mod", "dep") and len(fields) >= 3:
            modules.append([fields[1], fields[2]])
        elif fields[0] == "=>" and len(fields) >= 3 and modules:
            modules[-1] = [fields[1], fields[2]]  # a replace directive: the module actually built in
    out.extend(Package(name, version, "go", path) for name, version in modules if version != "(devel)")
    return out


def parse_os_release(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip().isidentifier():
            out[key.strip()] = value.strip().strip("'\"")
    return out


PARSERS = {"dpkg": parse_dpkg, "apk": parse_apk, "python": parse_python, "npm": parse_npm}


def _read(tar: tarfile.TarFile, member: tarfile.TarInfo, limit: int) -> bytes | None:
    if not member.isfile() or member.size > limit:
        return None
    handle = tar.extractfile(member)
    return handle.read() if handle is not None else None


def scan_layers(layers: Iterable[IO[bytes]]) -> Inventory:
    """The inventory of the filesystem the layers (tar streams, lowest first) make together."""
    found: dict[str, list[Package]] = {}
    os_release: dict[str, dict[str, str]] = {}
    for stream in layers:
        added: dict[str, list[Package]] = {}
        releases: dict[str, dict[str, str]] = {}
        removed: list[str] = []
        opaque: list[str] = []
        with tarfile.open(fileobj=stream, mode="r|*") as tar:
            for member in tar:
                path = _norm(member.name)
                folder, _, base = path.rpartition("/")
                if base == ".wh..wh..opq":
                    opaque.append(folder + "/" if folder else "")
                    continue
                if base.startswith(".wh."):
                    removed.append((folder + "/" if folder else "") + base[4:])
                    continue
                kind = _kind_of(path, member)
                if kind is None:
                    continue
                data = _read(tar, member, MAX_BINARY if kind == "binary" else MAX_METADATA)
                if data is None:
                    continue
                if kind == "binary":
                    packages = parse_go_buildinfo(data, "/" + path) if GO_MAGIC in data else []
                    if packages:
                        added[path] = packages
                elif kind == "rpm":
                    added[path] = parse_rpmdb(data, "/" + path)
                elif kind == "os-release":
                    releases[path] = parse_os_release(data.decode(errors="replace"))
                else:
                    added[path] = PARSERS[kind](data.decode(errors="replace"), "/" + path)
        for table in (found, os_release):
            for key in list(table):
                if any(key.startswith(prefix) for prefix in opaque) or any(
                        key == gone or key.startswith(gone + "/") for gone in removed):
                    del table[key]
        found.update(added)
        os_release.update(releases)
    release = os_release.get("etc/os-release") or os_release.get("usr/lib/os-release") or {}
    packages = sorted({p for group in found.values() for p in group}, key=lambda p: (p.kind, p.name, p.version, p.path))
    return Inventory(packages, release)
