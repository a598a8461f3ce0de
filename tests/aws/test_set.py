"""Issue 14: ``machines set --aws-instance-type`` changes a stopped instance's type, as EC2 allows it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from machines.machine import Machines
from tests.support.cli import machines

from .conftest import NOTHING, World


@pytest.mark.timeout(600)
def test_instance_type_changes_only_on_a_stopped_machine(world: World, tmp_path: Path) -> None:
    store, name = tmp_path / "store", f"awsset-{os.getpid()}"
    machines(store, "create", "--driver", "aws", "--no-provision", *world.flags(), name)
    try:
        running = machines(store, "set", name, "--aws-instance-type", "t3.small", check=False)
        assert running.returncode != 0 and "stopped instance only: run 'machines stop" in running.stderr
        machines(store, "stop", name)
        wrong = machines(store, "set", name, "--aws-instance-type", "t3.colossal", check=False)
        assert wrong.returncode != 0 and "'t3.colossal' does not exist" in wrong.stderr
        assert "instance_type: t3.micro -> t3.small" in machines(store, "set", name, "--dry-run", "--aws-instance-type",
                                                                 "t3.small").stdout.replace("aws ", "")
        machines(store, "set", name, "--aws-instance-type", "t3.small")
        machine = Machines(store).get(name)
        instance_id = machine.record["driver_state"]["instance_id"]
        described = world.cloud.client.describe_instances(InstanceIds=[instance_id])
        assert described["Reservations"][0]["Instances"][0]["InstanceType"] == "t3.small"
        assert machine.record["driver"]["instance_type"] == "t3.small"
        refused = machines(store, "set", name, "--aws-region", "eu-west-1", check=False)
        assert refused.returncode != 0 and "the aws driver cannot change --aws-region after create" in refused.stderr
    finally:
        machines(store, "rm", "-f", "-y", name)
    assert world.cloud.leftovers() == NOTHING
