"""``machines env --ssh`` serves the machine's API socket only from a folder no other user can reach into: owned by
the user, mode 0700, not a symlink; ``$XDG_RUNTIME_DIR`` first when the machine folder's path is too long for a
socket. A planted folder is refused with one line and nothing is served from it."""

from __future__ import annotations

import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cli import DOCKER, machines
from tests.support.hosts import HostFactory

NOBODY = 65534


@pytest.fixture
def provisioned(test_host: HostFactory, tmp_path: Path) -> Iterator[Path]:
    """A store whose machine ``web`` (API over SSH only) has a folder path too long for a unix socket."""
    host = test_host()
    store = tmp_path / ("long-" * 16) / "store"
    machines(store, "create", "-d", "generic", "--generic-ip-address", host.address, "--generic-ssh-key",
             str(host.key_path), "--generic-ssh-host-key", host.host_public_key, "--runtime-data-root",
             "/data/runtime", "--api", "ssh", "web")
    yield store
    machines(store, "rm", "-y", "web")


def _env_ssh(store: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return machines(store, "env", "--ssh", "--shell", "bash", "web", env=env, check=False)


def _refused(result: subprocess.CompletedProcess[str], folder: Path, reason: str) -> None:
    assert result.returncode == 1, result.stdout
    assert f"refusing to serve the SSH forwarder's socket in {folder}: {reason}" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_planted_runtime_folders_are_refused(provisioned: Path, tmp_path: Path) -> None:
    runtime_dir, elsewhere = tmp_path / "xdg", tmp_path / "attacker"
    runtime_dir.mkdir(mode=0o700)
    elsewhere.mkdir(mode=0o777)
    env = {**os.environ, "XDG_RUNTIME_DIR": str(runtime_dir), "TMPDIR": str(tmp_path / "tmp")}
    folder = runtime_dir / "machines"

    folder.symlink_to(elsewhere)
    _refused(_env_ssh(provisioned, env), folder, "it is a symlink")
    folder.unlink()
    folder.mkdir(mode=0o700)
    os.chown(folder, NOBODY, NOBODY)
    _refused(_env_ssh(provisioned, env), folder, f"it is owned by uid {NOBODY}, not by you (uid {os.getuid()})")
    os.chown(folder, os.getuid(), os.getgid())
    folder.chmod(0o755)
    _refused(_env_ssh(provisioned, env), folder, "its mode is 0755, not 0700")
    assert list(elsewhere.iterdir()) == [] and list(folder.iterdir()) == []

    folder.rmdir()
    result = _env_ssh(provisioned, env)
    assert result.returncode == 0, result.stderr
    socket_path = next(folder.iterdir())
    assert f'DOCKER_HOST="unix://{socket_path}"' in result.stdout or f"DOCKER_HOST=unix://{socket_path}" in result.stdout
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700 and stat.S_IMODE(socket_path.stat().st_mode) == 0o600
    version = subprocess.run([DOCKER, "-H", f"unix://{socket_path}", "version", "--format", "{{.Server.Os}}"],
                             capture_output=True, text=True, timeout=60)
    assert version.stdout.strip() == "linux", version.stderr
    machines(provisioned, "env", "--ssh", "--unset", "web", env=env)


def test_a_shared_runtime_dir_is_not_used_and_the_temp_fallback_is_checked(provisioned: Path, tmp_path: Path) -> None:
    shared, temp = tmp_path / "xdg-shared", tmp_path / "tmp"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)
    temp.mkdir()
    env = {**os.environ, "XDG_RUNTIME_DIR": str(shared), "TMPDIR": str(temp)}
    fallback = temp / f"machines-{os.getuid()}"
    fallback.mkdir(mode=0o777)
    fallback.chmod(0o777)  # made by another user before us, as /tmp/machines-UID could be

    _refused(_env_ssh(provisioned, env), fallback, "its mode is 0777, not 0700")
    assert list(shared.iterdir()) == [] and list(fallback.iterdir()) == []


def test_a_machine_folder_others_can_enter_is_refused(test_host: HostFactory, tmp_path: Path) -> None:
    host = test_host()
    store = tmp_path / "s"
    machines(store, "create", "-d", "generic", "--generic-ip-address", host.address, "--generic-ssh-key",
             str(host.key_path), "--generic-ssh-host-key", host.host_public_key, "--runtime-data-root",
             "/data/runtime", "--api", "ssh", "web")
    try:
        folder = store / "machines" / "web"
        folder.chmod(0o755)
        _refused(_env_ssh(store, dict(os.environ)), folder, "its mode is 0755, not 0700")
        assert not (folder / "docker.sock").exists()
    finally:
        machines(store, "rm", "-y", "web")
