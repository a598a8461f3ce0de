"""The headline use on the fake cloud: an EC2 machine provisioned with our runtime, used by the real docker CLI."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from machines.machine import Machines

from .conftest import NOTHING, World
from .test_cli import MACHINES, machines

REPO = Path(__file__).resolve().parents[2]
DOCKER = "/usr/local/bin/docker" if os.path.exists("/usr/local/bin/docker") else "docker"


def with_env(store: Path, name: str, command: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    """``command`` in bash after ``eval "$(machines env NAME)"``, as a user would run it."""
    script = f'eval "$({MACHINES} --storage-path {store} env --shell bash {name})" && {command}'
    return subprocess.run(["bash", "-c", script], input=stdin, capture_output=True, timeout=240, env=os.environ)


@pytest.mark.timeout(600)  # about 25 s on a quiet machine; provisioning twice can be slow on a busy one
def test_docker_run_through_env_then_stop_start_rm(world: World, tmp_path: Path) -> None:
    store, name = tmp_path / "store", f"e2e-{os.getpid()}"
    # The test host's root is an overlay, so the runtime keeps its data on /data (as with the local driver).
    Machines(store).create(name, "aws", world.config(), host_options={"api": "tls", "data_root": "/data/runtime"},
                           ssh_timeout=60)
    rootfs = subprocess.run(["bash", str(REPO / "scripts" / "busybox-rootfs.sh")], capture_output=True, check=True)
    imported = with_env(store, name, f"{DOCKER} import - busybox:aws", stdin=rootfs.stdout)
    assert imported.returncode == 0, imported.stderr
    ran = with_env(store, name, f"{DOCKER} run --rm busybox:aws echo hello from ec2")
    assert ran.stdout.decode().strip() == "hello from ec2", ran.stderr

    machines(store, "stop", name)
    assert machines(store, "status", name).stdout.strip() == "Stopped"
    machines(store, "start", name)  # a fresh boot: the runtime is started again, with its images kept
    ran = with_env(store, name, f"{DOCKER} run --rm busybox:aws hostname")
    assert ran.returncode == 0, ran.stderr

    machines(store, "rm", "-y", name)
    assert world.cloud.leftovers() == NOTHING and world.plane.hosts == {}
