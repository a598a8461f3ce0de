"""The Azure driver against the fake Resource Manager: what it makes, what it refuses, and that failures leave nothing."""

from __future__ import annotations

import base64
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from azure.mgmt.network import models as network

from machines.drivers.azure import AzureDriver
from machines.drivers.base import Ledger, State
from machines.errors import CancelledError, DriverError, MachineTimeoutError, PreCreateError
from machines.hostoptions import HostOptions
from machines.machine import Machines

from .conftest import World, arm_config
from .fakearm import FakeArm

NAME = f"vm{os.getpid()}"


def make_driver(arm: FakeArm, store_dir: Path, name: str = NAME, **config: Any) -> AzureDriver:
    """A driver whose store folder holds a fresh machine key, as the core makes it before ``create``."""
    store_dir.mkdir(parents=True, exist_ok=True)
    if not (store_dir / "id_ed25519").exists():
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(store_dir / "id_ed25519")], check=True)
    return AzureDriver(name, str(store_dir), {**arm_config(arm), **config})


def created(driver: AzureDriver) -> Ledger:
    driver.pre_create_check()
    ledger = Ledger()
    driver.create(ledger)
    return ledger


def inbound(arm: FakeArm) -> set[tuple[str, str, str]]:
    """(port, protocol, source) of every NSG rule."""
    rules = arm.find("networkSecurityGroups")["properties"]["securityRules"]
    return {
        (rule["properties"]["destinationPortRange"], rule["properties"]["protocol"], source)
        for rule in rules
        for source in rule["properties"].get("sourceAddressPrefixes") or [rule["properties"].get("sourceAddressPrefix")]
    }


def test_create_then_remove_leaves_nothing(arm: FakeArm, tmp_path: Path) -> None:
    driver = make_driver(arm, tmp_path, allow_cidr=["198.51.100.0/24"], tags=["team=infra"], disk_size=40)
    ledger = created(driver)

    assert ledger.descriptions() == [
        "Azure resource group machines", f"Azure NSG {NAME}-nsg", "Azure vnet machines-vnet",
        f"Azure public IP {NAME}-ip", f"Azure NIC {NAME}-nic", f"Azure VM {NAME}",
    ]
    assert driver.state() is State.RUNNING
    # only SSH and the TLS API port, only from the allowed source
    assert inbound(arm) == {("22", "Tcp", "198.51.100.0/24"), ("2376", "Tcp", "198.51.100.0/24")}
    vm = arm.find("virtualMachines")
    assert vm["tags"]["team"] == "infra" and vm["tags"]["machines-name"] == NAME
    assert vm["properties"]["osProfile"]["adminUsername"] == "machines"
    assert vm["properties"]["osProfile"]["linuxConfiguration"]["disablePasswordAuthentication"] is True
    disk = vm["properties"]["storageProfile"]["osDisk"]
    assert (disk["diskSizeGB"], disk["deleteOption"]) == (40, "Delete")
    assert vm["properties"]["storageProfile"]["imageReference"]["offer"] == "debian-12"
    # the host key the first SSH connection will pin is the one handed to cloud-init
    custom = base64.b64decode(vm["properties"]["osProfile"]["customData"]).decode()
    assert driver.initial_host_key().startswith("ssh-ed25519 ")
    assert f"ed25519_public: {driver.initial_host_key()}" in custom
    assert (tmp_path / "id_ed25519.pub").read_text().split()[1] in custom
    assert driver.ip() == arm.find("publicIPAddresses")["properties"]["ipAddress"]

    driver.remove()
    assert driver.state() is State.NOT_FOUND
    assert arm.ids() == []


def test_ssh_api_mode_opens_only_ssh_and_asked_ports(arm: FakeArm, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    driver = make_driver(arm, tmp_path, open_port=["8080", "53/udp"], no_public_ip=True)
    driver.host_options = HostOptions(api="ssh")  # machines create --api ssh
    created(driver)
    assert inbound(arm) == {("22", "Tcp", "*"), ("8080", "Tcp", "*"), ("53", "Udp", "*")}
    assert "open to the Internet; restrict with --azure-allow-cidr" in caplog.text
    assert arm.ids("publicIPAddresses") == []
    assert driver.ip() == "192.168.0.4"  # no public IP: the private one
    driver.remove()
    assert arm.ids() == []


def test_existing_group_and_vnet_are_kept(arm: FakeArm, tmp_path: Path) -> None:
    """In a group and vnet of the user's, only the subnet is made; rm removes it and keeps theirs."""
    setup = make_driver(arm, tmp_path / "setup")
    setup.resources.resource_groups.create_or_update("ops", {"location": "westus"})
    setup.network.virtual_networks.begin_create_or_update("ops", "shared", network.VirtualNetwork(
        location="westus", address_space=network.AddressSpace(address_prefixes=["10.9.0.0/16"]),
        subnets=[network.Subnet(name="other", address_prefix="10.9.1.0/24")])).result()
    before = arm.ids()

    driver = make_driver(arm, tmp_path / "store", resource_group="ops", vnet="shared", subnet="mine",
                         subnet_prefix="10.9.2.0/24", private_ip_address="10.9.2.20", use_private_ip=True)
    ledger = created(driver)
    assert ledger.descriptions()[:2] == [f"Azure NSG {NAME}-nsg", "Azure subnet mine"]
    assert driver.ip() == "10.9.2.20"
    driver.remove()
    assert arm.ids() == before


def test_group_and_vnet_machines_made_go_with_the_last_machine(arm: FakeArm, tmp_path: Path) -> None:
    first = make_driver(arm, tmp_path / "first", name="first", no_public_ip=True)
    second = make_driver(arm, tmp_path / "second", name="second", no_public_ip=True)
    assert created(first).descriptions()[:3] == ["Azure resource group machines", "Azure NSG first-nsg", "Azure vnet machines-vnet"]
    assert created(second).descriptions() == ["Azure NSG second-nsg", "Azure NIC second-nic", "Azure VM second"]
    first.remove()
    assert {resource["name"] for resource in map(arm.get, arm.ids())} == {
        "machines", "machines-vnet", "machines-subnet", "second", "second-nsg", "second-nic", "second-osdisk"}
    second.remove()
    assert arm.ids() == []


def test_lifecycle_maps_power_states(arm: FakeArm, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    driver = make_driver(arm, tmp_path)
    created(driver)
    driver.stop()
    assert driver.state() is State.STOPPED and "no compute charges while stopped" in caplog.text
    assert arm.find("virtualMachines")["powerState"] == "deallocated"
    driver.start()
    assert driver.state() is State.RUNNING
    driver.kill()
    assert arm.find("virtualMachines")["powerState"] == "stopped" and driver.state() is State.STOPPED
    driver.start()
    driver.restart()
    assert driver.state() is State.RUNNING
    # deleted outside machines: NotFound, and rm still cleans up the rest
    driver.compute.virtual_machines.begin_delete("machines", NAME).result()
    assert driver.state() is State.NOT_FOUND
    with pytest.raises(DriverError, match="no longer exists"):
        driver.start()
    driver.remove()
    assert arm.ids() == []


# Each create step fails in turn at Resource Manager; "operation" faults are accepted by ARM, the resource exists,
# and then its long-running operation fails (as a VM that fails to provision does).
FAULTS = {
    "resource group": ("PUT", r"/resourcegroups/machines$", False),
    "nsg": ("PUT", r"/networksecuritygroups/", False),
    "vnet": ("PUT", r"/virtualnetworks/", True),
    "public ip": ("PUT", r"/publicipaddresses/", False),
    "nic": ("PUT", r"/networkinterfaces/", True),
    "vm": ("PUT", r"/virtualmachines/", False),
    "vm provisioning": ("PUT", r"/virtualmachines/", True),
}


@pytest.mark.parametrize(("method", "path", "in_operation"), FAULTS.values(), ids=FAULTS.keys())
def test_fault_at_each_step_is_rolled_back(world: World, tmp_path: Path, method: str, path: str, in_operation: bool) -> None:
    world.arm.fail(method, path, in_operation=in_operation)
    store = Machines(tmp_path / "store")
    with pytest.raises(DriverError, match="injected fault"):
        store.create(f"f{os.getpid()}", "azure", world.config(), provision=False)
    assert world.arm.faults[0].fired
    assert world.arm.ids() == [] and world.plane.hosts == {}
    assert store.store.names() == []


def test_ctrl_c_after_the_vm_exists_is_rolled_back(world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    original = AzureDriver._create_vm

    def interrupted(driver: AzureDriver, ledger: Ledger, nic: Any) -> None:
        original(driver, ledger, nic)
        raise KeyboardInterrupt

    monkeypatch.setattr(AzureDriver, "_create_vm", interrupted)
    store = Machines(tmp_path / "store")
    with pytest.raises(CancelledError):
        store.create(f"c{os.getpid()}", "azure", world.config(), provision=False)
    assert world.arm.ids() == [] and world.plane.hosts == {}
    assert store.store.names() == []


def test_ssh_failure_after_create_is_rolled_back(world: World, tmp_path: Path) -> None:
    """The VM runs but never lets us in (its provisioning agent failed): the wait names it and everything goes."""
    world.plane.agent_fails = True
    store = Machines(tmp_path / "store")
    with pytest.raises(MachineTimeoutError, match=f"waiting for SSH on {world.address(0)} port 22 as user machines"):
        store.create(f"s{os.getpid()}", "azure", world.config(), provision=False, ssh_timeout=3)
    assert world.arm.ids() == [] and store.store.names() == []


BAD_INPUT = {
    "location": ({"location": "marsnorth"}, "unknown Azure location 'marsnorth'"),
    "size": ({"size": "Standard_Colossal"}, "--azure-size 'Standard_Colossal' does not exist in westus"),
    "image": ({"image": "debian:debian-9:9:latest"}, "--azure-image 'debian:debian-9:9:latest' does not exist"),
    "image urn": ({"image": "debian-12"}, "expected publisher:offer:sku:version"),
    "root": ({"ssh_user": "root"}, "root is not allowed on Azure"),
    "cidr": ({"allow_cidr": ["everyone"]}, "--azure-allow-cidr 'everyone' is not a CIDR"),
    "private ip": ({"private_ip_address": "10.99.0.5"}, r"outside --azure-subnet-prefix \(192.168.0.0/16\)"),
    "vnet group": ({"vnet": "elsewhere:net"}, "--azure-vnet elsewhere:net: resource group elsewhere does not exist"),
    "subscription": ({"subscription_id": None}, "--azure-subscription-id is required"),
    "unknown subscription": ({"subscription_id": "00000000-0000-0000-0000-000000000000"}, "SubscriptionNotFound"),
    "secret": ({"client_secret": "wrong"}, "Azure login failed .*Invalid client secret"),
    "plain http": ({"endpoint": "http://127.0.0.1:1"}, "Azure needs an https:// URL"),
    "environment": ({"environment": "AzureGermanCloud"}, "expected one of AzurePublicCloud, AzureUSGovernmentCloud"),
}


@pytest.mark.parametrize(("config", "message"), BAD_INPUT.values(), ids=BAD_INPUT.keys())
def test_bad_input_refused_before_anything_is_made(arm: FakeArm, tmp_path: Path, config: dict[str, Any], message: str) -> None:
    driver = make_driver(arm, tmp_path, **config)
    with pytest.raises(PreCreateError, match=message) as raised:
        driver.pre_create_check()
    assert arm.ids() == [] and [request for request in arm.requests if request[0] in ("PUT", "POST", "DELETE")
                                and "/oauth2/" not in request[1]] == []
    assert arm.client_secret not in str(raised.value)


def test_names_taken_refused(arm: FakeArm, tmp_path: Path) -> None:
    """A VM of the same name in the group is someone else's: rm would delete it, so create refuses."""
    created(make_driver(arm, tmp_path / "first"))
    with pytest.raises(PreCreateError, match=f"resource group machines already has VM {NAME}, NSG {NAME}-nsg"):
        make_driver(arm, tmp_path / "second").pre_create_check()


def test_set_resizes_a_deallocated_vm_only(arm: FakeArm, tmp_path: Path) -> None:
    """`machines set --azure-size`: refused while the VM is allocated, done once it is deallocated."""
    driver = make_driver(arm, tmp_path)
    created(driver)
    with pytest.raises(DriverError, match=f"Azure resizes a deallocated VM only \\({NAME} is running\\): run "
                                          f"'machines stop {NAME}' first"):
        driver.change({"size": "Standard_D2s_v5"})
    driver.kill()  # powered off but still allocated: still refused
    with pytest.raises(DriverError, match=f"\\({NAME} is stopped\\)"):
        driver.change({"size": "Standard_D2s_v5"})
    assert arm.find("virtualMachines")["properties"]["hardwareProfile"]["vmSize"] == "Standard_B2s"
    driver.stop()
    driver.change({"size": "Standard_D2s_v5"})
    assert arm.find("virtualMachines")["properties"]["hardwareProfile"]["vmSize"] == "Standard_D2s_v5"
    assert driver.state() is State.STOPPED  # Azure leaves a deallocated VM deallocated
    driver.remove()
    assert arm.ids() == []


@pytest.mark.parametrize(("size", "restricted", "message"), [
    ("Standard_X9", False, "--azure-size 'Standard_X9' does not exist in westus"),
    ("Standard_D2s_v5", True, "--azure-size 'Standard_D2s_v5' is not available to this subscription in westus "
                              "\\(NotAvailableForSubscription\\)"),
])
def test_set_refuses_a_size_the_skus_do_not_allow(arm: FakeArm, tmp_path: Path, size: str, restricted: bool,
                                                  message: str) -> None:
    driver = make_driver(arm, tmp_path)
    created(driver)
    driver.stop()
    if restricted:
        arm.restricted_sizes["westus"] = {size: "NotAvailableForSubscription"}
    patches = sum(1 for method, _ in arm.requests if method == "PATCH")
    with pytest.raises(DriverError, match=message):
        driver.change({"size": size})
    assert sum(1 for method, _ in arm.requests if method == "PATCH") == patches  # refused before asking ARM
    assert arm.find("virtualMachines")["properties"]["hardwareProfile"]["vmSize"] == "Standard_B2s"
    with pytest.raises(DriverError, match="the azure driver cannot change --azure-image after create"):
        driver.change({"image": "canonical:ubuntu-24_04-lts:server:latest"})
    driver.remove()


def test_fake_arm_resizes_an_allocated_vm_within_its_hardware_cluster_only(arm: FakeArm, tmp_path: Path) -> None:
    """What Azure answers a resize of a running VM (aka.ms/azure-resizevm), which the driver never sends."""
    from azure.core.exceptions import HttpResponseError
    from azure.mgmt.compute import models as compute

    driver = make_driver(arm, tmp_path)
    created(driver)

    def resize(size: str) -> None:
        update = compute.VirtualMachineUpdate(hardware_profile=compute.HardwareProfile(vm_size=size))
        driver.compute.virtual_machines.begin_update("machines", NAME, update).result()

    resize("Standard_B1s")  # in the cluster: Azure restarts the VM with the new size
    assert arm.find("virtualMachines")["properties"]["hardwareProfile"]["vmSize"] == "Standard_B1s"
    with pytest.raises(HttpResponseError, match="not available in the current hardware cluster") as refused:
        resize("Standard_D2s_v5")
    assert refused.value.error is not None and refused.value.error.code == "OperationNotAllowed"
    with pytest.raises(HttpResponseError, match="The requested VM size Standard_X9 is not available"):
        resize("Standard_X9")
    driver.remove()
