"""Root filesystems made the documented way, with the real docker CLI: Docker's "create a base image" recipe
(``tar -C DIR -c . | docker import -`` of a debootstrap tree, device nodes in /dev included) and ``docker load`` of
an image whose layer holds device nodes and a fifo."""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import subprocess
import tarfile
from pathlib import Path

from tests.support import busybox
from tests.support.daemon import DOCKER, Daemon


def _import(daemon: Daemon, tar: Path, name: str) -> str:
    with open(tar, "rb") as rootfs:
        done = subprocess.run([DOCKER, "import", "-", name], stdin=rootfs, capture_output=True, timeout=600,
                              env=daemon.env())
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout.decode().strip()


def test_debootstrap_tree_imports_and_runs(daemon: Daemon, debian_tar: Path, name: str) -> None:
    image = "machines-test/debian:" + name
    image_id = _import(daemon, debian_tar, image)
    try:
        assert daemon.out("run", "--rm", image, "cat", "/etc/debian_version").startswith("12.")
        versions = daemon.out("run", "--rm", image, "sh", "-c",
                              "nginx -v 2>&1; redis-server --version; python3 --version; ls /usr/lib/postgresql")
        assert "nginx version: nginx/1.22" in versions and "Redis server v=7" in versions
        assert "Python 3.11" in versions and versions.split()[-1] == "15"
        # the tree's /dev nodes were created in the image's layer (the daemon runs as root), as dockerd does
        diffs = [Path(root) for root, _, _ in os.walk(daemon.root / "data" / "image" / "layers")
                 if root.endswith("/diff") and os.path.lexists(os.path.join(root, "etc", "debian_version"))]
        assert len(diffs) == 1
        for node, device in (("null", (1, 3)), ("zero", (1, 5)), ("console", (5, 1)), ("ptmx", (5, 2))):
            st = os.lstat(diffs[0] / "dev" / node)
            assert stat.S_ISCHR(st.st_mode) and (os.major(st.st_rdev), os.minor(st.st_rdev)) == device
    finally:
        daemon.docker("rmi", "-f", image_id)


def _layer_with_nodes(image_tar: bytes) -> bytes:
    """The busybox root filesystem plus /dev nodes and a fifo, as a debootstrap tree's tar carries them."""
    out = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(image_tar)) as source, tarfile.open(fileobj=out, mode="w") as tar:
        for member in source.getmembers():
            tar.addfile(member, source.extractfile(member) if member.isreg() else None)
        for name, kind, major, minor in (("dev/null", tarfile.CHRTYPE, 1, 3), ("dev/loop0", tarfile.BLKTYPE, 7, 0),
                                         ("run/initctl", tarfile.FIFOTYPE, 0, 0)):
            node = tarfile.TarInfo(name)
            node.type, node.devmajor, node.devminor, node.mode = kind, major, minor, 0o660
            tar.addfile(node)
    return out.getvalue()


def test_docker_load_of_a_layer_with_device_nodes_and_a_fifo(daemon: Daemon, name: str) -> None:
    layer = _layer_with_nodes(busybox.rootfs())
    diff_id = "sha256:" + hashlib.sha256(layer).hexdigest()
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Cmd": ["sh"]},
                         "rootfs": {"type": "layers", "diff_ids": [diff_id]}}).encode()
    tag = "machines-test/nodes:" + name
    manifest = json.dumps([{"Config": "config.json", "RepoTags": [tag], "Layers": ["layer/layer.tar"]}]).encode()
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:
        for member_name, data in (("config.json", config), ("layer/layer.tar", layer), ("manifest.json", manifest)):
            member = tarfile.TarInfo(member_name)
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
    loaded = daemon.docker("load", input=archive.getvalue())
    assert loaded.returncode == 0 and loaded.stdout.decode() == f"Loaded image: {tag}\n", loaded.stderr
    try:
        assert daemon.out("run", "--rm", tag, "sh", "-c", "test -p /run/initctl && echo fifo") == "fifo\n"
        (diff,) = [Path(root) for root, _, _ in os.walk(daemon.root / "data" / "image" / "layers")
                   if root.endswith("/diff") and os.path.lexists(os.path.join(root, "run", "initctl"))]
        loop = os.lstat(diff / "dev" / "loop0")
        assert stat.S_ISBLK(loop.st_mode) and loop.st_rdev == os.makedev(7, 0)
        # the container's own /dev is a fresh tmpfs: the image's block device is not there to use
        assert daemon.docker("run", "--rm", tag, "test", "-e", "/dev/loop0").returncode == 1
    finally:
        daemon.docker("rmi", tag)
