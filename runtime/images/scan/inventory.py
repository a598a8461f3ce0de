"""Packages of an image, read from its layers the way the package managers keep them (standard library only:
the runtime scans images on arrival with it, ``machines scan`` on the workstation).

Layers are read in order as streamed tars, keeping only the files that describe packages (dpkg's status and
``status.d``, apk's ``installed`` database, rpm's database in any of its formats (see ``rpmdb``), Python
``.dist-info``/``.egg-info`` metadata, npm ``node_modules/**/package.json``, ``os-release``) and the build info of Go
executables (see ``gobinary``); whiteouts and opaque directories of later layers remove what earlier layers had, so
the result is the image's final filesystem. Files that could be read only in part, or not at all, are named in
``Inventory.problems``, so a report never passes an unreadable database off as an empty one.
"""

from __future__ import annotations

import dataclasses
import email.parser
import json
import re
import shutil
import struct
import tarfile
import tempfile
from collections.abc import Iterable
from typing import IO

from machines.runtime.images.scan import gobinary, rpmdb

MAX_METADATA = 64 << 20
MAX_BINARY = 256 << 20
MAX_RPMDB = 1 << 30  # spooled to a temporary file, read a page at a time
# rpm's database formats by file name, best first: rpm >= 4.16 converts an older database to sqlite and may leave
# the old file behind, which then no longer changes
RPMDB_FILES = ("rpmdb.sqlite", "Packages.db", "Packages")
RPMDB_PATHS = tuple(f"{folder}/{name}" for folder in ("var/lib/rpm", "usr/lib/sysimage/rpm") for name in RPMDB_FILES)
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
    problems: list[str] = dataclasses.field(default_factory=list)

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


def parse_rpmdb(handle: IO[bytes], size: int, path: str, problems: list[str]) -> list[Package]:
    """The packages of an rpm database (sqlite, Berkeley DB or ndb); what cannot be read goes to ``problems``."""
    out: list[Package] = []
    notes: list[str] = []
    try:
        blobs = list(rpmdb.header_blobs(handle, size, notes))
    except rpmdb.RpmDbError as exc:
        problems.append(f"{path}: {exc}: its packages are not listed")
        return []
    unreadable = 0
    for blob in blobs:
        try:
            tags = rpmdb.rpm_header(blob)
        except (ValueError, struct.error):
            unreadable += 1
            continue
        if not tags.get("name") or tags.get("name") == "gpg-pubkey":
            continue
        evr = f"{tags.get('version', '')}-{tags.get('release', '')}"
        if tags.get("epoch") is not None:
            evr = f"{tags['epoch']}:{evr}"
        source = rpmdb.source_name(str(tags.get("sourcerpm") or "")) or str(tags["name"])
        out.append(Package(str(tags["name"]), evr, "rpm", path, source, evr, str(tags.get("arch") or ""),
                           str(tags.get("license") or "")))
    if unreadable:
        notes.append(f"{unreadable} entries are not rpm headers")
    problems.extend(f"{path}: {note}: skipped" for note in notes)
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


def parse_go_binary(data: bytes, path: str) -> list[Package]:
    """The Go toolchain (as ``stdlib``, how OSV names it) and the modules built into a Go executable."""
    info = gobinary.build_info(data)
    if info is None:
        return []
    version, modinfo = info
    out = [Package("stdlib", version, "go", path)] if version.startswith("go") else []
    return out + [Package(name, module_version, "go", path) for name, module_version in gobinary.modules(modinfo)]


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


def _read_rpmdb(tar: tarfile.TarFile, member: tarfile.TarInfo, path: str, problems: list[str]) -> list[Package]:
    """Spooled to a temporary file: the formats are read by offset, and sqlite needs a file."""
    handle = tar.extractfile(member) if member.isfile() else None
    if handle is None:
        return []
    if member.size > MAX_RPMDB:
        problems.append(f"{path}: larger than {MAX_RPMDB >> 20} MiB: its packages are not listed")
        return []
    with tempfile.NamedTemporaryFile(prefix="rpmdb-") as copy:
        shutil.copyfileobj(handle, copy, 1 << 20)
        copy.flush()
        return parse_rpmdb(copy, member.size, path, problems)


def _preferred_rpmdbs(found: dict[str, list[Package]]) -> None:
    """One rpm database per folder, the one rpm itself would use (see ``RPMDB_FILES``)."""
    for path in [p for p in found if p in RPMDB_PATHS]:
        folder, _, name = path.rpartition("/")
        if any(f"{folder}/{better}" in found for better in RPMDB_FILES[:RPMDB_FILES.index(name)]):
            del found[path]


def scan_layers(layers: Iterable[IO[bytes]]) -> Inventory:
    """The inventory of the filesystem the layers (tar streams, lowest first) make together."""
    found: dict[str, list[Package]] = {}
    os_release: dict[str, dict[str, str]] = {}
    problems: dict[str, list[str]] = {}
    for stream in layers:
        added: dict[str, list[Package]] = {}
        releases: dict[str, dict[str, str]] = {}
        noted: dict[str, list[str]] = {}
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
                if kind == "rpm":
                    added[path] = _read_rpmdb(tar, member, "/" + path, noted.setdefault(path, []))
                    continue
                data = _read(tar, member, MAX_BINARY if kind == "binary" else MAX_METADATA)
                if data is None:
                    continue
                if kind == "binary":
                    packages = parse_go_binary(data, "/" + path) if gobinary.GO_MAGIC in data else []
                    if packages:
                        added[path] = packages
                elif kind == "os-release":
                    releases[path] = parse_os_release(data.decode(errors="replace"))
                else:
                    added[path] = PARSERS[kind](data.decode(errors="replace"), "/" + path)
        for table in (found, os_release, problems):
            for key in list(table):
                if any(key.startswith(prefix) for prefix in opaque) or any(
                        key == gone or key.startswith(gone + "/") for gone in removed):
                    del table[key]
        found.update(added)
        os_release.update(releases)
        problems.update(noted)
    _preferred_rpmdbs(found)
    release = os_release.get("etc/os-release") or os_release.get("usr/lib/os-release") or {}
    packages = sorted({p for group in found.values() for p in group}, key=lambda p: (p.kind, p.name, p.version, p.path))
    return Inventory(packages, release, [line for path in sorted(found) for line in problems.get(path, [])])
