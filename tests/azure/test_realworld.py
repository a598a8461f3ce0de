"""The Azure driver against what Azure does that a lenient fake would not: the fake Resource Manager enforces it
(see fakearm's docstring), and each test shows the driver refusing up front or coping, leaving nothing behind."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

import pytest
from azure.mgmt.network import models as network

from machines.errors import DriverError, PreCreateError
from machines.machine import Machines

from .conftest import World
from .fakearm import FakeArm
from .test_driver import created, make_driver


def writes(arm: FakeArm) -> list[tuple[str, str]]:
    return [request for request in arm.requests if request[0] in ("PUT", "POST", "DELETE") and "/oauth2/" not in request[1]]


def test_failed_vm_create_waits_out_the_nic_reservation(world: World, tmp_path: Path) -> None:
    """The VM fails to provision; Azure then keeps its NIC reserved: the undo retries the NIC delete until it
    goes, and then the public IP, NSG, vnet and group go too."""
    world.arm.fail("PUT", r"/virtualmachines/", in_operation=True)
    store = Machines(tmp_path / "store")
    with pytest.raises(DriverError, match="injected fault"):
        store.create(f"n{os.getpid()}", "azure", world.config(), provision=False)
    assert "NicReservedForAnotherVm" in world.arm.refused
    assert world.arm.ids() == [] and store.store.names() == []


def test_restricted_size_refused_before_anything_is_made(arm: FakeArm, tmp_path: Path) -> None:
    arm.restricted_sizes = {"westus": {"Standard_D2s_v5": "NotAvailableForSubscription"}}
    driver = make_driver(arm, tmp_path, size="Standard_D2s_v5")
    with pytest.raises(PreCreateError, match="--azure-size 'Standard_D2s_v5' is not available to this subscription "
                                             r"in westus \(NotAvailableForSubscription\)"):
        driver.pre_create_check()
    assert arm.ids() == [] and writes(arm) == []
    # the same size where it is not restricted is fine
    make_driver(arm, tmp_path, size="Standard_D2s_v5", location="eastus").pre_create_check()


def test_public_keys_get_rsa_and_the_machine_key_rides_in_custom_data(arm: FakeArm, tmp_path: Path) -> None:
    """Azure refuses ed25519 in publicKeys (the fake too): a throwaway RSA key goes there, ours in cloud-config."""
    driver = make_driver(arm, tmp_path)
    created(driver)
    profile = arm.find("virtualMachines")["properties"]["osProfile"]
    keys = [key["keyData"] for key in profile["linuxConfiguration"]["ssh"]["publicKeys"]]
    assert len(keys) == 1 and keys[0].startswith("ssh-rsa ")
    ours = (tmp_path / "id_ed25519.pub").read_text().split()[1]
    assert ours not in keys[0] and ours in base64.b64decode(profile["customData"]).decode()
    driver.remove()
    assert arm.ids() == []


def test_fake_refuses_ed25519_in_public_keys(arm: FakeArm, tmp_path: Path) -> None:
    """The rule the driver works around, as the fake enforces it."""
    driver = make_driver(arm, tmp_path)
    created(driver)
    vm = json.loads(json.dumps(arm.find("virtualMachines")))
    vm["properties"]["osProfile"]["linuxConfiguration"]["ssh"]["publicKeys"][0]["keyData"] = (
        tmp_path / "id_ed25519.pub").read_text().strip()
    from azure.core.exceptions import HttpResponseError

    with pytest.raises(HttpResponseError, match="publicKeys.keyData is invalid"):
        driver.compute.virtual_machines.begin_create_or_update("machines", "other", {
            "location": "westus", "properties": {key: vm["properties"][key] for key in
                                                 ("hardwareProfile", "storageProfile", "osProfile", "networkProfile")}})
    driver.remove()
    assert arm.ids() == []


def test_custom_data_up_to_arm_limit(arm: FakeArm, tmp_path: Path) -> None:
    """60 KB of custom data is 80 KB in base64: within ARM's 87380 characters, so it goes through."""
    script = tmp_path / "big.sh"
    script.write_text("#!/bin/sh\n: " + "x" * 60000 + "\n")
    driver = make_driver(arm, tmp_path, custom_data=str(script))
    created(driver)
    assert 80000 < len(arm.find("virtualMachines")["properties"]["osProfile"]["customData"]) <= 87380
    driver.remove()
    assert arm.ids() == []


def test_custom_data_over_arm_limit_refused_before_anything_is_made(arm: FakeArm, tmp_path: Path) -> None:
    script = tmp_path / "big.sh"
    script.write_text("#!/bin/sh\n: " + "x" * 70000 + "\n")
    with pytest.raises(PreCreateError, match=r"--azure-custom-data: custom data is \d+ characters in base64, Azure allows 87380"):
        make_driver(arm, tmp_path, custom_data=str(script)).pre_create_check()
    assert writes(arm) == []


@pytest.mark.parametrize("name", ["trailing-", "trailing.", "with.dot", "x" * 65])
def test_vm_names_azure_refuses_are_refused_up_front(arm: FakeArm, tmp_path: Path, name: str) -> None:
    with pytest.raises(PreCreateError, match=f"machine name '{name}' is not one Azure takes for a Linux VM"):
        make_driver(arm, tmp_path, name=name).pre_create_check()
    assert writes(arm) == []


def test_vnet_in_another_region_refused_up_front(arm: FakeArm, tmp_path: Path) -> None:
    setup = make_driver(arm, tmp_path / "setup")
    setup.resources.resource_groups.create_or_update("ops", {"location": "eastus"})
    setup.network.virtual_networks.begin_create_or_update("ops", "east", network.VirtualNetwork(
        location="eastus", address_space=network.AddressSpace(address_prefixes=["10.9.0.0/16"]))).result()
    before = arm.ids()
    driver = make_driver(arm, tmp_path / "store", vnet="ops:east", subnet_prefix="10.9.2.0/24")
    with pytest.raises(PreCreateError, match="--azure-vnet ops:east is in eastus, the machine would be in westus"):
        driver.pre_create_check()
    assert arm.ids() == before


@pytest.mark.parametrize("namespace", ["Microsoft.Compute", "Microsoft.Network"])
def test_unregistered_provider_named_with_the_command_that_registers_it(arm: FakeArm, tmp_path: Path, namespace: str) -> None:
    arm.unregistered = {namespace.lower()}
    with pytest.raises(PreCreateError, match=f"not registered for {namespace} .*'az provider register --namespace {namespace}'"):
        make_driver(arm, tmp_path).pre_create_check()
    assert writes(arm) == []


@pytest.mark.parametrize("cloud", ["AzureUSGovernmentCloud", "AzureChinaCloud"])
def test_sovereign_cloud_gets_api_versions_it_serves(world: World, tmp_path: Path, cloud: str) -> None:
    """These clouds serve older api-versions than the SDKs send: every request goes out with one they serve."""
    world.arm.cloud = cloud
    store = Machines(tmp_path / "store")
    name = f"g{os.getpid()}"
    store.create(name, "azure", {**world.config(), "environment": cloud}, provision=False)
    assert "NoRegisteredProviderFound" not in world.arm.refused
    store.remove(name)
    assert world.arm.ids() == [] and "NoRegisteredProviderFound" not in world.arm.refused


def test_credentials_from_the_environment_stay_out_of_the_record(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A service principal from AZURE_* works (DefaultAzureCredential reads it) and is not copied to config.json."""
    config: dict[str, Any] = dict(world.config())
    for flag, variable in (("tenant_id", "AZURE_TENANT_ID"), ("client_id", "AZURE_CLIENT_ID"),
                           ("client_secret", "AZURE_CLIENT_SECRET")):
        monkeypatch.setenv(variable, config.pop(flag))
    store = Machines(tmp_path / "store")
    name = f"e{os.getpid()}"
    store.create(name, "azure", config, provision=False)
    record = (tmp_path / "store" / "machines" / name / "config.json").read_text()
    assert world.arm.client_secret not in record and world.arm.client_id not in record
    store.remove(name)
    assert world.arm.ids() == []
