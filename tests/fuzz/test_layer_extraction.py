"""Property-based fuzzing of layer and build-context extraction (runtime/images/archive.py): any tar, however
hostile (``..``, absolute names, symlinks and hardlinks pointing out, entries under symlinks, whiteouts, devices,
repeated names, truncated or random bytes), is either refused with ``LayerRefused`` or extracted entirely inside
the destination; nothing is ever created or changed outside it."""

from __future__ import annotations

import io
import os
import shutil
import tarfile
import tempfile

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from machines.runtime.errors import InvalidParameter
from machines.runtime.images import archive

FUZZ = settings(max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

COMPONENT = st.sampled_from(["a", "b", "..", ".", "", "etc", ".wh.a", ".wh..wh..opq", ".wh..wh.plnk", "x y",
                             "\u00e9", "outside"])
NAME = st.one_of(st.lists(COMPONENT, min_size=1, max_size=4).map("/".join),
                 st.lists(COMPONENT, min_size=1, max_size=3).map(lambda parts: "/" + "/".join(parts)))
LINK = st.one_of(NAME, st.sampled_from(["../outside", "../../outside/file", "/outside", "a/../../outside",
                                        ".", "..", "a"]))
KIND = st.sampled_from([tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.FIFOTYPE,
                        tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.CONTTYPE, b"Z"])
ENTRY = st.tuples(NAME, KIND, LINK, st.binary(max_size=64), st.integers(0, 0o7777))


def _tar(entries: list[tuple[str, bytes, str, bytes, int]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, link, data, mode in entries:
            info = tarfile.TarInfo(name)
            info.type = kind
            info.mode = mode
            info.uid = info.gid = 0
            if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE):
                info.linkname = link
            if kind in (tarfile.REGTYPE, tarfile.CONTTYPE):
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)
    return buffer.getvalue()


def _snapshot(folder: str) -> list[tuple[str, int, int]]:
    out = []
    for base, dirs, files in os.walk(folder):
        for entry in dirs + files:
            path = os.path.join(base, entry)
            st_ = os.lstat(path)
            out.append((path, st_.st_mode, st_.st_mtime_ns))
    return sorted(out)


def _extract_inside(tar_bytes: bytes, layer: bool) -> None:
    """Extract into work/dest with a bait folder work/outside beside it; the bait must be untouched."""
    work = tempfile.mkdtemp(prefix="fuzz-layer-")
    try:
        outside = os.path.join(work, "outside")
        os.mkdir(outside)
        with open(os.path.join(outside, "file"), "w") as bait:
            bait.write("bait")
        before = _snapshot(outside)
        dest = os.path.join(work, "dest")
        try:
            if layer:
                archive.extract_layer(io.BytesIO(tar_bytes), dest)
            else:
                archive.extract_tree(io.BytesIO(tar_bytes), dest)
        except InvalidParameter:
            pass  # LayerRefused and friends: a clear refusal
        assert _snapshot(outside) == before, "extraction touched a folder outside its destination"
        assert sorted(os.listdir(work)) in (["outside"], ["dest", "outside"])
        for base, dirs, files in os.walk(dest):
            for entry in dirs + files:
                path = os.path.join(base, entry)
                assert os.path.realpath(os.path.dirname(path)).startswith(os.path.realpath(dest))
    finally:
        shutil.rmtree(work, ignore_errors=True)


@FUZZ
@given(st.lists(ENTRY, max_size=8), st.booleans())
def test_hostile_tars_stay_inside_the_destination(entries: list, layer: bool) -> None:
    _extract_inside(_tar(entries), layer)


@FUZZ
@given(st.binary(max_size=3000), st.booleans())
def test_random_and_truncated_bytes_are_refused_cleanly(data: bytes, layer: bool) -> None:
    _extract_inside(data, layer)


@FUZZ
@given(st.lists(ENTRY, min_size=1, max_size=6), st.integers(1, 4000))
def test_truncated_tars_are_refused_cleanly(entries: list, cut: int) -> None:
    data = _tar(entries)
    _extract_inside(data[: min(cut, max(1, len(data) - 1))], True)
