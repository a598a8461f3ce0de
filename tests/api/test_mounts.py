"""Bind-mount propagation (rshared, rslave, rprivate) and tmpfs mounts with size and mode, through the docker CLI.

The shared source is a tmpfs the test mounts on its own directory and marks shared, as Docker's own tests do (the
machine's / is private); every mount it makes on the host is undone at the end.
"""
from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.daemon import Daemon


def sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True)


def mounted(path: Path) -> bool:
    return subprocess.run(["mountpoint", "-q", str(path)]).returncode == 0


@pytest.fixture
def shared_dir(tmp_path: Path) -> Iterator[Path]:
    source = tmp_path / "shared"
    source.mkdir()
    sh("mount", "-t", "tmpfs", "-o", "size=1m", "mrt-shared", str(source))
    try:
        sh("mount", "--make-shared", str(source))
        (source / "from-host").mkdir()
        (source / "from-container").mkdir()
        yield source
    finally:
        subprocess.run(["umount", "-R", "-l", str(source)], capture_output=True)


def test_rshared_bind_propagates_both_ways(daemon: Daemon, image: str, name: str, shared_dir: Path) -> None:
    daemon.out("run", "-d", "--name", name, "--privileged", "-v", f"{shared_dir}:/data:rshared", image,
               "sleep", "300")
    try:
        mount = json.loads(daemon.out("inspect", name))[0]["Mounts"][0]
        assert (mount["Type"], mount["Destination"], mount["Propagation"]) == ("bind", "/data", "rshared")
        daemon.out("exec", name, "mount", "-t", "tmpfs", "inner", "/data/from-container")
        daemon.out("exec", name, "touch", "/data/from-container/made-inside")
        assert mounted(shared_dir / "from-container")
        assert (shared_dir / "from-container" / "made-inside").exists()
        sh("mount", "-t", "tmpfs", "outer", str(shared_dir / "from-host"))
        (shared_dir / "from-host" / "made-outside").write_text("x")
        assert daemon.out("exec", name, "ls", "/data/from-host") == "made-outside\n"
    finally:
        daemon.docker("rm", "-f", name)


@pytest.mark.parametrize("how, propagation, receives", [
    (["--mount", "type=bind,src={},dst=/data,bind-propagation=rslave"], "rslave", True),
    (["-v", "{}:/data"], "rprivate", False),  # the default
])
def test_rslave_receives_and_rprivate_isolates(daemon: Daemon, image: str, name: str, shared_dir: Path,
                                              how: list, propagation: str, receives: bool) -> None:
    daemon.out("run", "-d", "--name", name, "--privileged", how[0], how[1].format(shared_dir), image, "sleep", "300")
    try:
        assert json.loads(daemon.out("inspect", name))[0]["Mounts"][0]["Propagation"] == propagation
        sh("mount", "-t", "tmpfs", "outer", str(shared_dir / "from-host"))
        (shared_dir / "from-host" / "made-outside").write_text("x")
        seen = daemon.out("exec", name, "ls", "/data/from-host")
        assert seen == ("made-outside\n" if receives else "")
        daemon.out("exec", name, "mount", "-t", "tmpfs", "inner", "/data/from-container")
        assert not mounted(shared_dir / "from-container")  # neither sends back to the host
    finally:
        daemon.docker("rm", "-f", name)


def test_shared_propagation_needs_a_shared_source(daemon: Daemon, image: str, name: str, tmp_path: Path) -> None:
    private = tmp_path / "private"
    private.mkdir()
    point = subprocess.run(["findmnt", "-n", "-o", "TARGET", "--target", str(private)], capture_output=True,
                           text=True).stdout.strip()
    propagation = subprocess.run(["findmnt", "-n", "-o", "PROPAGATION", point], capture_output=True,
                                 text=True).stdout.strip()
    assert propagation == "private", f"the test expects the machine's {point} to be a private mount"
    for mode, words in (("rshared", "not a shared mount"), ("rslave", "not a shared or slave mount")):
        result = daemon.docker("run", "--name", f"{name}-{mode}", "-v", f"{private}:/data:{mode}",
                               image, "true")
        try:
            assert result.returncode != 0
            assert (f"path {private} is mounted on {point} but it is {words}").encode() in result.stderr
        finally:
            daemon.docker("rm", "-f", f"{name}-{mode}")
    bad = daemon.docker("run", "--rm", "--mount", f"type=bind,src={private},dst=/d,bind-propagation=sideways",
                        image, "true")
    assert bad.returncode == 125 and b"invalid propagation mode" in bad.stderr


def test_tmpfs_mount_with_size_and_mode(daemon: Daemon, image: str) -> None:
    out = daemon.out("run", "--rm", "--mount", "type=tmpfs,destination=/scratch,tmpfs-size=2m,tmpfs-mode=1770",
                     image, "sh", "-c", "stat -c %a /scratch; grep ' /scratch ' /proc/mounts; "
                                        "dd if=/dev/zero of=/scratch/big bs=1k count=4096 2>&1; true")
    lines = out.splitlines()
    assert lines[0] == "1770"
    assert "size=2048k" in lines[1] and "mode=1770" in lines[1]
    assert {"nosuid", "nodev", "noexec"} <= set(lines[1].split()[3].split(","))
    assert "No space left on device" in out
    legacy = daemon.out("run", "--rm", "--tmpfs", "/t:exec,size=1m", image, "grep", " /t ", "/proc/mounts")
    options = legacy.split()[3].split(",")
    assert "size=1024k" in options and "noexec" not in options and "nosuid" in options
