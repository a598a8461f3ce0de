"""Fixtures for the Azure driver's tests: one fake Resource Manager per xdist worker, reset per test.

Every test runs with no ``AZURE_*`` variables from the caller and logs in as the fake's service principal against
the fake's own token endpoint, so nothing leaves the machine. ``world`` adds the data plane that puts a real SSH
host behind each VM whose private address lies on the worker's test bridge.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from machines.drivers.nshost import Bridge

from .dataplane import AzureDataPlane
from .fakearm import FakeArm

NIC_RESERVATION_SECONDS = 3.0  # Azure holds a failed VM's NIC about 180 s; the undo's retry is the same for 3


@pytest.fixture(scope="session")
def fake_arm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeArm]:
    arm = FakeArm(tmp_path_factory.mktemp("arm"))
    try:
        yield arm
    finally:
        arm.close()


@pytest.fixture
def arm(fake_arm: FakeArm, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[FakeArm]:
    """A clean fake, and an environment with no Azure settings or CLI login of the caller's."""
    for name in list(os.environ):
        if name.startswith(("AZURE_", "MSI_", "IDENTITY_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AZURE_CONFIG_DIR", str(tmp_path / "az-config-absent"))
    fake_arm.reset()
    fake_arm.nic_reservation_seconds = NIC_RESERVATION_SECONDS
    yield fake_arm
    fake_arm.reset()


def arm_config(arm: FakeArm) -> dict[str, Any]:
    """Driver flag values that reach the fake and log in as its service principal."""
    return {
        "subscription_id": arm.subscription,
        "tenant_id": arm.tenant,
        "client_id": arm.client_id,
        "client_secret": arm.client_secret,
        "endpoint": arm.url,
        "authority_host": arm.url,
        "ca_bundle": str(arm.ca_path),
        "poll_interval": 0,
        "wait_timeout": 30,
    }


class World:
    """The fake with a data plane: VMs put in the bridge's range get a real SSH host at their private address."""

    def __init__(self, arm: FakeArm, bridge: Bridge, plane: AzureDataPlane) -> None:
        self.arm = arm
        self.bridge = bridge
        self.plane = plane

    def address(self, index: int) -> str:
        return str(self.bridge.network.network_address + 10 + index)

    def config(self, index: int = 0) -> dict[str, Any]:
        """Flag values for a machine in a subnet on the bridge, at its own address, reached privately."""
        return {
            **arm_config(self.arm),
            "subnet_prefix": str(self.bridge.network),
            "private_ip_address": self.address(index),
            "use_private_ip": True,
            "allow_cidr": [str(self.bridge.network)],
        }


@pytest.fixture
def world(arm: FakeArm, test_bridge: Bridge, tmp_path: Path) -> Iterator[World]:
    plane = AzureDataPlane(test_bridge, tmp_path / "hosts")
    arm.listener = plane
    try:
        yield World(arm, test_bridge, plane)
    finally:
        arm.listener = None
        plane.close()
