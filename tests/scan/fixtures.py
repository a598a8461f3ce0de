"""Small images in each package format, made by the tests: an Alpine-format layer (apk's installed database), an
RPM-format one (an rpmdb.sqlite whose Packages rows are real rpm header blobs), Python and npm packages and a Go
executable's build info, packed as layers of a ``docker save`` archive."""

from __future__ import annotations

import io
import json
import sqlite3
import struct
import tarfile
from pathlib import Path

APK_INSTALLED = """C:Q1abc=
P:musl
V:1.2.3-r0
A:x86_64
L:MIT
o:musl

C:Q1def=
P:zlib
V:1.2.12-r1
A:x86_64
L:Zlib
o:zlib

P:libssl1.1
V:1.1.1q-r0
A:x86_64
o:openssl

P:mariadb-client
V:10.6.7-r0
A:x86_64
o:mariadb
"""


def rpm_header(tags: dict[int, object]) -> bytes:
    """An rpm header blob (index entries + data store) as rpm writes into rpmdb.sqlite."""
    index, store = b"", b""
    for tag, value in sorted(tags.items()):
        if isinstance(value, int):
            store += b"\0" * (-len(store) % 4)
            index += struct.pack(">IIII", tag, 4, len(store), 1)
            store += struct.pack(">I", value)
        else:
            index += struct.pack(">IIII", tag, 6, len(store), 1)
            store += str(value).encode() + b"\0"
    return struct.pack(">II", len(tags), len(store)) + index + store


def rpmdb(packages: list[dict[int, object]]) -> bytes:
    path = Path(f"/tmp/rpmdb-{id(packages)}.sqlite")
    try:
        db = sqlite3.connect(path)
        db.execute("CREATE TABLE Packages (hnum INTEGER PRIMARY KEY AUTOINCREMENT, blob BLOB NOT NULL)")
        db.executemany("INSERT INTO Packages (blob) VALUES (?)", [(rpm_header(p),) for p in packages])
        db.commit()
        db.close()
        return path.read_bytes()
    finally:
        path.unlink(missing_ok=True)


SENTINEL_START = bytes.fromhex("3077af0c9274080241e1c107e6d618e6")  # cmd/go's framing of the module info
SENTINEL_END = bytes.fromhex("f932433186182072008242104116d8f2")
DATA_ADDRESS = 0x4A0000


def elf(segment: bytes, *, wide: bool = True, big: bool = False, address: int = DATA_ADDRESS) -> bytes:
    """An ELF executable whose only segment is ``segment``, loaded writable (as Go's data segment) at ``address``
    from file offset 4096."""
    order = ">" if big else "<"
    if wide:
        header = struct.pack(order + "16sHHIQQQIHHHHHH", b"\x7fELF\x02" + bytes([2 if big else 1, 1]) + b"\0" * 9,
                             2, 62, 1, 0, 64, 0, 0, 64, 56, 1, 64, 0, 0)
        program = struct.pack(order + "IIQQQQQQ", 1, 6, 4096, address, address, len(segment), len(segment), 4096)
    else:
        header = struct.pack(order + "16sHHIIIIIHHHHHH", b"\x7fELF\x01" + bytes([2 if big else 1, 1]) + b"\0" * 9,
                             2, 3, 1, 0, 52, 0, 0, 52, 32, 1, 40, 0, 0)
        program = struct.pack(order + "IIIIIIII", 1, 4096, address, address, len(segment), len(segment), 6, 4096)
    prefix = header + program
    return prefix + b"\0" * (4096 - len(prefix)) + segment


def go_binary(go_version: str, modinfo: str) -> bytes:
    """An ELF file carrying Go 1.18+ build info (inline strings): magic, pointer size, flags, then two varint-
    prefixed strings; the module info between Go's 16-byte sentinels."""
    def varint(n: int) -> bytes:
        out = b""
        while True:
            byte, n = n & 0x7F, n >> 7
            out += bytes([byte | (0x80 if n else 0)])
            if not n:
                return out

    info = SENTINEL_START + modinfo.encode() + SENTINEL_END
    header = b"\xff Go buildinf:" + bytes([8, 2]) + b"\0" * 16
    return elf(b"\0" * 2048 + header + varint(len(go_version)) + go_version.encode() + varint(len(info)) + info
               + b"\0" * 512)


def go_binary_before_1_18(go_version: str, modinfo: str, *, wide: bool = True, big: bool = False) -> bytes:
    """An ELF file carrying the build info of Go < 1.18: after magic, pointer size and byte order, two pointers to
    Go string headers (data pointer, length) elsewhere in the data segment, which point to the strings."""
    size = 8 if wide else 4
    word = (">" if big else "<") + ("Q" if wide else "I")
    info = SENTINEL_START + modinfo.encode() + SENTINEL_END
    strings_at = 64 + 4 * size  # header, the two string headers, then the bytes
    version_header = struct.pack(word, DATA_ADDRESS + strings_at) + struct.pack(word, len(go_version))
    info_header = struct.pack(word, DATA_ADDRESS + strings_at + len(go_version)) + struct.pack(word, len(info))
    header = (b"\xff Go buildinf:" + bytes([size, 1 if big else 0]) + struct.pack(word, DATA_ADDRESS + 64)
              + struct.pack(word, DATA_ADDRESS + 64 + 2 * size))
    segment = header.ljust(64, b"\0") + version_header + info_header + go_version.encode() + info
    return elf(segment, wide=wide, big=big)


GO_MODINFO = ("path\texample.com/server\nmod\texample.com/server\t(devel)\t\n"
              "dep\tgolang.org/x/text\tv0.3.7\th1:olpwvP2KacW1ZWvsR7uQhoyTYvKAupfQrRGBFM352Gk=\n"
              "dep\tgolang.org/x/net\tv0.0.0-20220722155237-a158d28d115b\th1:x=\n"
              "dep\tgithub.com/old/name\tv1.0.0\th1:x=\n=>\tgithub.com/new/name\tv1.2.0\th1:y=\n")


def layer(files: dict[str, bytes | None], modes: dict[str, int] | None = None) -> bytes:
    """A layer tar; ``None`` content makes an empty regular file (for whiteouts)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data or b"")
            info.mode = (modes or {}).get(name, 0o644)
            tar.addfile(info, io.BytesIO(data or b""))
    return buffer.getvalue()


def save_archive(path: Path, layers: list[bytes], tag: str = "fixture:1") -> Path:
    """A ``docker save`` archive of ``layers`` (the config is not read by the scanner, only listed)."""
    with tarfile.open(path, "w") as tar:
        def add(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        names = []
        for number, data in enumerate(layers):
            names.append(f"layer{number}/layer.tar")
            add(names[-1], data)
        add("config.json", b"{}")
        add("manifest.json", json.dumps([{"Config": "config.json", "RepoTags": [tag], "Layers": names}]).encode())
    return path


def alpine_layers() -> list[bytes]:
    base = layer({
        "etc/os-release": b'NAME="Alpine Linux"\nID=alpine\nVERSION_ID=3.16.2\nPRETTY_NAME="Alpine Linux v3.16"\n',
        "lib/apk/db/installed": APK_INSTALLED.encode(),
        "usr/lib/python3.10/site-packages/requests-2.28.0.dist-info/METADATA":
            b"Metadata-Version: 2.1\nName: requests\nVersion: 2.28.0\nLicense: Apache 2.0\n",
        "usr/lib/python3.10/site-packages/urllib3-1.26.5.dist-info/METADATA":
            b"Metadata-Version: 2.1\nName: urllib3\nVersion: 1.26.5\n",
        "usr/lib/python3.10/site-packages/Old_Thing.egg-info/PKG-INFO": b"Name: Old_Thing\nVersion: 0.9\n",
        "app/node_modules/lodash/package.json": json.dumps({"name": "lodash", "version": "4.17.20"}).encode(),
        "app/node_modules/@scope/tool/package.json": json.dumps({"name": "@scope/tool", "version": "1.0.0"}).encode(),
        "app/package.json": json.dumps({"name": "the-app", "version": "0.0.1"}).encode(),
        "usr/local/bin/server": go_binary("go1.18.1", GO_MODINFO),
    }, {"usr/local/bin/server": 0o755})
    upper = layer({  # removes urllib3 and upgrades the apk database: later layers win
        "usr/lib/python3.10/site-packages/.wh.urllib3-1.26.5.dist-info": None,
    })
    return [base, upper]


DEBIAN9_STATUS = """Package: libssl1.1
Status: install ok installed
Architecture: amd64
Source: openssl
Version: 1.1.0l-1~deb9u5

Package: libxml2
Status: install ok installed
Architecture: amd64
Version: 2.9.4+dfsg1-2.2+deb9u7

Package: dpkg
Status: install ok installed
Architecture: amd64
Version: 1.18.25

Package: tzdata
Status: install ok installed
Architecture: all
Version: 2021a-0+deb9u3

Package: libssl1.0.2
Status: deinstall ok config-files
Architecture: amd64
Source: openssl1.0
Version: 1.0.2u-1~deb9u7
"""


def debian9_layers() -> list[bytes]:
    """A Debian 9 layer: its dpkg status names packages that published DLA records (tests/scan/osv) cover."""
    return [layer({"etc/os-release": b'PRETTY_NAME="Debian GNU/Linux 9 (stretch)"\nID=debian\nVERSION_ID="9"\n',
                   "var/lib/dpkg/status": DEBIAN9_STATUS.encode()})]


def rpm_layers() -> list[bytes]:
    packages = [
        {1000: "openssl-libs", 1001: "1.1.1k", 1002: "5.el8_5", 1003: 1, 1022: "x86_64",
         1044: "openssl-1.1.1k-5.el8_5.src.rpm", 1014: "OpenSSL and ASL 2.0"},
        {1000: "bash", 1001: "4.4.20", 1002: "4.el8_6", 1022: "x86_64", 1044: "bash-4.4.20-4.el8_6.src.rpm"},
        {1000: "gpg-pubkey", 1001: "c21ad6ea", 1002: "61085a1a"},
    ]
    return [layer({"etc/os-release": b'NAME="AlmaLinux"\nID="almalinux"\nVERSION_ID="8.6"\n',
                   "var/lib/rpm/rpmdb.sqlite": rpmdb(packages)})]
