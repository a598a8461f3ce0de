"""The headline use on the fake cloud: ``machines create --driver azure`` provisions our runtime on a VM reached by
its private address, and the real docker CLI uses it through ``machines env``; stop (deallocate), start, rm."""

from __future__ import annotations

import base64
import email
import os
from pathlib import Path

import pytest

from machines.machine import Machines
from tests.support.cli import DOCKER, busybox_rootfs, create_flags, machines, with_env

from .conftest import World


@pytest.mark.timeout(600)  # under a minute on a quiet machine; two CLI boots and provisions on a busy one
def test_create_docker_run_stop_start_rm(world: World, tmp_path: Path) -> None:
    store, name = tmp_path / "store", f"aze2e-{os.getpid()}"
    script = tmp_path / "extra.sh"
    script.write_text("#!/bin/sh\necho extra custom data\n")
    # The test host's root is an overlay, so the runtime keeps its data on /data (as a VM's disk would allow).
    machines(store, "create", "--driver", "azure", "--timeout-ssh", "60", "--runtime-data-root", "/data/runtime",
             "--azure-custom-data", str(script), *create_flags("azure", world.config()), name)
    machine = Machines(store).get(name)
    # reached privately as the non-root admin user, over a host key pinned before the first connection
    assert machine.ip() == world.address(0)
    assert machine.record["ssh_host_key"] == machine.driver.initial_host_key()
    assert machines(store, "ssh", name, "echo $USER; hostname").stdout.split() == ["machines", name]
    # the user's custom data rides along with our cloud-config, as a second MIME part for cloud-init
    custom = base64.b64decode(world.arm.find("virtualMachines")["properties"]["osProfile"]["customData"])
    parts = email.message_from_bytes(custom).get_payload()
    assert [part.get_content_type() for part in parts] == ["text/cloud-config", "text/x-shellscript"]
    assert parts[1].get_payload(decode=True) == script.read_bytes()
    # the secret is kept only in the owner-only store file, never shown
    assert world.arm.client_secret not in machines(store, "inspect", name).stdout
    assert (store / "machines" / name / "config.json").stat().st_mode & 0o077 == 0

    imported = with_env(store, name, f"{DOCKER} import - busybox:azure", stdin=busybox_rootfs())
    assert imported.returncode == 0, imported.stderr
    ran = with_env(store, name, f"{DOCKER} version --format '{{{{.Server.Version}}}}' && "
                                f"{DOCKER} run --rm busybox:azure echo hello from azure")
    assert ran.stdout.decode().split()[-3:] == ["hello", "from", "azure"], ran.stderr

    stopped = machines(store, "stop", name)
    assert "no compute charges while stopped" in stopped.stderr
    assert machines(store, "status", name).stdout.strip() == "Stopped"
    assert world.arm.find("virtualMachines")["powerState"] == "deallocated"
    machines(store, "start", name)  # a fresh boot: the runtime is started again, with its images kept
    ran = with_env(store, name, f"{DOCKER} run --rm busybox:azure hostname")
    assert ran.returncode == 0, ran.stderr

    machines(store, "rm", "-y", name)
    assert world.arm.ids() == [] and world.plane.hosts == {}
    assert Machines(store).store.names() == []
