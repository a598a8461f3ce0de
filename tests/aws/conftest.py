"""Fixtures for the AWS driver's tests: one moto server per test session (per xdist worker), reset per test.

The server runs with moto's validation switched on so bad AMIs, key names and instance types get AWS's errors, and
the driver reaches it only through ``ConsistencyProxy``: new ids stay NotFound and out of Describe lists for
``CONSISTENCY_DELAY`` seconds, as EC2's eventual consistency has them. What a test inspects comes from moto directly.
Every test runs with fake credentials, no shared AWS files and the instance metadata service disabled, so nothing
ever leaves the machine. ``world`` adds a bridge with a VPC and subnet in its range and the data plane that puts
a real SSH host behind each instance; tests connect only to those private addresses, never to moto's public ones.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import moto
import pytest

from machines.drivers.nshost import Bridge
from tests.support.cli import create_flags

from .consistency import ConsistencyProxy
from .dataplane import DataPlane

MOTO_SERVER = Path(sys.executable).with_name("moto_server")
VALIDATION = {
    "MOTO_ENABLE_AMI_VALIDATION": "true",
    "MOTO_ENABLE_KEYPAIR_VALIDATION": "true",
    "MOTO_EC2_ENABLE_INSTANCE_TYPE_VALIDATION": "true",
}
REGION = "us-east-1"
CONSISTENCY_DELAY = 2.0  # seconds EC2 takes to agree with itself in these tests (real EC2: usually seconds)
# An arm64 Ubuntu image as Canonical publishes them: moto's own catalogue has none, the driver must pick it for arm64.
ARM64_IMAGE = {
    "ami_id": "ami-0a1b2c3d4e5f60718", "architecture": "arm64", "description": "Canonical, Ubuntu, 24.04, arm64",
    "hypervisor": "xen", "image_type": "machine", "name": "ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-arm64-server-20250115",
    "owner_id": "099720109477", "platform": None, "public": True, "root_device_name": "/dev/sda1",
    "root_device_type": "ebs", "sriov": "simple", "state": "available", "virtualization_type": "hvm",
    "creation_date": "2025-01-15T00:00:00.000Z",
}


@pytest.fixture(scope="session")
def moto_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Start ``moto_server`` on a free loopback port and yield its URL; stopped by its PID at the end."""
    folder = tmp_path_factory.mktemp("moto")
    log_path = folder / "moto.log"
    amis_path = folder / "amis.json"
    with gzip.open(Path(moto.__file__).parent / "ec2" / "resources" / "amis.json.gz") as catalogue:
        amis_path.write_text(json.dumps(json.load(catalogue) + [ARM64_IMAGE]))
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            [str(MOTO_SERVER), "-H", "127.0.0.1", "-p", "0"],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env={**os.environ, **VALIDATION, "MOTO_AMIS_PATH": str(amis_path)},
        )
    try:
        url = _wait_for_url(log_path, process)
        yield url
    finally:
        process.kill()  # moto keeps nothing worth a graceful shutdown, and SIGTERM takes it seconds
        process.wait()


def _wait_for_url(log_path: Path, process: subprocess.Popen[bytes]) -> str:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        match = re.search(r"Running on (http://127\.0\.0\.1:\d+)", log_path.read_text(errors="replace"))
        if match:
            return match.group(1)
        if process.poll() is not None:
            raise RuntimeError(f"moto_server exited: {log_path.read_text(errors='replace')}")
        time.sleep(0.05)
    raise RuntimeError("moto_server did not start within 30 s")


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, str]:
    """Fake credentials only; no shared files, no metadata service, no AWS_* left over from the caller."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    values = {
        "AWS_ACCESS_KEY_ID": "AKIAMACHINESTEST",
        "AWS_SECRET_ACCESS_KEY": "machines-test-secret-value",
        "AWS_CONFIG_FILE": str(tmp_path / "aws-config-absent"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "aws-credentials-absent"),
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return values


@pytest.fixture(scope="session")
def consistency(moto_endpoint: str) -> Iterator[ConsistencyProxy]:
    proxy = ConsistencyProxy(moto_endpoint, CONSISTENCY_DELAY)
    try:
        yield proxy
    finally:
        proxy.close()


class MotoCloud:
    """The cloud as a test sees it: the lagging endpoint drivers use, a boto3 client on moto itself (the truth),
    and what of ours is left in it."""

    def __init__(self, moto_url: str, proxy: ConsistencyProxy) -> None:
        self.proxy = proxy
        self.endpoint = proxy.url
        self.client = boto3.client("ec2", endpoint_url=moto_url, region_name=REGION)

    def leftovers(self) -> dict[str, list[str]]:
        """Live instances, key pairs and security groups other than ``default``: empty lists after a cleanup."""
        reservations = self.client.describe_instances(
            Filters=[{"Name": "instance-state-name", "Values": ["pending", "running", "stopping", "stopped"]}]
        )["Reservations"]
        groups = self.client.describe_security_groups()["SecurityGroups"]
        return {
            "instances": [instance["InstanceId"] for reservation in reservations for instance in reservation["Instances"]],
            "key_pairs": [pair["KeyName"] for pair in self.client.describe_key_pairs()["KeyPairs"]],
            "security_groups": [group["GroupName"] for group in groups if group["GroupName"] != "default"],
        }


NOTHING: dict[str, list[str]] = {"instances": [], "key_pairs": [], "security_groups": []}


@pytest.fixture
def cloud(moto_endpoint: str, consistency: ConsistencyProxy, aws_env: dict[str, str]) -> MotoCloud:
    """A clean moto (reset before the test) behind a proxy with the default lag."""
    request = urllib.request.Request(f"{moto_endpoint}/moto-api/reset", method="POST")
    with urllib.request.urlopen(request, timeout=30):
        pass
    consistency.reset(CONSISTENCY_DELAY)
    return MotoCloud(moto_endpoint, consistency)


class World:
    """moto plus a VPC and subnet on the test bridge, with the data plane running hosts for its instances."""

    def __init__(self, cloud: MotoCloud, bridge: Bridge, plane: DataPlane, vpc_id: str, subnet_id: str) -> None:
        self.cloud = cloud
        self.bridge = bridge
        self.plane = plane
        self.vpc_id = vpc_id
        self.subnet_id = subnet_id

    def address(self, index: int) -> str:
        """A fixed private address in the subnet (AWS reserves the first four)."""
        return str(self.bridge.network.network_address + 10 + index)

    def config(self, index: int = 0) -> dict[str, Any]:
        """Driver flag values that put a machine in the test subnet at its own address, reached privately as root."""
        return {
            "endpoint": self.cloud.endpoint,
            "vpc_id": self.vpc_id,
            "subnet_id": self.subnet_id,
            "private_ip_address": self.address(index),
            "use_private_address": True,
            "ssh_user": "root",
            "allow_cidr": [str(self.bridge.network)],
            "wait_timeout": 30,
        }

    def flags(self, index: int = 0) -> list[str]:
        """The same as ``machines create`` flags."""
        return create_flags("aws", self.config(index))


@pytest.fixture
def world(cloud: MotoCloud, test_bridge: Bridge, tmp_path: Path) -> Iterator[World]:
    network = str(test_bridge.network)
    vpc_id = cloud.client.create_vpc(CidrBlock=network)["Vpc"]["VpcId"]
    subnet_id = cloud.client.create_subnet(VpcId=vpc_id, CidrBlock=network, AvailabilityZone=f"{REGION}a")[
        "Subnet"]["SubnetId"]
    plane = DataPlane(cloud.client, test_bridge, tmp_path / "hosts").start()
    try:
        yield World(cloud, test_bridge, plane, vpc_id, subnet_id)
    finally:
        plane.close()
    assert plane.errors == [], "the data plane failed to play an instance"
