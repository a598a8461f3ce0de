"""The Go toolchain version and modules built into an ELF executable, found as Go's own ``debug/buildinfo`` finds
them (standard library only).

The linker leaves a 32-byte header, 16-byte aligned, at the start of the ``.go.buildinfo`` section (or near the start
of the first writable, non-executable segment): the magic ``\\xff Go buildinf:``, the pointer size, and a flags byte.
Since Go 1.18 (flag bit 2) two varint-prefixed strings follow the header: the Go version and the module info. Before
1.18 the header holds instead two pointers, in the binary's pointer size and byte order, to Go string headers
(data pointer, length) in the data segment, which point to the strings; those addresses are virtual ones, mapped to
file offsets through the program headers. 32- and 64-bit, little- and big-endian ELF files are read.
"""

from __future__ import annotations

import struct

GO_MAGIC = b"\xff Go buildinf:"
SEARCH = 64 * 1024  # how far into the data Go looks for the header
PT_LOAD, PF_X, PF_W = 1, 1, 2
# cmd/go's framing around the module info (infoStart/infoEnd): 16 bytes each side, a newline before the end one
FRAME = 16


class _Elf:
    """Program headers and section names of an ELF file held in memory; reads by virtual address."""

    def __init__(self, data: bytes) -> None:
        if len(data) < 64 or not data.startswith(b"\x7fELF") or data[4] not in (1, 2) or data[5] not in (1, 2):
            raise ValueError("not an ELF file")
        self.data = data
        self.wide = data[4] == 2
        self.order = "<" if data[5] == 1 else ">"
        if self.wide:
            phoff, shoff = self._unpack("QQ", 32)
            phentsize, phnum, shentsize, shnum, shstrndx = self._unpack("HHHHH", 54)
        else:
            phoff, shoff = self._unpack("II", 28)
            phentsize, phnum, shentsize, shnum, shstrndx = self._unpack("HHHHH", 42)
        self.segments: list[tuple[int, int, int, int, int]] = []  # type, flags, offset, vaddr, filesz
        for index in range(min(phnum, 4096)):
            at = phoff + index * phentsize
            if self.wide:
                kind, flags, offset, vaddr, _, filesz = self._unpack("IIQQQQ", at)
            else:
                kind, offset, vaddr, _, filesz, _, flags = self._unpack("IIIIIII", at)
            self.segments.append((kind, flags, offset, vaddr, filesz))
        self.sections: dict[str, int] = {}  # name -> address
        headers = [self._section(shoff + index * shentsize) for index in range(min(shnum, 65536))]
        if headers and shstrndx < len(headers):
            names = headers[shstrndx][2]
            for name_at, address, _ in headers:
                start = names + name_at
                end = data.find(b"\0", start, start + 256)
                if 0 <= start < end:
                    self.sections.setdefault(data[start:end].decode(errors="replace"), address)

    def _unpack(self, fields: str, at: int) -> tuple[int, ...]:
        try:
            return struct.unpack_from(self.order + fields, self.data, at)
        except struct.error:
            raise ValueError("truncated ELF headers") from None

    def _section(self, at: int) -> tuple[int, int, int]:
        """(name offset, address, file offset) of the section header at ``at``."""
        if self.wide:
            name, _, _, address, offset = self._unpack("IIQQQ", at)
        else:
            name, _, _, address, offset = self._unpack("IIIII", at)
        return name, address, offset

    def read(self, address: int, size: int) -> bytes:
        """Up to ``size`` bytes at virtual ``address``, from the segment that maps it (empty when none does)."""
        for _, _, offset, vaddr, filesz in self.segments:
            if vaddr <= address < vaddr + filesz:
                start = offset + address - vaddr
                return self.data[start:start + min(size, vaddr + filesz - address)]
        return b""

    def data_start(self) -> int | None:
        if ".go.buildinfo" in self.sections:
            return self.sections[".go.buildinfo"]
        for kind, flags, _, vaddr, _ in self.segments:
            if kind == PT_LOAD and flags & (PF_X | PF_W) == PF_W:
                return vaddr
        return None


def _uvarint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while pos < len(data) and shift < 64:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
    raise ValueError("bad varint")


def _inline_string(data: bytes, pos: int) -> tuple[str, int]:
    length, pos = _uvarint(data, pos)
    if pos + length > len(data):
        raise ValueError("string past the end of the data")
    return data[pos:pos + length].decode(errors="replace"), pos + length


def _string_at(elf: _Elf, pointer_size: int, order: str, address: int) -> str:
    """A Go string whose header (data pointer, length) is at ``address``; empty when anything is out of the file."""
    fmt = order + ("I" if pointer_size == 4 else "Q") * 2
    header = elf.read(address, 2 * pointer_size)
    if len(header) < 2 * pointer_size:
        return ""
    pointer, length = struct.unpack(fmt, header)
    if length > len(elf.data):
        return ""
    data = elf.read(pointer, length)
    return data.decode(errors="replace") if len(data) == length else ""


def build_info(data: bytes) -> tuple[str, str] | None:
    """(Go version, module info text) of an ELF Go executable; None for anything else."""
    try:
        elf = _Elf(data)
    except ValueError:
        return None
    start = elf.data_start()
    if start is None:
        return None
    window = elf.read(start, SEARCH)
    at = window.find(GO_MAGIC)
    while at >= 0 and at % 16:
        at = window.find(GO_MAGIC, at + 1)
    if at < 0 or len(window) - at < 32:
        return None
    pointer_size, flags = window[at + 14], window[at + 15]
    try:
        if flags & 2:
            version, pos = _inline_string(window, at + 32)
            modinfo, _ = _inline_string(window, pos)
        elif pointer_size in (4, 8):
            order = ">" if flags else "<"
            fmt = order + ("I" if pointer_size == 4 else "Q")
            version_at = struct.unpack_from(fmt, window, at + 16)[0]
            modinfo_at = struct.unpack_from(fmt, window, at + 16 + pointer_size)[0]
            version = _string_at(elf, pointer_size, order, version_at)
            modinfo = _string_at(elf, pointer_size, order, modinfo_at)
        else:
            return None
    except ValueError:
        return None
    if not version:
        return None
    framed = len(modinfo) >= 2 * FRAME + 1 and modinfo[-FRAME - 1] == "\n"
    return version, modinfo[FRAME:-FRAME] if framed else ""


def modules(modinfo: str) -> list[tuple[str, str]]:
    """(path, version) of each module built in: ``dep`` lines, a ``=>`` line replacing the one before it; the main
    module only when it has a version (``go build`` of a checkout says ``(devel)``)."""
    found: list[tuple[str, str]] = []
    for line in modinfo.splitlines():
        fields = line.split("\t")
        if fields[0] in ("mod", "dep") and len(fields) >= 3:
            found.append((fields[1], fields[2]))
        elif fields[0] == "=>" and len(fields) >= 3 and found:
            found[-1] = (fields[1], fields[2])  # a replace directive: the module actually built in
    return [(path, version) for path, version in found if version and version != "(devel)"]
