"""rpm's package databases in their three formats, read without rpm or Berkeley DB (standard library only).

- ``rpmdb.sqlite`` (rpm >= 4.16: Fedora 33+, RHEL 9): a ``Packages`` table of header blobs.
- ``Packages`` in Berkeley DB's Hash format (RHEL/CentOS 5-8, Amazon Linux 2, older Fedora and SUSE): bucket pages
  hold key/value pairs; a value as large as a header lives in a chain of overflow pages. Read the way rpm's own
  ``bdb_ro`` backend does: metadata page, then every hash page, then each value's overflow chain.
- ``Packages.db``, rpm's "ndb" (SUSE since 15 SP3): slot pages naming where each package's blob lies, every blob
  framed by a head and a tail with an Adler-32 checksum.

The file is hostile input (it comes from an image): every count, offset and page number is checked against the file
before use, an overflow page is consumed at most once, nothing is read that the file does not hold, a page whose
index is wrong is left at its first bad entry, and at most ``MAX_PACKAGES`` entries and ``MAX_NOTES`` problems are
kept; so a corrupt database ends in :class:`RpmDbError` or in entries reported as skipped, in time linear in the
file's size and memory bounded by it, never in a loop.
"""

from __future__ import annotations

import re
import sqlite3
import struct
import zlib
from collections.abc import Callable, Iterator
from typing import IO

SQLITE_MAGIC = b"SQLite format 3\0"
BDB_HASH_MAGIC = 0x00061561
BDB_PAGE_SIZES = {512 << shift for shift in range(8)}  # 512 ... 65536
BDB_HASH_PAGES = (2, 13)  # P_HASH_UNSORTED (hash version 8, BDB < 4.6), P_HASH
BDB_OVERFLOW_PAGE = 7
BDB_KEYDATA, BDB_OFFPAGE = 1, 3  # H_KEYDATA (value in the page), H_OFFPAGE (value in overflow pages)
PAGE_HEADER = 26
NDB_MAGIC, NDB_SLOT, NDB_BLOB_HEAD, NDB_BLOB_TAIL = b"RpmP", b"Slot", b"BlbS", b"BlbE"
NDB_PAGE, NDB_BLOCK = 4096, 16
MAX_HEADER_ENTRIES = 100000
MAX_PACKAGES = 100000  # a full RHEL install has a few thousand; more is a crafted file, not read to its end
MAX_SLOT_PAGES = 2048  # ndb: 524,286 slots
MAX_NOTES = 20
RPM_TAGS = {1000: "name", 1001: "version", 1002: "release", 1003: "epoch", 1014: "license", 1022: "arch",
            1044: "sourcerpm"}


class RpmDbError(ValueError):
    """The database cannot be read at all; the message says why."""


def rpm_header(blob: bytes) -> dict[str, object]:
    """The tags we need from an rpm header blob (index entries + data store, without the lead magic, as every
    rpm database stores it)."""
    if len(blob) < 8:
        raise ValueError("truncated rpm header")
    count, size = struct.unpack_from(">II", blob)
    base = 8 + 16 * count
    if count > MAX_HEADER_ENTRIES or base + size > len(blob):
        raise ValueError("truncated rpm header")
    out: dict[str, object] = {}
    for index in range(count):
        tag, kind, offset, _ = struct.unpack_from(">IIII", blob, 8 + 16 * index)
        if tag not in RPM_TAGS or offset >= size:
            continue
        data = blob[base + offset: base + size]
        if kind == 4 and len(data) >= 4:  # INT32
            out[RPM_TAGS[tag]] = struct.unpack_from(">I", data)[0]
        elif kind in (6, 8, 9):  # STRING, STRING_ARRAY, I18NSTRING: the first string
            out[RPM_TAGS[tag]] = data.split(b"\0", 1)[0].decode(errors="replace")
    return out


def source_name(sourcerpm: str) -> str:
    """``openssl-1.1.1k-5.el8_5.src.rpm`` -> ``openssl``: the name OS advisories are written against."""
    return re.sub(r"-[^-]+-[^-]+\.(no)?src\.rpm$", "", sourcerpm)


def header_blobs(handle: IO[bytes], size: int, problems: list[str]) -> Iterator[bytes]:
    """The header blobs of an rpm database of any of the three formats (told apart by their magic numbers).
    Entries that cannot be read are left out with a line in ``problems`` (the first ``MAX_NOTES`` of them)."""
    def note(text: str) -> None:
        if len(problems) < MAX_NOTES:
            problems.append(text)
        elif len(problems) == MAX_NOTES:
            problems.append("more damage not listed")

    head = _pread(handle, 0, 512)
    if head.startswith(SQLITE_MAGIC):
        blobs = _sqlite_blobs(handle)
    elif head.startswith(NDB_MAGIC):
        blobs = _ndb_blobs(handle, size, note)
    elif len(head) >= 16 and BDB_HASH_MAGIC in struct.unpack_from("<I", head, 12) + struct.unpack_from(">I", head, 12):
        blobs = _bdb_blobs(handle, size, note)
    else:
        raise RpmDbError("not an rpm database (neither SQLite, Berkeley DB Hash nor ndb)")
    for count, blob in enumerate(blobs):
        if count == MAX_PACKAGES:
            note(f"more than {MAX_PACKAGES} entries: the rest is not read")
            return
        yield blob


def _pread(handle: IO[bytes], offset: int, length: int) -> bytes:
    handle.seek(offset)
    return handle.read(length)


def _sqlite_blobs(handle: IO[bytes]) -> Iterator[bytes]:
    name = getattr(handle, "name", None)
    if not isinstance(name, str):
        raise RpmDbError("an SQLite rpm database must be a file")
    db = sqlite3.connect(f"file:{name}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT blob FROM Packages")
        for (blob,) in rows:
            yield bytes(blob)
    except sqlite3.DatabaseError as exc:
        raise RpmDbError(f"unreadable SQLite database: {exc}") from None
    finally:
        db.close()


def _bdb_blobs(handle: IO[bytes], size: int, note: Callable[[str], None]) -> Iterator[bytes]:
    meta = _pread(handle, 0, 512)
    if len(meta) < 512:
        raise RpmDbError("truncated Berkeley DB metadata page")
    order = "<" if struct.unpack_from("<I", meta, 12)[0] == BDB_HASH_MAGIC else ">"  # the writer's byte order
    version, page_size = struct.unpack_from(order + "II", meta, 16)
    last_page = struct.unpack_from(order + "I", meta, 32)[0]
    if meta[24] != 0:
        raise RpmDbError("encrypted Berkeley DB database")
    if meta[25] != 8 or not 8 <= version <= 10:
        raise RpmDbError(f"unsupported Berkeley DB hash database (page type {meta[25]}, version {version})")
    if page_size not in BDB_PAGE_SIZES:
        raise RpmDbError(f"bad Berkeley DB page size {page_size}")
    pages = size // page_size
    if last_page >= pages:
        note(f"truncated: {pages} of {last_page + 1} pages present")
        last_page = pages - 1
    consumed: set[int] = set()  # overflow pages already read: each belongs to exactly one value

    def page(number: int) -> bytes | None:
        data = _pread(handle, number * page_size, page_size)
        if len(data) < page_size or struct.unpack_from(order + "I", data, 8)[0] != number:
            return None
        return data

    def overflow(first: int, length: int) -> bytes | None:
        out = bytearray()
        number = first
        while len(out) < length:
            if not 0 < number <= last_page or number in consumed:
                return None
            consumed.add(number)
            data = page(number)
            if data is None or data[25] != BDB_OVERFLOW_PAGE:
                return None
            used = struct.unpack_from(order + "H", data, 22)[0]
            if PAGE_HEADER + used > page_size or len(out) + used > length:
                return None
            out += data[PAGE_HEADER:PAGE_HEADER + used]
            number = struct.unpack_from(order + "I", data, 16)[0]
        return bytes(out)

    for number in range(1, last_page + 1):
        data = page(number)
        if data is None or data[25] not in BDB_HASH_PAGES:
            continue
        entries = struct.unpack_from(order + "H", data, 20)[0]
        if PAGE_HEADER + 2 * entries > page_size or entries % 2:
            note(f"page {number}: bad entry count {entries}")
            continue
        offsets = struct.unpack_from(f"{order}{entries}H", data, PAGE_HEADER)
        low = PAGE_HEADER + 2 * entries
        for pair in range(0, entries, 2):
            key_at, value_at = offsets[pair], offsets[pair + 1]
            key_end = page_size if pair == 0 else offsets[pair - 1]
            if not low <= value_at < key_at < key_end <= page_size:
                note(f"page {number}: entry {pair // 2} lies outside the page")
                break  # the page's index is wrong: nothing after it can be trusted
            kind = data[value_at]
            if kind == BDB_KEYDATA:
                value = data[value_at + 1:key_at]
            elif kind == BDB_OFFPAGE and key_at - value_at >= 12:
                first, length = struct.unpack_from(order + "II", data, value_at + 4)
                chained = overflow(first, length) if 0 < length <= size else None
                if chained is None:
                    note(f"page {number}: entry {pair // 2} has a broken overflow chain")
                    continue
                value = chained
            else:
                note(f"page {number}: entry {pair // 2} of unknown type {kind}")
                break
            if data[key_at] == BDB_KEYDATA and data[key_at + 1:key_end] == b"\0\0\0\0":
                continue  # header number 0 holds rpm's next-instance counter, not a package
            yield value


def _ndb_blobs(handle: IO[bytes], size: int, note: Callable[[str], None]) -> Iterator[bytes]:
    head = _pread(handle, 0, 32)
    if len(head) < 32:
        raise RpmDbError("truncated ndb header")
    version, _, slot_pages = struct.unpack_from("<III", head, 4)
    if version != 0:
        raise RpmDbError(f"unsupported ndb version {version}")
    if not 0 < slot_pages * NDB_PAGE <= size:
        raise RpmDbError(f"truncated ndb database: {slot_pages} slot pages in {size} bytes")
    if slot_pages > MAX_SLOT_PAGES:
        raise RpmDbError(f"ndb database with {slot_pages} slot pages (at most {MAX_SLOT_PAGES} are read)")
    slots = _pread(handle, 0, slot_pages * NDB_PAGE)
    for at in range(2 * NDB_BLOCK, len(slots), NDB_BLOCK):  # the first two slots are the database header
        magic, index, block, blocks = struct.unpack_from("<4sIII", slots, at)
        if magic != NDB_SLOT:
            raise RpmDbError(f"bad ndb slot {at // NDB_BLOCK}")
        if not index or not block:
            continue  # a free slot
        start, length = block * NDB_BLOCK, blocks * NDB_BLOCK
        if start < len(slots) or start + length > size or length < 28:
            note(f"package {index}: blob outside the file")
            continue
        framed = _pread(handle, start, length)
        head_magic, head_index, _, blob_size = struct.unpack_from("<4sIII", framed)
        checksum, tail_size, tail_magic = struct.unpack_from("<II4s", framed, length - 12)
        if (head_magic, head_index, tail_magic) != (NDB_BLOB_HEAD, index, NDB_BLOB_TAIL) \
                or blob_size != tail_size or 28 + blob_size > length \
                or zlib.adler32(framed[:length - 12]) != checksum:
            note(f"package {index}: damaged blob")
            continue
        yield framed[16:16 + blob_size]
