"""A folder of this computer mounted into a local machine: edits here are seen by containers there, live, and
the mount comes back after a stop and start."""

from __future__ import annotations

from pathlib import Path

from tests.reach.conftest import IMAGE, Reachable


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
