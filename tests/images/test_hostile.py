"""Hostile layers are refused with a clear error, and nothing is written outside (or left inside) the store."""

from __future__ import annotations

import io
import json
import os
import tarfile

import pytest

from machines.runtime.errors import InvalidParameter
from tests.images.conftest import make_tar

pytestmark = pytest.mark.fast  # the fast tier: no root, seconds (pytest -m fast)


@pytest.fixture
def canary(tmp_path):
    path = tmp_path / "canary"
    path.mkdir()
    (path / "keep").write_text("original")
    return path


def _assert_untouched(store, canary):
    assert sorted(os.listdir(canary)) == ["keep"]
    assert (canary / "keep").read_text() == "original"
    assert os.listdir(os.path.join(store.root, "layers")) == []
    assert os.listdir(os.path.join(store.root, "tmp")) == []
    assert store.list() == []


def _hostile_cases(canary):
    rel = "../" * 12 + str(canary).lstrip("/")
    return {
        "traversal": ([("ok", "file", b"x"), ("../" * 8 + "escaped", "file", b"x")], "escapes the layer"),
        "traversal-inside": ([("a/../../x", "file", b"x")], "escapes the layer"),
        "absolute": ([(str(canary / "abs"), "file", b"x")], "absolute path"),
        "relative-symlink-out": ([("evil", "symlink", rel), ("evil/pwned", "file", b"x")],
                                 "points outside the layer"),
        "write-through-symlink": ([("evil", "symlink", str(canary)), ("evil/pwned", "file", b"x")],
                                  "written through the symlink"),
        "hardlink-out": ([("h", "hardlink", rel + "/keep")], "escapes the layer"),
        "hardlink-absolute": ([("h", "hardlink", str(canary / "keep"))], "absolute path"),
        "hardlink-through-symlink": ([("l", "symlink", str(canary)), ("h", "hardlink", "l/keep")],
                                     "written through the symlink"),
        "device-node-traversal": ([("../" * 8 + "dev/mem", "chardev", None)], "escapes the layer"),
        "device-node-absolute": ([("/dev/mem", "chardev", None)], "absolute path"),
        "device-node-through-symlink": ([("dev", "symlink", str(canary)), ("dev/mem", "chardev", None)],
                                        "written through the symlink"),
    }


@pytest.mark.parametrize("case", ["traversal", "traversal-inside", "absolute", "relative-symlink-out",
                                  "write-through-symlink", "hardlink-out", "hardlink-absolute",
                                  "hardlink-through-symlink", "device-node-traversal", "device-node-absolute",
                                  "device-node-through-symlink"])
def test_hostile_layer_is_refused(store, canary, case):
    entries, message = _hostile_cases(canary)[case]
    with pytest.raises(InvalidParameter, match=message):
        store.import_tar(io.BytesIO(make_tar(entries)), "hostile:" + case)
    _assert_untouched(store, canary)


def test_huge_pax_header_is_refused_before_it_is_buffered(store, canary):
    data = make_tar([("f", "file", b"x")], pax={"f": {"comment": "A" * (2 << 20)}})
    with pytest.raises(InvalidParameter, match="extended header exceeds"):
        store.import_tar(io.BytesIO(data), "bomb:1")
    _assert_untouched(store, canary)


def test_many_global_pax_headers_are_refused(store, canary):
    """Each under the per-header limit, but global headers pile up in memory for the whole archive."""
    header = tarfile.TarInfo._create_pax_generic_header({"comment": "B" * (900 << 10)}, tarfile.XGLTYPE, "utf-8")
    with pytest.raises(InvalidParameter, match="extended headers exceed"):
        store.import_tar(io.BytesIO(header * 10 + make_tar([("f", "file", b"x")])), "globals:1")
    _assert_untouched(store, canary)


def test_hostile_layer_inside_a_docker_save_archive_is_refused(service, store, canary):
    layer = make_tar([("../../escaped", "file", b"x")])
    config = {"architecture": "amd64", "os": "linux", "config": {},
              "rootfs": {"type": "layers", "diff_ids": ["sha256:" + "0" * 64]}}
    archive = make_tar([("c.json", "file", json.dumps(config).encode()), ("l/layer.tar", "file", layer),
                        ("manifest.json", "file", json.dumps(
                            [{"Config": "c.json", "RepoTags": ["x:y"], "Layers": ["l/layer.tar"]}]).encode())])
    with pytest.raises(InvalidParameter, match="escapes the layer"):
        service.load(io.BytesIO(archive))
    _assert_untouched(store, canary)


def test_archive_with_escaping_member_name_is_refused(service, store, canary):
    archive = make_tar([("../manifest.json", "file", b"[]")])
    with pytest.raises(InvalidParameter, match="escapes the layer"):
        service.load(io.BytesIO(archive))
    _assert_untouched(store, canary)


def test_truncated_layer_is_refused(store, canary):
    data = make_tar([("f", "file", b"x" * 5000)])[:2048]
    with pytest.raises(InvalidParameter):
        store.import_tar(io.BytesIO(data), "trunc:1")
    _assert_untouched(store, canary)
