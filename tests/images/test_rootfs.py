"""Root filesystems made the documented way: device nodes and fifos in layers are accepted as dockerd accepts them."""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import subprocess
import sys
import tarfile

from tests.images.conftest import make_tar
from tests.support.cli import REPO


def _devices_tar() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, kind, major, minor, mode, gid in (("./dev/null", tarfile.CHRTYPE, 1, 3, 0o666, 0),
                                                    ("./dev/sda", tarfile.BLKTYPE, 8, 0, 0o660, 6),
                                                    ("./dev/initctl", tarfile.FIFOTYPE, 0, 0, 0o600, 0)):
            info = tarfile.TarInfo(name)
            info.type, info.devmajor, info.devminor, info.mode, info.gid = kind, major, minor, mode, gid
            tar.addfile(info)
        info = tarfile.TarInfo("./etc/hostname")
        info.size = 5
        tar.addfile(info, io.BytesIO(b"deb12"))
    return buf.getvalue()


def _node(store, image_id: str, name: str) -> os.stat_result:
    (layer,) = store.resolve(image_id).layer_dirs()
    return os.lstat(os.path.join(layer, name))


def test_import_creates_device_nodes_and_fifos_as_root(store):
    image_id = store.import_tar(io.BytesIO(_devices_tar()), "rootfs:devices")
    null, sda, fifo = (_node(store, image_id, "dev/" + name) for name in ("null", "sda", "initctl"))
    assert stat.S_ISCHR(null.st_mode) and os.major(null.st_rdev) == 1 and os.minor(null.st_rdev) == 3
    assert stat.S_IMODE(null.st_mode) == 0o666
    assert stat.S_ISBLK(sda.st_mode) and (os.major(sda.st_rdev), os.minor(sda.st_rdev)) == (8, 0)
    assert sda.st_gid == 6
    assert stat.S_ISFIFO(fifo.st_mode)


def test_load_of_a_layer_with_device_nodes(service, store):
    layer = _devices_tar()
    config = {"architecture": "amd64", "os": "linux", "config": {},
              "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(layer).hexdigest()]}}
    manifest = [{"Config": "c.json", "RepoTags": ["rootfs:loaded"], "Layers": ["l/layer.tar"]}]
    archive = make_tar([("c.json", "file", json.dumps(config).encode()), ("l/layer.tar", "file", layer),
                        ("manifest.json", "file", json.dumps(manifest).encode())])
    service.load(io.BytesIO(archive))
    null = _node(store, "rootfs:loaded", "dev/null")
    assert stat.S_ISCHR(null.st_mode) and null.st_rdev == os.makedev(1, 3)


def test_device_nodes_are_skipped_with_a_warning_where_mknod_is_not_allowed(tmp_path):
    """A daemon in a user namespace may not mknod: dockerd skips the nodes and keeps the rest of the layer."""
    script = (
        "import io, logging, os, sys\n"
        "logging.basicConfig(level=logging.INFO)\n"
        "from machines.runtime.images.store import ImageStore\n"
        "store = ImageStore(sys.argv[1])\n"
        "image = store.import_tar(io.BytesIO(sys.stdin.buffer.read()), 'rootfs:userns')\n"
        "(layer,) = store.resolve(image).layer_dirs()\n"
        "print(sorted(os.listdir(os.path.join(layer, 'dev'))), open(os.path.join(layer, 'etc/hostname')).read())\n")
    done = subprocess.run(["unshare", "--user", "--map-root-user", sys.executable, "-c", script, str(tmp_path / "s")],
                          input=_devices_tar(), capture_output=True, cwd=REPO, timeout=60)
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout.decode().split() == ["['initctl']", "deb12"]
    log = done.stderr.decode()
    assert "skipping device node ./dev/null (1:3) from a layer" in log
    assert "skipping device node ./dev/sda (8:0) from a layer" in log
