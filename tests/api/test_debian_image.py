"""Docker's "create a base image" recipe against the runtime: ``tar -C DIR -c . | docker import -`` of a debootstrap
tree (device nodes in /dev included), then containers from it, with the real docker CLI."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

from tests.api.conftest import DOCKER, Daemon


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
