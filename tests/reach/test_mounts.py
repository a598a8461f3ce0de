"""A folder of this computer mounted into a local machine: edits here are seen by containers there, live, and
the mount comes back after a stop and start."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.reach.conftest import IMAGE, Reachable, create_generic
from tests.support.cli import DOCKER, MACHINES, machines
from tests.support.hosts import HostFactory, TestHost


def test_a_mounted_folder_is_seen_by_containers_and_survives_a_restart(tls_machine: Reachable,
                                                                       tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    (source / "a.txt").write_text("first\n")
    name = tls_machine.name
    tls_machine.cli("mount", name, f"{source}:/src")
    try:
        assert tls_machine.cli("mount", "ls", name).stdout == f"{source}:/src\n"
        assert tls_machine.docker("run", "--rm", "-v", "/src:/app", IMAGE, "cat", "/app/a.txt").stdout == "first\n"
        (source / "a.txt").write_text("edited here\n")
        assert tls_machine.docker("run", "--rm", "-v", "/src:/app", IMAGE, "cat", "/app/a.txt").stdout == \
            "edited here\n"
        tls_machine.docker("run", "--rm", "-v", "/src:/app", IMAGE, "sh", "-c", "echo there > /app/b.txt")
        assert (source / "b.txt").read_text() == "there\n"

        tls_machine.cli("stop", name)
        tls_machine.cli("start", name)
        (source / "a.txt").write_text("after restart\n")
        assert tls_machine.cli("ssh", name, "cat /src/a.txt").stdout == "after restart\n"

        tls_machine.cli("umount", name, "/src")
        assert tls_machine.cli("ssh", name, "ls -A /src").stdout == ""
        assert tls_machine.cli("mount", "ls", name).stdout == ""
        assert (source / "a.txt").exists()  # unmounting leaves this computer's folder as it was
    finally:
        tls_machine.cli("umount", name, "/src", check=False)


def test_read_only_mounts_refuse_writes(tls_machine: Reachable, tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    tls_machine.cli("mount", tls_machine.name, f"{tmp_path}:/ro", "--ro")
    try:
        result = tls_machine.cli("ssh", tls_machine.name, "touch /ro/new", check=False)
        assert result.returncode != 0 and "Read-only file system" in result.stderr
        assert not (tmp_path / "new").exists()
    finally:
        tls_machine.cli("umount", tls_machine.name, "/ro")


def test_bad_mounts_are_refused(tls_machine: Reachable, tmp_path: Path) -> None:
    name = tls_machine.name
    (tmp_path / "file").write_text("x")
    tls_machine.cli("ssh", name, "ln -sfn /etc /linked")
    for spec, message in (
        (f"{tmp_path}:/", "refusing to mount over /"),
        (f"{tmp_path}:/etc", "refusing to mount over /etc"),
        (f"{tmp_path}:/x/../proc/1", "an absolute path without '..'"),
        (f"{tmp_path}:relative", "an absolute path without '..'"),
        (f"{tmp_path / 'file'}:/src", "is not a folder on this computer"),
        (f"{tmp_path / 'missing'}:/src", "is not a folder on this computer"),
        (f"{tmp_path}:/linked", "cannot mount"),  # a symlink planted in the machine is not followed
        ("nocolon", "expected SOURCE:TARGET"),
    ):
        result = tls_machine.cli("mount", name, spec, check=False)
        assert result.returncode != 0 and message in result.stderr, (spec, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1
    assert tls_machine.cli("mount", "ls", name).stdout == ""
    assert tls_machine.cli("ssh", name, "cat /etc/hostname").stdout == f"{name}\n"
    tls_machine.cli("ssh", name, "rm /linked")
    missing = tls_machine.cli("umount", name, "/nothing", check=False)
    assert missing.returncode == 1 and "has no folder mounted at /nothing" in missing.stderr


@pytest.fixture
def remote(test_host: HostFactory, tmp_path: Path) -> Iterator[tuple[Path, TestHost]]:
    """A store with ``web``: a generic (remote-style) machine on a test host, its API over SSH only."""
    host = test_host()
    store = tmp_path / "store"
    create_generic(store, host, "--api", "ssh")
    yield store, host
    machines(store, "rm", "-y", "web")


def test_a_remote_machine_mounts_through_reverse_sshfs(remote: tuple[Path, TestHost], tmp_path: Path,
                                                       busybox_tar: bytes) -> None:
    store, host = remote
    source = tmp_path / "src"
    source.mkdir()
    (source / "a.txt").write_text("first\n")
    machines(store, "mount", "web", f"{source}:/src")
    try:
        assert machines(store, "ssh", "web", "cat /src/a.txt").stdout == "first\n"
        (source / "a.txt").write_text("edited here\n")
        env = {**os.environ}
        script = (f'eval "$({MACHINES} --storage-path {store} env --shell bash web)" && {DOCKER} import - bb >/dev/null'
                  f" && {DOCKER} run --rm -v /src:/app bb cat /app/a.txt")
        seen = subprocess.run(["bash", "-c", script], input=busybox_tar, capture_output=True, timeout=240, env=env)
        assert seen.stdout == b"edited here\n", seen.stderr
        machines(store, "ssh", "web", "echo there > /src/b.txt && mkdir /src/d && mv /src/b.txt /src/d/c.txt")
        assert (source / "d" / "c.txt").read_text() == "there\n"

        # The machine cannot reach out of the shared folder: not by a symlink it makes, nor one planted here.
        escape = machines(store, "ssh", "web", "ln -s /etc/passwd /src/evil", check=False)
        assert escape.returncode != 0 and not (source / "evil").is_symlink()
        (source / "planted").symlink_to("/etc/hostname")
        (source / "up").symlink_to("..")
        assert machines(store, "ssh", "web", "cat /src/planted", check=False).returncode != 0
        assert machines(store, "ssh", "web", "ls /src/up/", check=False).returncode != 0
        assert machines(store, "ssh", "web", "cat /src/../src/a.txt").stdout == "edited here\n"

        machines(store, "umount", "web", "/src")
        assert machines(store, "ssh", "web", "mountpoint -q /src", check=False).returncode != 0
        assert machines(store, "mount", "ls", "web").stdout == ""
    finally:
        machines(store, "umount", "web", "/src", check=False)


def test_rm_unmounts_a_remote_machines_folders(test_host: HostFactory, tmp_path: Path) -> None:
    host = test_host()
    store = tmp_path / "store"
    create_generic(store, host, "--api", "ssh")
    machines(store, "mount", "web", f"{tmp_path}:/src")
    assert host.run("mountpoint -q /src", check=False).exit_status == 0
    machines(store, "rm", "-y", "web")
    assert host.run("mountpoint -q /src", check=False).exit_status != 0  # the adopted host keeps no mount of ours


def test_remote_read_only_and_a_host_without_sshfs(remote: tuple[Path, TestHost], tmp_path: Path) -> None:
    store, host = remote
    (tmp_path / "f").write_text("x")
    machines(store, "mount", "web", f"{tmp_path}:/ro", "--ro")
    try:
        refused = machines(store, "ssh", "web", "touch /ro/new", check=False)
        assert refused.returncode != 0 and not (tmp_path / "new").exists()
        assert machines(store, "ssh", "web", "cat /ro/f").stdout == "x"
    finally:
        machines(store, "umount", "web", "/ro")
    host.run("mount --bind /bin/false /usr/bin/sshfs")  # the host's own view: as if sshfs were not installed
    missing = machines(store, "mount", "web", f"{tmp_path}:/src", check=False)
    assert missing.returncode == 1
    assert "needs sshfs on the host: install the package sshfs there" in missing.stderr
    assert machines(store, "mount", "ls", "web").stdout == ""
