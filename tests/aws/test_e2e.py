"""The headline use on the fake cloud: an EC2 machine provisioned with our runtime, used by the real docker CLI."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from machines.machine import Machines
from tests.support.cli import DOCKER, busybox_rootfs, machines, with_env

from .conftest import NOTHING, World


@pytest.mark.timeout(600)  # about 25 s on a quiet machine; provisioning twice can be slow on a busy one
def test_docker_run_through_env_then_stop_start_rm(world: World, tmp_path: Path) -> None:
    store, name = tmp_path / "store", f"e2e-{os.getpid()}"
    # The test host's root is an overlay, so the runtime keeps its data on /data (as with the local driver).
    machines(store, "create", "--driver", "aws", "--timeout-ssh", "60", "--runtime-data-root", "/data/runtime",
             *world.flags(), name)
    assert Machines(store).get(name).record["runtime"]["data_root"] == "/data/runtime"
    imported = with_env(store, name, f"{DOCKER} import - busybox:aws", stdin=busybox_rootfs())
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
