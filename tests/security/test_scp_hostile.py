"""``machines scp -r`` from a machine that lies: hostile names, symlinks out, special bits, endless trees.

The hostile machine is a paramiko SSH server of the test's own (``hostile_sftp``) reached over a real loopback SSH
connection through the real CLI, since names holding ``/`` cannot exist on a real filesystem; what a real host can
do (symlinks out, setuid files) is also played by a real test host. In every case nothing is written outside the
target folder.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.security.hostile_sftp import HostileServer, Node, file, folder, symlink
from tests.support.cli import machines
from tests.support.hosts import HostFactory, write_key_pair


@pytest.fixture
def hostile(tmp_path: Path) -> Iterator[tuple[HostileServer, Path]]:
    """(server, store): a ``generic`` machine ``evil`` of a fresh store is the hostile server."""
    key_path, _ = write_key_pair(tmp_path / "login")
    server = HostileServer(key_path, folder({}))
    store = tmp_path / "store"
    machines(store, "create", "-d", "generic", "--generic-ip-address", "127.0.0.1", "--generic-ssh-port",
             str(server.port), "--generic-ssh-key", str(key_path), "--generic-ssh-host-key", server.host_key_line, "--no-provision", "--timeout-ssh", "20", "evil")
    yield server, store
    server.close()


def _snapshot(root: Path) -> set[str]:
    return {str(path.relative_to(root)) for path in root.rglob("*")}


@pytest.mark.parametrize("name", ["../escape", "/ABSOLUTE/escape", "sub/../../escape", "a/b", "", "nul\0byte"])
def test_a_name_that_is_not_one_component_stops_the_copy(
    hostile: tuple[HostileServer, Path], tmp_path: Path, name: str,
) -> None:
    server, store = hostile
    work = tmp_path / "work"
    work.mkdir()
    name = name.replace("/ABSOLUTE", str(tmp_path / "abs"))
    server.root = folder({"tree": folder({"first": file(b"fine"), name: file(b"owned")})})
    before = _snapshot(tmp_path)

    result = machines(store, "scp", "-r", "evil:/tree", str(work / "dest"), check=False)

    assert result.returncode == 1, result.stderr
    assert "suspicious file name" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "escape").exists() and not (tmp_path / "abs").exists()
    assert _snapshot(tmp_path) - before <= {"work/dest", "work/dest/first"}


def test_dot_entries_are_skipped_and_special_bits_dropped(hostile: tuple[HostileServer, Path], tmp_path: Path) -> None:
    server, store = hostile
    server.root = folder({"tree": folder({
        ".": folder({"x": file(b"x")}),
        "..": folder({"x": file(b"x")}),
        "suid": file(b"#!/bin/sh\n", 0o6755),
        "shared": folder({"inner": file(b"inner", 0o4700)}, 0o1777),
    }, 0o2755)})

    machines(store, "scp", "-r", "evil:/tree", str(tmp_path / "dest"))

    dest = tmp_path / "dest"
    assert sorted(os.listdir(dest)) == ["shared", "suid"]
    assert stat.S_IMODE(dest.stat().st_mode) == 0o755
    assert stat.S_IMODE((dest / "suid").stat().st_mode) == 0o755
    assert stat.S_IMODE((dest / "shared").stat().st_mode) == 0o777
    assert stat.S_IMODE((dest / "shared" / "inner").stat().st_mode) == 0o700
    assert (dest / "shared" / "inner").read_bytes() == b"inner"


def test_symlinks_leading_out_are_refused_and_inner_ones_kept(
    hostile: tuple[HostileServer, Path], tmp_path: Path,
) -> None:
    server, store = hostile
    server.root = folder({"tree": folder({
        "target": file(b"data"),
        "absolute": symlink("/etc/passwd"),
        "up": symlink("../../outside"),
        "inner": symlink("target"),
        "sub": folder({"sideways": symlink("../target"), "climb": symlink("../../target")}),
        "self": symlink("."),
        "chained": symlink("self/.."),  # lexically inside, really the target's parent
    })})

    result = machines(store, "scp", "-r", "evil:/tree", str(tmp_path / "dest"))

    dest = tmp_path / "dest"
    assert sorted(os.listdir(dest)) == ["inner", "self", "sub", "target"]
    assert os.readlink(dest / "inner") == "target" and (dest / "inner").read_bytes() == b"data"
    assert sorted(os.listdir(dest / "sub")) == ["sideways"]
    assert (dest / "sub" / "sideways").read_bytes() == b"data"
    for refused in ("absolute", "up", "climb", "chained"):
        assert refused in result.stderr


def test_an_endless_tree_is_refused(hostile: tuple[HostileServer, Path], tmp_path: Path) -> None:
    server, store = hostile

    def endless() -> dict[str, Node]:
        return {"deeper": folder(endless)}

    server.root = folder({"tree": folder(endless)})

    result = machines(store, "scp", "-r", "evil:/tree", str(tmp_path / "dest"), check=False)

    assert result.returncode == 1 and "more than 64 folder levels" in result.stderr


def test_symlinks_already_in_the_target_are_not_followed(
    hostile: tuple[HostileServer, Path], tmp_path: Path,
) -> None:
    server, store = hostile
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("keep")
    dest = tmp_path / "dest"
    (dest / "tree").mkdir(parents=True)
    os.symlink(outside, dest / "tree" / "sub")  # left by an earlier copy, or planted
    os.symlink(outside / "precious", dest / "tree" / "file")
    server.root = folder({"tree": folder({"sub": folder({"planted": file(b"owned")})})})
    result = machines(store, "scp", "-r", "evil:/tree", str(dest), check=False)
    assert result.returncode == 1 and f"Not a directory: {dest}/tree/sub" in result.stderr

    server.root = folder({"tree": folder({"file": file(b"owned")})})
    result = machines(store, "scp", "-r", "evil:/tree", str(dest), check=False)

    assert result.returncode == 1 and f"Too many levels of symbolic links: {dest}/tree/file" in result.stderr
    assert sorted(os.listdir(outside)) == ["precious"] and (outside / "precious").read_text() == "keep"


def test_a_real_host_keeps_its_links_and_setuid_files_to_itself(
    test_host: HostFactory, tmp_path: Path,
) -> None:
    host = test_host()
    host.run("mkdir -p /data/tree/sub && echo data > /data/tree/file && cp /bin/true /data/tree/suid && "
             "chmod 4755 /data/tree/suid && chmod 1777 /data/tree/sub && ln -s /etc /data/tree/etc && "
             "ln -s /etc/shadow /data/tree/sub/shadow && ln -s ../file /data/tree/sub/file-link && "
             "ln -s ../../../root /data/tree/sub/root")
    store = tmp_path / "store"
    machines(store, "create", "-d", "generic", "--generic-ip-address", host.address, "--generic-ssh-key",
             str(host.key_path), "--no-provision", "--timeout-ssh", "20", "real")

    result = machines(store, "scp", "-r", "real:/data/tree", str(tmp_path / "dest"))

    dest = tmp_path / "dest"
    assert sorted(os.listdir(dest)) == ["file", "sub", "suid"]
    assert sorted(os.listdir(dest / "sub")) == ["file-link"]
    assert (dest / "sub" / "file-link").read_text() == "data\n"
    assert stat.S_IMODE((dest / "suid").stat().st_mode) == 0o755
    assert stat.S_IMODE((dest / "sub").stat().st_mode) == 0o777
    assert "/etc/shadow" in result.stderr and "leads outside the copy" in result.stderr

    # Machine to machine: the same rules, the inner link recreated on the target machine as it was.
    machines(store, "scp", "-r", "real:/data/tree", "real:/data/copy")
    copied = host.run("cd /data/copy && ls -A . sub && readlink sub/file-link && stat -c %a suid sub").stdout.split()
    assert copied == [".:", "file", "sub", "suid", "sub:", "file-link", "../file", "755", "777"]
