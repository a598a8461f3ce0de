"""Issue 11 item 1, layer and tar extraction: a symlink planted inside the extraction root, by a concurrent attacker
or by what a build already wrote there (``ADD x.tar`` unpacks into an existing folder), is never written through,
with the kernel's openat2 and with safepath's component walk."""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from machines.runtime.images import archive
from machines.runtime.linux import safepath

BIG = 3 << 20  # larger than the extractor's read buffer, so the planting happens between two entries


@pytest.fixture(params=["openat2", "walk"])
def mode(request: pytest.FixtureRequest) -> Iterator[str]:
    safepath.use_openat2(False if request.param == "walk" else None)
    yield request.param
    safepath.use_openat2(None)


def _tar(entries: list[tuple[str, bytes | None]]) -> bytes:
    """A tar of folders (``None``) and files, in this order."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in entries:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            else:
                info.size, info.mode = len(data), 0o644
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


class _Attacker(io.RawIOBase):
    """A tar stream that, once the extractor has read past ``offset``, swaps folder ``victim`` for a symlink to
    ``target``: what a process racing the extraction would do between two entries."""

    def __init__(self, data: bytes, offset: int, victim: Path, target: Path) -> None:
        self.data, self.offset, self.victim, self.target = io.BytesIO(data), offset, victim, target
        self.planted = False

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:  # type: ignore[no-untyped-def]
        n = self.data.readinto(buf)
        if not self.planted and self.data.tell() > self.offset:
            self.victim.rename(self.victim.with_name("moved-away"))
            self.victim.symlink_to(self.target)
            self.planted = True
        return n


def test_symlink_planted_during_extraction_is_not_followed(mode: str, tmp_path: Path) -> None:
    outside = tmp_path / "host"
    outside.mkdir()
    dest = tmp_path / "tree"
    dest.mkdir()
    data = _tar([("d", None), ("big", b"x" * BIG), ("d/passwd", b"attacker was here")])
    stream = _Attacker(data, BIG // 2, dest / "d", outside)

    with pytest.raises(archive.LayerRefused, match="'d/passwd' would be written through the symlink 'd'"):
        archive.extract_tree(stream, str(dest))  # type: ignore[arg-type]

    assert stream.planted
    assert os.listdir(outside) == []
    assert safepath.openat2_in_use() == (mode == "openat2")


def test_preplanted_links_in_an_existing_tree_are_not_followed(mode: str, tmp_path: Path) -> None:
    outside = tmp_path / "host"
    outside.mkdir()
    (outside / "shadow").write_text("host secret")
    dest = tmp_path / "tree"
    dest.mkdir()
    (dest / "etc").symlink_to(outside)  # a folder link: nothing may be written or linked through it
    (dest / "motd").symlink_to(outside / "motd")  # a file link: replaced, not written through

    with pytest.raises(archive.LayerRefused, match="would be written through the symlink 'etc'"):
        archive.extract_tree(io.BytesIO(_tar([("etc/shadow", b"overwritten")])), str(dest))
    hardlink = io.BytesIO()
    with tarfile.open(fileobj=hardlink, mode="w") as tar:
        info = tarfile.TarInfo("stolen")
        info.type, info.linkname = tarfile.LNKTYPE, "etc/shadow"
        tar.addfile(info)
    with pytest.raises(archive.LayerRefused, match="would be written through the symlink 'etc'"):
        archive.extract_tree(io.BytesIO(hardlink.getvalue()), str(dest))
    archive.extract_tree(io.BytesIO(_tar([("motd", b"from the archive")])), str(dest))

    assert sorted(os.listdir(outside)) == ["shadow"]
    assert (outside / "shadow").read_text() == "host secret"
    assert not (dest / "stolen").exists()
    assert not (dest / "motd").is_symlink()
    assert (dest / "motd").read_text() == "from the archive"


def test_folder_times_are_not_restored_through_a_link_that_replaced_the_folder(mode: str, tmp_path: Path) -> None:
    """Folder times are set after the last entry: by then a later entry may have turned the folder into a link."""
    outside = tmp_path / "host"
    (outside / "b").mkdir(parents=True)
    before = os.stat(outside / "b").st_mtime_ns
    dest = tmp_path / "tree"
    dest.mkdir()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name in ("a", "a/b"):
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 1000
            tar.addfile(info)
        link = tarfile.TarInfo("a")
        link.type, link.linkname = tarfile.SYMTYPE, str(outside)  # absolute: means the image's own path
        tar.addfile(link)

    archive.extract_tree(io.BytesIO(buf.getvalue()), str(dest))

    assert os.readlink(dest / "a") == str(outside)
    assert os.stat(outside / "b").st_mtime_ns == before
