"""OCI whiteouts in a layer really hide lower files once overlayfs mounts the layers (as root, on a tmpfs)."""

from __future__ import annotations

import io
import os
import subprocess

import pytest

from machines.runtime.images.store import ImageStore
from tests.images.conftest import make_tar


@pytest.fixture
def tmpfs(tmp_path):
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", f"imgtest{os.getpid()}", str(mnt)], check=True)
    yield mnt
    subprocess.run(["umount", "-R", "-l", str(mnt)], check=False)


def test_overlay_of_two_layers_hides_whiteouts(tmpfs):
    store = ImageStore(str(tmpfs / "store"))
    base = make_tar([("etc", "dir", None), ("etc/keep", "file", b"k"), ("etc/gone", "file", b"g"),
                     ("data", "dir", None), ("data/old", "file", b"o")])
    top = make_tar([("etc", "dir", None), ("etc/.wh.gone", "file", b""),
                    ("data", "dir", None), ("data/.wh..wh..opq", "file", b""), ("data/new", "file", b"n")])
    base_id = store.import_tar(io.BytesIO(base), "base:1")
    layer = store.add_layer_stream(io.BytesIO(top), store.resolve(base_id).top_chain)
    image = store.register(store.new_config(store.resolve(base_id), layer.diff_id, None, "ADD top"),
                           parent=base_id)
    dirs = image.layer_dirs()
    merged, upper, work = (tmpfs / n for n in ("merged", "upper", "work"))
    for d in (merged, upper, work):
        d.mkdir()
    opts = f"lowerdir={':'.join(reversed(dirs))},upperdir={upper},workdir={work}"
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o", opts, str(merged)], check=True)
    try:
        assert sorted(os.listdir(merged / "etc")) == ["keep"]
        assert sorted(os.listdir(merged / "data")) == ["new"]
        assert (merged / "etc" / "keep").read_bytes() == b"k"
    finally:
        subprocess.run(["umount", str(merged)], check=True)
