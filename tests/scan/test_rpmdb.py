"""``machines scan`` on images whose rpm database is in the Berkeley DB (RHEL/CentOS 5-8, Amazon Linux 2) or ndb
(SUSE) format: the packages rpm itself lists, matched against OSV; corrupt databases end in a warning, not a hang."""

from __future__ import annotations

import collections
import gzip
import io
import json
import lzma
import shutil
import struct
from pathlib import Path

import pytest

from machines.runtime.images.scan import rpmdb
from machines.runtime.images.scan.inventory import scan_layers
from tests.scan import fixtures, rpmtools
from tests.trust.conftest import run_machines

DATA = Path(__file__).parent / "data" / "rpm"
OSV = Path(__file__).parent / "osv"
ALMA = b'NAME="AlmaLinux"\nID="almalinux"\nVERSION_ID="8.6"\nPRETTY_NAME="AlmaLinux 8.6 (Sky Tiger)"\n'


@pytest.fixture(scope="module")
def rpms(tmp_path_factory) -> list[Path]:
    return rpmtools.build_rpms(tmp_path_factory.mktemp("rpms"))


@pytest.fixture(scope="module")
def sqlite_db(rpms, tmp_path_factory) -> Path:
    return rpmtools.sqlite_rpmdb(tmp_path_factory.mktemp("sqlite") / "rpm", rpms)


def _bdb(sqlite_db: Path, folder: Path, **options) -> bytes:
    folder.mkdir()
    return rpmtools.bdb_packages(sqlite_db, folder / "Packages", **options).read_bytes()


def _rpm_packages(layer_files: dict[str, bytes]) -> tuple[set[tuple[str, str, str]], list[str]]:
    found = scan_layers([io.BytesIO(fixtures.layer(layer_files))])
    return {(p.name, p.version, p.source) for p in found.packages if p.kind == "rpm"}, found.problems


@pytest.mark.parametrize("page_size,big_endian", [(512, False), (4096, False), (512, True)])
def test_berkeley_db_made_by_libdb_lists_what_rpm_lists(sqlite_db, tmp_path, page_size, big_endian):
    packages = _bdb(sqlite_db, tmp_path / "db", page_size=page_size, big_endian=big_endian)
    assert rpmtools.rpm_lists(tmp_path / "db", "bdb_ro") == rpmtools.EXPECTED  # rpm's own reader agrees
    assert _rpm_packages({"var/lib/rpm/Packages": packages}) == (rpmtools.EXPECTED, [])


def _names_in(path: Path) -> tuple[collections.Counter[str], list[str]]:
    """Each header's name, counted (the inventory folds identical packages into one), and the problems."""
    problems: list[str] = []
    with path.open("rb") as handle:
        blobs = list(rpmdb.header_blobs(handle, path.stat().st_size, problems))
    return collections.Counter(str(rpmdb.rpm_header(blob)["name"]) for blob in blobs), problems


def test_split_buckets_and_removed_packages(sqlite_db, tmp_path):
    (tmp_path / "db").mkdir()
    path = rpmtools.bdb_packages(sqlite_db, tmp_path / "db" / "Packages", copies=100)
    names = {"openssl-libs": 100, "bash": 100, "zlib": 100}
    assert _names_in(path) == (names, []) and rpmtools.rpm_names(tmp_path / "db") == names
    rpmtools.bdb_delete(path, list(range(1, 301, 3)))  # one of the packages gone, its overflow pages freed
    left, problems = _names_in(path)
    assert problems == [] and sorted(left.values()) == [100, 100] and left.keys() < names.keys()
    assert left == rpmtools.rpm_names(tmp_path / "db")


def test_real_el8_berkeley_db_and_suse_ndb(tmp_path):
    packages = gzip.decompress((DATA / "el8-libuuid-Packages.gz").read_bytes())
    (tmp_path / "el8").mkdir()
    (tmp_path / "el8" / "Packages").write_bytes(packages)
    assert rpmtools.rpm_lists(tmp_path / "el8", "bdb_ro") == {("libuuid", "2.32.1-42.el8_8", "util-linux")}
    assert _rpm_packages({"var/lib/rpm/Packages": packages}) == (
        {("libuuid", "2.32.1-42.el8_8", "util-linux")}, [])

    ndb = lzma.decompress((DATA / "sle15-bci-Packages.db.xz").read_bytes())
    found = scan_layers([io.BytesIO(fixtures.layer({"usr/lib/sysimage/rpm/Packages.db": ndb}))])
    assert found.problems == []
    assert len(found.packages) == 35  # as rpm -qa listed them in the image
    listed = {(p.name, p.version, p.source, p.arch, p.license) for p in found.packages}
    assert {("glibc", "2.31-9.3.2", "glibc", "x86_64",
             "LGPL-2.1-or-later AND LGPL-2.1-or-later WITH GCC-exception-2.0 AND GPL-2.0-or-later"),
            ("libreadline7", "7.0-19.6.1", "bash", "x86_64", "GPL-3.0-or-later"),
            ("libstdc++6", "11.2.1+git610-1.3.9", "gcc11", "x86_64", "GPL-3.0-or-later WITH GCC-exception-3.1"),
            ("rpm-ndb", "4.14.3-40.1", "rpm-ndb", "x86_64", "GPL-2.0-or-later")} <= listed
    assert found.packages[0].path == "/usr/lib/sysimage/rpm/Packages.db"


def test_scan_of_an_el8_image_with_a_berkeley_db_finds_the_advisory(sqlite_db, tmp_path):
    archive = fixtures.save_archive(tmp_path / "alma8.tar", [fixtures.layer({
        "etc/os-release": ALMA, "var/lib/rpm/Packages": _bdb(sqlite_db, tmp_path / "db")})])
    db = tmp_path / "osv"
    db.mkdir()
    record = next(p for p in OSV.glob("*.json") if json.loads(p.read_text())["id"] == "ALSA-2022:1065")
    shutil.copy(record, db)
    fixed = next(event["fixed"] for affected in json.loads(record.read_text())["affected"]
                 if affected["package"]["name"] == "openssl" for rng in affected.get("ranges", [])
                 for event in rng["events"] if "fixed" in event)

    table = run_machines("scan", str(archive), "--db", str(db))
    assert table.code == 0, table.err
    assert table.err == ""
    lines = table.out.splitlines()
    assert lines[1].split()[:4] == ["ALSA-2022:1065", "openssl-libs", "1:1.1.1k-5.el8_5", fixed]
    assert lines[-1].startswith("3 packages (almalinux 8.6); 1 vulnerabilities")

    sbom = json.loads(run_machines("scan", str(archive), "--sbom", "cyclonedx").out)
    assert {c["purl"] for c in sbom["components"]} == {
        "pkg:rpm/almalinux/openssl-libs@1.1.1k-5.el8_5?arch=x86_64&distro=almalinux-8.6&epoch=1",
        "pkg:rpm/almalinux/bash@4.4.20-4.el8_6?arch=x86_64&distro=almalinux-8.6",
        "pkg:rpm/almalinux/zlib@1.2.11-18.el8_5?arch=x86_64&distro=almalinux-8.6"}


def test_the_database_rpm_would_use_wins_and_whiteouts_remove_it(rpms, tmp_path):
    stale = _bdb(rpmtools.sqlite_rpmdb(tmp_path / "old", rpms[:1]), tmp_path / "db")  # before --rebuilddb
    current = rpmtools.sqlite_rpmdb(tmp_path / "new", rpms).read_bytes()
    assert _rpm_packages({"var/lib/rpm/Packages": stale, "var/lib/rpm/rpmdb.sqlite": current}) == (
        rpmtools.EXPECTED, [])
    lower = fixtures.layer({"var/lib/rpm/Packages": stale})
    upper = fixtures.layer({"var/lib/rpm/.wh.Packages": None})
    assert scan_layers([io.BytesIO(lower), io.BytesIO(upper)]).packages == []


# --- hostile databases: each ends with what could be read and a warning naming the file ----------------------

def _pages(data: bytes, size: int) -> list[bytearray]:
    return [bytearray(data[at:at + size]) for at in range(0, len(data), size)]


def _overflow_starts(pages: list[bytearray]) -> list[tuple[int, int]]:
    """(hash page, offset of the H_OFFPAGE item) of every value stored in overflow pages."""
    found = []
    for number, page in enumerate(pages):
        if page[25] == 13:
            entries = struct.unpack_from("<H", page, 20)[0]
            for index in range(1, entries, 2):
                at = struct.unpack_from("<H", page, 26 + 2 * index)[0]
                if page[at] == 3:
                    found.append((number, at))
    return found


def test_loops_and_lies_in_overflow_chains_skip_the_entry(sqlite_db, tmp_path):
    pages = _pages(_bdb(sqlite_db, tmp_path / "db"), 512)
    starts = _overflow_starts(pages)
    assert len(starts) == 3
    (page, at), (page2, at2), (page3, at3) = starts
    first = struct.unpack_from("<I", pages[page], at + 4)[0]
    struct.pack_into("<I", pages[first], 16, first)  # the chain's first page names itself as the next one
    struct.pack_into("<I", pages[page2], at2 + 8, 0xFFFFFFFF)  # a value of 4 GiB
    struct.pack_into("<I", pages[page3], at3 + 4, first)  # a value starting in another value's chain
    listed, problems = _rpm_packages({"var/lib/rpm/Packages": b"".join(pages)})
    assert listed == set()
    assert len(problems) == 3
    assert all(p.startswith("/var/lib/rpm/Packages: page ") and "broken overflow chain: skipped" in p
               for p in problems)

    result = run_machines("scan", str(fixtures.save_archive(tmp_path / "bad.tar", [fixtures.layer({
        "etc/os-release": ALMA, "var/lib/rpm/Packages": b"".join(pages)})])), "--db", str(OSV))
    assert result.code == 0 and "Traceback" not in result.err
    assert result.err.splitlines() == [f"Warning: {problem}" for problem in problems]
    as_json = run_machines("scan", str(tmp_path / "bad.tar"), "--db", str(OSV), "--format", "json")
    assert json.loads(as_json.out)["warnings"] == problems


def test_truncated_and_inflated_berkeley_db(sqlite_db, tmp_path):
    data = _bdb(sqlite_db, tmp_path / "db")
    listed, problems = _rpm_packages({"var/lib/rpm/Packages": data[:len(data) // 2]})
    assert listed < rpmtools.EXPECTED
    assert problems[0].startswith("/var/lib/rpm/Packages: truncated: ")

    pages = _pages(data, 512)
    struct.pack_into("<I", pages[0], 32, 0xFFFFFFFF)  # last page number: far past the file
    listed, problems = _rpm_packages({"var/lib/rpm/Packages": b"".join(pages)})
    assert listed == rpmtools.EXPECTED and "truncated" in problems[0]

    pages = _pages(data, 512)
    hash_page = _overflow_starts(pages)[0][0]
    struct.pack_into("<H", pages[hash_page], 20, 0xFFFE)  # more entries than a page holds
    listed, problems = _rpm_packages({"var/lib/rpm/Packages": b"".join(pages)})
    assert f"page {hash_page}: bad entry count 65534: skipped" in problems[0]

    for bad, why in [(data[:300], "truncated Berkeley DB metadata page"),
                     (data[:20] + struct.pack("<I", 3000) + data[24:], "bad Berkeley DB page size 3000"),
                     (b"\0" * 4096, "not an rpm database (neither SQLite, Berkeley DB Hash nor ndb)")]:
        assert _rpm_packages({"var/lib/rpm/Packages": bad}) == (
            set(), [f"/var/lib/rpm/Packages: {why}: its packages are not listed"])


def _hash_page(number: int, pairs: list[tuple[bytes, bytes]], page_size: int = 512) -> bytes:
    """A Berkeley DB hash page (little-endian) holding ``pairs`` as in-page items, laid out from the page's end."""
    offsets, items, end = [], b"", page_size
    for key, value in pairs:
        for data in (key, value):
            item = b"\x01" + data
            end -= len(item)
            offsets.append(end)
            items = item + items
    header = struct.pack("<8xIIIHHBB", number, 0, 0, len(offsets), end, 0, 13)
    body = header + struct.pack(f"<{len(offsets)}H", *offsets)
    return body + b"\0" * (end - len(body)) + items


def test_floods_of_entries_and_damage_are_cut_short(sqlite_db, tmp_path):
    meta = bytearray(_bdb(sqlite_db, tmp_path / "db")[:512])
    pages = 2400
    struct.pack_into("<I", meta, 32, pages)
    flood = [_hash_page(n, [(struct.pack("<I", n * 50 + i), b"z") for i in range(44)]) for n in range(1, pages + 1)]
    listed, problems = _rpm_packages({"var/lib/rpm/Packages": bytes(meta) + b"".join(flood)})
    assert listed == set()
    assert problems == ["/var/lib/rpm/Packages: more than 100000 entries: the rest is not read: skipped",
                        "/var/lib/rpm/Packages: 100000 entries are not rpm headers: skipped"]

    broken = [bytearray(page) for page in flood]
    for page in broken:
        struct.pack_into("<H", page, 26, 600)  # the first item lies past the end of the page
    listed, problems = _rpm_packages({"var/lib/rpm/Packages": bytes(meta) + b"".join(broken)})
    assert len(problems) == 21 and problems[-1] == "/var/lib/rpm/Packages: more damage not listed: skipped"
    assert problems[0] == "/var/lib/rpm/Packages: page 1: entry 0 lies outside the page: skipped"


def test_damaged_ndb(tmp_path):
    ndb = bytearray(lzma.decompress((DATA / "sle15-bci-Packages.db.xz").read_bytes()))
    _, index, block, _ = struct.unpack_from("<4sIII", ndb, 32)  # the first package's slot
    ndb[block * 16 + 100] ^= 0xFF  # a flipped byte in its blob: the checksum no longer matches
    struct.pack_into("<I", ndb, 48 + 8, 0x7FFFFFFF)  # the second slot points far past the end of the file
    found = scan_layers([io.BytesIO(fixtures.layer({"var/lib/rpm/Packages.db": bytes(ndb)}))])
    assert len(found.packages) == 33
    assert found.problems == [f"/var/lib/rpm/Packages.db: package {index}: damaged blob: skipped",
                              f"/var/lib/rpm/Packages.db: package {index + 1}: blob outside the file: skipped"]
    struct.pack_into("<I", ndb, 12, 0xFFFFFFFF)  # slot pages: far more than the file holds
    found = scan_layers([io.BytesIO(fixtures.layer({"var/lib/rpm/Packages.db": bytes(ndb)}))])
    assert found.packages == [] and "truncated ndb database" in found.problems[0]
    struct.pack_into("<I", ndb, 12, 4096)  # fewer than the file holds, but more than any real database has
    huge = bytes(ndb) + b"\0" * (4096 * 4096 - len(ndb))
    found = scan_layers([io.BytesIO(fixtures.layer({"var/lib/rpm/Packages.db": huge}))])
    assert found.problems == ["/var/lib/rpm/Packages.db: ndb database with 4096 slot pages (at most 2048 are read): "
                              "its packages are not listed"]


def test_headers_with_huge_counts_are_skipped():
    with pytest.raises(ValueError, match="truncated rpm header"):
        rpmdb.rpm_header(struct.pack(">II", 0xFFFFFFFF, 0xFFFFFFFF) + b"\0" * 64)
    with pytest.raises(ValueError, match="truncated rpm header"):
        rpmdb.rpm_header(b"\0\0\0")
