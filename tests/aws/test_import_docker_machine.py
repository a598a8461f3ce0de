"""Issue 14: an ``amazonec2`` machine of a Docker Machine store (laid out as Docker Machine 0.16 writes it) becomes a
native ``aws`` entry: its instance, region and key are adopted by describing the instance only, and ``stop``/``rm``
then act on that instance through EC2 (moto). Docker Machine's key pair and security group are left alone."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from machines.machine import Machines
from tests.support.cli import machines

from .conftest import REGION, MotoCloud


def _amazonec2_store(folder: Path, name: str, instance_id: str, endpoint: str, environment: dict[str, str]) -> Path:
    """``~/.docker/machine`` with one amazonec2 machine: the fields drivers/amazonec2 saves, its key and TLS files."""
    target = folder / "machines" / name
    target.mkdir(parents=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "rsa", "-b", "2048", "-N", "", "-f", str(target / "id_rsa")], check=True)
    for file in ("ca.pem", "cert.pem", "key.pem", "server.pem", "server-key.pem"):
        (target / file).write_text(f"-----BEGIN CERTIFICATE-----\n{file}\n-----END CERTIFICATE-----\n")
    driver = {
        "IPAddress": "54.0.0.10", "MachineName": name, "SSHUser": "ubuntu", "SSHPort": 22,
        "SSHKeyPath": str(target / "id_rsa"), "StorePath": str(folder), "SwarmMaster": False, "SwarmHost": "",
        "SwarmDiscovery": "", "Id": "f3c7c9f5b1c1e0a4", "AccessKey": environment["AWS_ACCESS_KEY_ID"],
        "SecretKey": environment["AWS_SECRET_ACCESS_KEY"], "SessionToken": "", "Region": REGION,
        "AMI": "ami-0dba2cb6798deb6d8", "SSHKeyID": 0, "ExistingKey": False, "KeyName": name,
        "InstanceId": instance_id, "InstanceType": "t2.micro", "PrivateIPAddress": "172.31.0.10",
        "SecurityGroupId": "", "SecurityGroupIds": None, "SecurityGroupName": "", "SecurityGroupNames": ["docker-machine"],
        "OpenPorts": None, "Tags": "", "ReservationId": "", "DeviceName": "/dev/sda1", "RootSize": 16,
        "VolumeType": "gp2", "IamInstanceProfile": "", "VpcId": "", "SubnetId": "", "Zone": "a",
        "keyPath": "", "RequestSpotInstance": False, "SpotPrice": "0.50", "BlockDurationMinutes": 0,
        "PrivateIPOnly": False, "UsePrivateIP": False, "UseEbsOptimizedInstance": False, "Monitoring": False,
        "SSLCertificates": "", "Endpoint": endpoint, "DisableSSL": False, "UserDataFile": "", "RetryCount": 5,
    }
    config = {"ConfigVersion": 3, "Driver": driver, "DriverName": "amazonec2", "Name": name,
              "HostOptions": {"Driver": "", "Memory": 0, "Disk": 0,
                              "EngineOptions": {"Env": [], "InsecureRegistry": [], "Labels": ["origin=dm"],
                                                "RegistryMirror": [], "ArbitraryFlags": [], "TlsVerify": True},
                              "SwarmOptions": {"IsSwarm": False},
                              "AuthOptions": {"StorePath": str(target)}}}
    (target / "config.json").write_text(json.dumps(config, indent=4))
    return target


def _launch(cloud: MotoCloud, name: str) -> str:
    """An instance as Docker Machine left it: its own key pair and the shared docker-machine group."""
    cloud.client.create_key_pair(KeyName=name)
    cloud.client.create_security_group(GroupName="docker-machine", Description="Docker Machine")
    image = cloud.client.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    reservation = cloud.client.run_instances(ImageId=image, MinCount=1, MaxCount=1, InstanceType="t2.micro",
                                             KeyName=name, SecurityGroups=["docker-machine"])
    return str(reservation["Instances"][0]["InstanceId"])


def test_amazonec2_machine_becomes_a_native_aws_entry(cloud: MotoCloud, aws_env: dict[str, str],
                                                      tmp_path: Path) -> None:
    name = f"dmaws{os.getpid()}"
    instance_id = _launch(cloud, name)
    cloud.proxy.reset(0)  # an instance Docker Machine made long ago: EC2 agrees on it
    source = tmp_path / "docker-machine"
    original = _amazonec2_store(source, name, instance_id, cloud.endpoint, aws_env)
    store = tmp_path / "store"
    machines(store, "import-docker-machine", "--from", str(source), name)

    assert machines(store, "ls", "--format", "{name} {driver} {state}").stdout.split() == [name, "aws", "Running"]
    record = Machines(store).get(name).record
    assert record["driver_state"]["instance_id"] == instance_id
    assert record["driver"]["region"] == REGION and record["driver"]["instance_type"] == "t2.micro"
    assert record["host_options"]["labels"] == ["origin=dm"] and record["runtime"]["engine"] == "docker"
    key = Path(record["driver"]["ssh_keypath"])
    assert key.parent == store / "machines" / name and key.read_bytes() == (original / "id_rsa").read_bytes()
    assert key.stat().st_mode & 0o777 == 0o600
    shown = machines(store, "inspect", name).stdout
    assert aws_env["AWS_SECRET_ACCESS_KEY"] not in shown  # Docker Machine kept it in clear; we never show it

    machines(store, "stop", name)  # through EC2, on Docker Machine's instance
    described = cloud.client.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]
    assert described["State"]["Name"] == "stopped"
    machines(store, "set", name, "--aws-instance-type", "t3.small")
    described = cloud.client.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]
    assert described["InstanceType"] == "t3.small"
    machines(store, "rm", "-y", name)
    described = cloud.client.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]
    assert described["State"]["Name"] in ("shutting-down", "terminated")
    left = cloud.leftovers()
    assert left["key_pairs"] == [name] and left["security_groups"] == ["docker-machine"]  # Docker Machine's own
    cloud.client.delete_key_pair(KeyName=name)
    cloud.client.delete_security_group(GroupName="docker-machine")


def test_amazonec2_machine_whose_instance_is_gone_is_refused(cloud: MotoCloud, aws_env: dict[str, str],
                                                            tmp_path: Path) -> None:
    name = f"dmgone{os.getpid()}"
    instance_id = _launch(cloud, name)
    cloud.client.terminate_instances(InstanceIds=[instance_id])
    cloud.proxy.reset(0)
    source = tmp_path / "docker-machine"
    _amazonec2_store(source, name, instance_id, cloud.endpoint, aws_env)
    store = tmp_path / "store"
    refused = machines(store, "import-docker-machine", "--from", str(source), name, check=False)
    assert refused.returncode != 0
    assert f"{name}: EC2 instance {instance_id} no longer exists in {REGION}" in refused.stderr
    assert not (store / "machines" / name).exists()
    cloud.client.delete_key_pair(KeyName=name)
    cloud.client.delete_security_group(GroupName="docker-machine")
