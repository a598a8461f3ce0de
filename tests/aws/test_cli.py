"""``machines`` with ``--driver aws`` end to end: moto keeps the books, the data plane runs a real SSH host."""

from __future__ import annotations

import base64
import email
import os
from pathlib import Path

import pytest

from machines.machine import Machines
from tests.support.cli import machines

from .conftest import NOTHING, MotoCloud, World


@pytest.mark.timeout(600)  # about 10 s on a quiet machine; each CLI start-up is seconds on a very busy one
def test_create_ssh_rm(world: World, tmp_path: Path, aws_env: dict[str, str]) -> None:
    """The first SSH is already verified: the host key was injected through user data and pinned at create."""
    store, name = tmp_path / "store", f"aws-{os.getpid()}"
    script = tmp_path / "extra.sh"
    script.write_text("#!/bin/sh\necho extra user data\n")
    machines(store, "create", "--driver", "aws", "--no-provision", "--aws-userdata", str(script), *world.flags(), name)
    machine = Machines(store).get(name)
    assert machine.ip() == world.address(0)
    # the user's script rides along with our cloud-config, as a second MIME part for cloud-init
    attribute = world.cloud.client.describe_instance_attribute(InstanceId=machine.record["driver_state"]["instance_id"],
                                                               Attribute="userData")
    parts = email.message_from_bytes(base64.b64decode(attribute["UserData"]["Value"])).get_payload()
    assert [part.get_content_type() for part in parts] == ["text/cloud-config", "text/x-shellscript"]
    assert parts[1].get_payload(decode=True) == script.read_bytes()
    assert machine.record["ssh_host_key"] == machine.driver.initial_host_key()
    assert machines(store, "ssh", name, "hostname").stdout.strip() == name
    inspected = machines(store, "inspect", name).stdout
    assert aws_env["AWS_SECRET_ACCESS_KEY"] not in inspected
    # credentials from the environment stay there: boto3's chain reads them again on each command
    record = store / "machines" / name / "config.json"
    assert aws_env["AWS_SECRET_ACCESS_KEY"] not in record.read_text() and aws_env["AWS_ACCESS_KEY_ID"] not in record.read_text()

    machines(store, "rm", "-y", name)
    assert world.cloud.leftovers() == NOTHING and world.plane.hosts == {}
    assert Machines(store).store.names() == []


BAD_INPUT = {
    "unknown region": (["--amazonec2-region", "mars-north-1"], "unknown AWS region 'mars-north-1'"),
    "bad instance type": (["--amazonec2-instance-type", "t3.colossal"], "--aws-instance-type 't3.colossal' does not exist"),
    "missing AMI": (["--amazonec2-ami", "ami-0123456789abcdef0"], "--aws-ami 'ami-0123456789abcdef0' does not exist"),
    "missing credentials": ([], "no AWS credentials"),
}


@pytest.mark.parametrize(("flags", "message"), BAD_INPUT.values(), ids=BAD_INPUT.keys())
def test_bad_input_is_one_line_before_anything_is_made(
    cloud: MotoCloud, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, flags: list[str], message: str
) -> None:
    """Through the amazonec2 alias and its Docker Machine flag names: exit 3, one line, nothing in the cloud."""
    if "no AWS credentials" in message:
        monkeypatch.delenv("AWS_ACCESS_KEY_ID")
        monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    store = tmp_path / "store"
    result = machines(store, "create", "-d", "amazonec2", "--amazonec2-endpoint", cloud.endpoint, *flags, "bad",
                      check=False)
    assert result.returncode == 3, result.stderr
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert cloud.leftovers() == NOTHING and Machines(store).store.names() == []
