"""A ``local`` machine does not see the workstation's private things: /home, /root, the machines store,
/etc/shadow's passwords, the SSH host keys or its disks. Checked from inside a real local host, over ``machines ssh``,
with the store in a folder the host would otherwise see (/var/tmp)."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from machines.drivers.nshost import Bridge
from tests.support.cli import DOCKER, MACHINES, busybox_rootfs, machines


@pytest.fixture
def local(test_bridge: Bridge) -> Iterator[tuple[Path, dict[str, str], str]]:
    """(store, env, name): a local machine on this worker's bridge, its store under /var/tmp; removed after."""
    store = Path("/var/tmp") / f"machines-isolation-{os.getpid()}-{uuid.uuid4().hex[:6]}" / "store"
    env = {**os.environ, "MACHINES_LOCAL_BRIDGE": test_bridge.name, "MACHINES_LOCAL_SUBNET": test_bridge.subnet}
    name = f"iso{uuid.uuid4().hex[:6]}"
    try:
        machines(store, "create", "-d", "local", "--no-provision", name, env=env)
        yield store, env, name
    finally:
        machines(store, "rm", "-f", "-y", name, env=env, check=False)
        shutil.rmtree(store.parent, ignore_errors=True)


@pytest.fixture
def planted() -> Iterator[tuple[Path, Path]]:
    """A file in a home folder under /home and one in /root, made for the test and removed after."""
    marker = f"machines-isolation-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    home, root = Path("/home") / marker, Path("/root") / marker
    home.mkdir()
    (home / "secret").write_text("workstation user data")
    root.write_text("workstation root data")
    try:
        yield home, root
    finally:
        shutil.rmtree(home)
        root.unlink()


def _on(store: Path, env: dict[str, str], name: str, command: str) -> subprocess.CompletedProcess[str]:
    return machines(store, "ssh", name, command, env=env, check=False)


def test_private_folders_and_the_store_are_not_shared(local: tuple[Path, dict[str, str], str],
                                                      planted: tuple[Path, Path]) -> None:
    store, env, name = local
    home, root_file = planted
    assert _on(store, env, name, "ls -A /home; ls -A /root").stdout.split() == [".bashrc", ".ssh"]
    assert _on(store, env, name, f"cat {home}/secret {root_file}").returncode != 0
    assert (store / "machines" / name / "id_ed25519").exists()  # the machine's own key, on the workstation
    listing = _on(store, env, name, f"ls -A {store}")
    assert listing.returncode == 0 and listing.stdout == ""
    assert _on(store, env, name, f"cat {store}/machines/{name}/id_ed25519").returncode != 0


def test_passwords_and_host_keys_stay_on_the_workstation(local: tuple[Path, dict[str, str], str]) -> None:
    store, env, name = local
    shadow = _on(store, env, name, "cat /etc/shadow").stdout
    workstation = Path("/etc/shadow").read_text()
    users = [line.split(":")[0] for line in workstation.splitlines() if line]
    assert [line.split(":")[0] for line in shadow.splitlines()] == users
    assert {line.split(":")[1] for line in shadow.splitlines()} == {"*"}
    keys = _on(store, env, name, "ls /etc/ssh; cat /etc/ssh/ssh_host_*_key").stdout
    for path in Path("/etc/ssh").glob("ssh_host_*_key"):
        assert path.read_text().strip() not in keys
    assert "ssh_host_rsa_key" not in keys.split() and "ssh_host_ecdsa_key" not in keys.split()
    # Key login still works for root with the locked-down shadow: this very command ran.
    assert _on(store, env, name, "whoami").stdout == "root\n"


def test_no_disk_is_reachable(local: tuple[Path, dict[str, str], str]) -> None:
    store, env, name = local
    disk = next(Path("/sys/block").iterdir())
    major, minor = (disk / "dev").read_text().strip().split(":")
    listing = _on(store, env, name, "find /dev -type b; ls /dev").stdout.split()
    assert set(listing) <= {"null", "zero", "full", "random", "urandom", "tty", "fuse", "net", "ptmx", "fd", "stdin",
                            "stdout", "stderr", "pts", "shm", "mqueue"}
    # Even a node made by hand cannot be opened: the host's devices cgroup allows no disk.
    made = _on(store, env, name, f"mknod /dev/probe b {major} {minor} && head -c 1 /dev/probe > /dev/null")
    assert made.returncode != 0 and "Operation not permitted" in made.stderr
    # What programs need is there: a PTY, /dev/null, randomness, shared memory.
    works = _on(store, env, name, "script -qc tty /dev/null; head -c 8 /dev/urandom | wc -c; "
                                  "echo x > /dev/shm/x && cat /dev/shm/x")
    assert works.returncode == 0 and "/dev/pts/" in works.stdout and "8\nx\n" in works.stdout


def test_containers_still_run_in_an_isolated_local_machine(test_bridge: Bridge, tmp_path: Path) -> None:
    store = Path("/var/tmp") / f"machines-isolation-{os.getpid()}-{uuid.uuid4().hex[:6]}" / "store"
    env = {**os.environ, "MACHINES_LOCAL_BRIDGE": test_bridge.name, "MACHINES_LOCAL_SUBNET": test_bridge.subnet}
    for key in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        env.pop(key, None)
    name = f"iso{uuid.uuid4().hex[:6]}"
    rootfs = tmp_path / "busybox.tar"
    rootfs.write_bytes(busybox_rootfs())
    try:
        machines(store, "create", "-d", "local", name, env=env)
        script = (f'eval "$({MACHINES} --storage-path {store} env --shell bash {name})" && '
                  f"{DOCKER} import {rootfs} busybox:iso >/dev/null && "
                  f"{DOCKER} run --rm busybox:iso sh -c 'echo ran; head -c 4 /dev/urandom | wc -c; ls /dev' && "
                  f"{DOCKER} run --rm -t busybox:iso tty")
        result = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=300, env=env)
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("ran\n4\n") and "null" in result.stdout and "/dev/pts/0" in result.stdout
        # Not even a privileged container inside reaches a disk: the host's devices cgroup is above its own.
        major, minor = (next(Path("/sys/block").iterdir()) / "dev").read_text().strip().split(":")
        probe = (f'eval "$({MACHINES} --storage-path {store} env --shell bash {name})" && {DOCKER} run --rm '
                 f"--privileged busybox:iso sh -c 'mknod /dev/probe b {major} {minor} && head -c 1 /dev/probe'")
        privileged = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, timeout=300, env=env)
        assert privileged.returncode != 0 and "Operation not permitted" in privileged.stdout + privileged.stderr
    finally:
        machines(store, "rm", "-f", "-y", name, env=env, check=False)
        shutil.rmtree(store.parent, ignore_errors=True)
