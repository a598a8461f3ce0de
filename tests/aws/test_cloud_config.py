"""Issue 14: ``--cloud-config FILE`` is the documented way to give cloud-init user data; ``--aws-userdata`` its alias."""

from __future__ import annotations

import base64
import email
import os
from pathlib import Path

import pytest

from machines.machine import Machines
from tests.support.cli import machines

from .conftest import NOTHING, World


@pytest.mark.timeout(600)
def test_cloud_config_rides_along_with_ours_and_conflicts_with_a_different_alias(world: World, tmp_path: Path) -> None:
    store, name = tmp_path / "store", f"awscc-{os.getpid()}"
    config = tmp_path / "user.yaml"
    config.write_text("#cloud-config\npackages: [htop]\n")
    other = tmp_path / "other.sh"
    other.write_text("#!/bin/sh\n")
    clash = machines(store, "create", "--driver", "aws", "--no-provision", "--cloud-config", str(config),
                     "--aws-userdata", str(other), *world.flags(), name, check=False)
    assert clash.returncode == 2 and "--cloud-config and --aws-userdata are the same setting" in clash.stderr
    assert world.cloud.leftovers() == NOTHING

    machines(store, "create", "--driver", "aws", "--no-provision", "--cloud-config", str(config), *world.flags(), name)
    machine = Machines(store).get(name)
    attribute = world.cloud.client.describe_instance_attribute(InstanceId=machine.record["driver_state"]["instance_id"],
                                                               Attribute="userData")
    parts = email.message_from_bytes(base64.b64decode(attribute["UserData"]["Value"])).get_payload()
    assert [part.get_content_type() for part in parts] == ["text/cloud-config", "text/cloud-config"]
    assert parts[1].get_payload(decode=True) == config.read_bytes()
    machines(store, "rm", "-y", name)
    assert world.cloud.leftovers() == NOTHING and world.plane.hosts == {}
