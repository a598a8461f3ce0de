"""The AWS driver against a moto server: what it makes, what it refuses, and that every failure leaves nothing."""

from __future__ import annotations

import base64
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from machines.drivers.aws import AWSDriver
from machines.drivers.base import Ledger, State
from machines.errors import CancelledError, DriverError, MachineTimeoutError, PreCreateError
from machines.hostoptions import HostOptions
from machines.machine import Machines
from machines.store import generate_ssh_key

from .conftest import NOTHING, MotoCloud, World


def make_driver(cloud: MotoCloud, store_dir: Path, **config: Any) -> AWSDriver:
    """A driver whose store folder holds a fresh machine key, as the core makes it before ``create``."""
    store_dir.mkdir(parents=True, exist_ok=True)
    if not (store_dir / "id_ed25519").exists():
        generate_ssh_key(store_dir, "aws-test")
    return AWSDriver(f"m{os.getpid()}", str(store_dir), {"endpoint": cloud.endpoint, "wait_timeout": 20, **config})


def created(driver: AWSDriver) -> Ledger:
    driver.pre_create_check()
    ledger = Ledger()
    driver.create(ledger)
    return ledger


def ingress(cloud: MotoCloud, group_id: str) -> set[tuple[int, str]]:
    group = cloud.client.describe_security_groups(GroupIds=[group_id])["SecurityGroups"][0]
    return {(rule["FromPort"], cidr["CidrIp"]) for rule in group["IpPermissions"] for cidr in rule["IpRanges"]}


def test_create_then_remove_leaves_nothing(cloud: MotoCloud, tmp_path: Path) -> None:
    driver = make_driver(cloud, tmp_path, allow_cidr=["198.51.100.0/24"], tags=["team,infra"])
    ledger = created(driver)

    assert ledger.descriptions() == [
        f"EC2 key pair machines-{driver.machine_name}",
        f"EC2 security group machines-{driver.machine_name}",
        f"EC2 instance of {driver.machine_name}",
    ]
    assert driver.state() is State.RUNNING
    instance = cloud.client.describe_instances(InstanceIds=[driver.config["instance_id"]])["Reservations"][0]["Instances"][0]
    tags = {tag["Key"]: tag["Value"] for tag in instance["Tags"]}
    assert tags["Name"] == tags["machines:name"] == driver.machine_name and tags["team"] == "infra"
    assert instance["MetadataOptions"]["HttpTokens"] == "required"
    assert instance["MetadataOptions"]["HttpPutResponseHopLimit"] == 2  # containers reach the instance role too
    assert instance["KeyName"] == f"machines-{driver.machine_name}"
    # only SSH and the TLS API port, only from the allowed source
    assert ingress(cloud, driver.config["security_group_ids"][0]) == {(22, "198.51.100.0/24"), (2376, "198.51.100.0/24")}
    # the host key the first SSH connection will pin is the one handed to cloud-init
    user_data = cloud.client.describe_instance_attribute(InstanceId=instance["InstanceId"], Attribute="userData")
    assert driver.initial_host_key().startswith("ssh-ed25519 ")
    text = base64.b64decode(user_data["UserData"]["Value"]).decode()
    assert f"ed25519_public: {driver.initial_host_key()}" in text
    assert (tmp_path / "id_ed25519.pub").read_text().split()[1] in text

    driver.remove()
    assert driver.state() is State.NOT_FOUND
    assert cloud.leftovers() == NOTHING
    # EC2's lag was met on the way: the new group and instance were invisible at first, and the group was held
    # while its instance shut down
    assert {("AuthorizeSecurityGroupIngress", "InvalidGroup.NotFound"), ("DescribeInstances", "InvalidInstanceID.NotFound"),
            ("DeleteSecurityGroup", "DependencyViolation")} <= set(cloud.proxy.refused)


def test_ssh_api_mode_opens_only_ssh_and_asked_ports(cloud: MotoCloud, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    driver = make_driver(cloud, tmp_path, open_port=["8080", "53/udp"])
    driver.host_options = HostOptions(api="ssh")  # machines create --api ssh
    created(driver)
    assert ingress(cloud, driver.config["security_group_ids"][0]) == {
        (22, "0.0.0.0/0"), (8080, "0.0.0.0/0"), (53, "0.0.0.0/0")
    }
    assert "open to anywhere; restrict with --aws-allow-cidr" in caplog.text
    driver.remove()
    assert cloud.leftovers() == NOTHING


def test_options_reach_the_instance(cloud: MotoCloud, tmp_path: Path) -> None:
    driver = make_driver(cloud, tmp_path, request_spot_instance=True, spot_price="0.05", monitoring=True,
                         metadata_tokens="optional", root_size=20)
    created(driver)
    instance = cloud.client.describe_instances(InstanceIds=[driver.config["instance_id"]])["Reservations"][0]["Instances"][0]
    assert instance["InstanceLifecycle"] == "spot" and instance["Monitoring"]["State"] == "enabled"
    assert instance["MetadataOptions"]["HttpTokens"] == "optional"
    assert [(volume["Size"], volume["VolumeType"]) for volume in cloud.client.describe_volumes()["Volumes"]] == [(20, "gp3")]
    # no --aws-ami: the newest Ubuntu image Canonical publishes in the region (moto has no Debian ones)
    image = cloud.client.describe_images(ImageIds=[instance["ImageId"]])["Images"][0]
    assert image["OwnerId"] == "099720109477" and driver.ssh_details().user == "ubuntu"
    driver.remove()
    assert cloud.leftovers() == NOTHING


def test_existing_group_and_key_pair_are_used_as_they_are_and_kept(cloud: MotoCloud, tmp_path: Path) -> None:
    vpc_id = cloud.client.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"][0]["VpcId"]
    group_id = cloud.client.create_security_group(GroupName="ops", Description="ops", VpcId=vpc_id)["GroupId"]
    rules = cloud.client.describe_security_groups(GroupIds=[group_id])["SecurityGroups"][0]["IpPermissions"]
    (tmp_path / "own").mkdir()
    generate_ssh_key(tmp_path / "own", "own key")
    own_key = tmp_path / "own" / "id_ed25519"
    cloud.client.import_key_pair(KeyName="mine", PublicKeyMaterial=own_key.with_suffix(".pub").read_bytes())

    driver = make_driver(cloud, tmp_path / "store", security_group=["ops"], keypair_name="mine", ssh_keypath=str(own_key))
    ledger = created(driver)
    assert ledger.descriptions() == [f"EC2 instance of {driver.machine_name}"]
    instance = cloud.client.describe_instances(InstanceIds=[driver.config["instance_id"]])["Reservations"][0]["Instances"][0]
    assert instance["KeyName"] == "mine"
    assert [group["GroupId"] for group in instance["NetworkInterfaces"][0]["Groups"]] == [group_id]
    assert cloud.client.describe_security_groups(GroupIds=[group_id])["SecurityGroups"][0]["IpPermissions"] == rules
    assert driver.ssh_details().key_path == str(own_key)

    driver.remove()
    assert cloud.leftovers() == {"instances": [], "key_pairs": ["mine"], "security_groups": ["ops"]}


def test_lifecycle_maps_ec2_states(cloud: MotoCloud, tmp_path: Path) -> None:
    driver = make_driver(cloud, tmp_path, private_address_only=True)
    created(driver)
    instance = cloud.client.describe_instances(InstanceIds=[driver.config["instance_id"]])["Reservations"][0]["Instances"][0]
    assert "PublicIpAddress" not in instance and driver.ip() == instance["PrivateIpAddress"]
    driver.stop()
    assert driver.state() is State.STOPPED
    driver.start()
    assert driver.state() is State.RUNNING
    driver.kill()
    assert driver.state() is State.STOPPED
    driver.start()
    driver.restart()
    assert driver.state() is State.RUNNING
    driver.remove()
    assert cloud.leftovers() == NOTHING


def test_instance_terminated_outside_shows_not_found_and_rm_cleans_the_rest(cloud: MotoCloud, tmp_path: Path) -> None:
    driver = make_driver(cloud, tmp_path)
    created(driver)
    cloud.client.terminate_instances(InstanceIds=[driver.config["instance_id"]])
    assert driver.state() is State.NOT_FOUND
    with pytest.raises(DriverError, match="no longer exists"):
        driver.start()
    driver.remove()
    assert cloud.leftovers() == NOTHING


# Each ledger step fails in turn; Ctrl-C also comes just after EC2 made a resource, before its answer reached us.
FAULTS = [
    ("before-call.ec2.ImportKeyPair", RuntimeError("injected")),
    ("after-call.ec2.ImportKeyPair", KeyboardInterrupt()),
    ("before-call.ec2.CreateSecurityGroup", RuntimeError("injected")),
    ("after-call.ec2.CreateSecurityGroup", KeyboardInterrupt()),
    ("before-call.ec2.AuthorizeSecurityGroupIngress", RuntimeError("injected")),
    ("before-call.ec2.RunInstances", RuntimeError("injected")),
    ("after-call.ec2.RunInstances", KeyboardInterrupt()),
    ("after-call.ec2.DescribeInstances", RuntimeError("injected")),  # waiting for "running"
]


def _faulty_session(event: str, error: BaseException, fired: list[str] | None = None) -> Callable[[AWSDriver], Any]:
    """A replacement of ``AWSDriver._session`` whose clients raise ``error`` the first time ``event`` fires."""
    original = AWSDriver._session
    fired = [] if fired is None else fired

    def faulty_session(driver: AWSDriver) -> Any:
        session = original(driver)

        def fail(**_: Any) -> None:
            if not fired:  # once: the rollback's own calls must work
                fired.append(event)
                raise error

        session.events.register(event, fail, unique_id="test-fault")
        return session

    return faulty_session


@pytest.mark.parametrize(("event", "error"), FAULTS, ids=[event for event, _ in FAULTS])
def test_fault_at_each_step_is_rolled_back(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, event: str, error: BaseException
) -> None:
    fired: list[str] = []
    monkeypatch.setattr(AWSDriver, "_session", _faulty_session(event, error, fired))
    store = Machines(tmp_path / "store")
    expected = CancelledError if isinstance(error, KeyboardInterrupt) else RuntimeError
    with pytest.raises(expected):
        store.create(f"f{os.getpid()}", "aws", world.config(), provision=False)
    assert fired and world.cloud.leftovers() == NOTHING
    assert store.store.names() == []


def test_rm_cleans_a_create_that_died_before_it_knew_its_instance(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A create that stopped right after RunInstances (kept with --keep-on-error, as a crash would leave it): the
    record lacks the instance id, yet ``rm`` finds the instance by its machines:id tag and removes everything."""
    healthy = AWSDriver._session
    monkeypatch.setattr(AWSDriver, "_session", _faulty_session("after-call.ec2.RunInstances", RuntimeError("crash")))
    store, name = Machines(tmp_path / "store"), f"k{os.getpid()}"
    with pytest.raises(RuntimeError):
        store.create(name, "aws", world.config(), provision=False, keep_on_error=True)
    record = store.get(name).record
    assert "instance_id" not in record["driver"] and "instance_id" not in record["driver_state"]
    assert len(world.cloud.leftovers()["instances"]) == 1
    monkeypatch.setattr(AWSDriver, "_session", healthy)
    store.remove(name)
    assert world.cloud.leftovers() == NOTHING and store.store.names() == []


def test_ssh_failure_after_launch_is_rolled_back(world: World, tmp_path: Path) -> None:
    """The instance runs but SSH never lets us in (wrong user): the wait names it and everything goes."""
    store = Machines(tmp_path / "store")
    with pytest.raises(MachineTimeoutError, match=f"waiting for SSH on {world.address(0)} port 22 as user nobody"):
        store.create(f"s{os.getpid()}", "aws", {**world.config(), "ssh_user": "nobody"}, provision=False, ssh_timeout=3)
    assert world.cloud.leftovers() == NOTHING
    assert store.store.names() == []


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"region": "mars-north-1"}, "unknown AWS region 'mars-north-1'"),
        ({"instance_type": "t3.colossal"}, "--aws-instance-type 't3.colossal' does not exist"),
        ({"ami": "ami-0123456789abcdef0"}, "--aws-ami 'ami-0123456789abcdef0' does not exist"),
        ({"allow_cidr": ["everyone"]}, "--aws-allow-cidr 'everyone' is not a CIDR"),
        ({"keypair_name": "absent", "ssh_keypath": "MACHINE_KEY"}, "--aws-keypair-name 'absent' does not exist"),
        ({"private_ip_address": "10.99.0.5"}, "outside subnet"),
        ({"userdata": "/nonexistent/user-data"}, "--aws-userdata /nonexistent/user-data: No such file"),
    ],
    ids=["region", "instance-type", "ami", "cidr", "keypair", "private-ip", "userdata"],
)
def test_bad_input_refused_before_anything_is_made(cloud: MotoCloud, tmp_path: Path, config: dict[str, Any], message: str) -> None:
    driver = make_driver(cloud, tmp_path, **config)
    if driver.config.get("ssh_keypath") == "MACHINE_KEY":
        driver.config["ssh_keypath"] = str(tmp_path / "id_ed25519")
    with pytest.raises(PreCreateError, match=message.replace("(", r"\(")):
        driver.pre_create_check()
    assert cloud.leftovers() == NOTHING


def test_missing_credentials_refused(cloud: MotoCloud, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    driver = make_driver(cloud, tmp_path)
    with pytest.raises(PreCreateError, match="no AWS credentials"):
        driver.pre_create_check()


def test_key_pair_name_taken_refused(cloud: MotoCloud, tmp_path: Path) -> None:
    driver = make_driver(cloud, tmp_path)
    cloud.client.import_key_pair(KeyName=driver.resource_name, PublicKeyMaterial=(tmp_path / "id_ed25519.pub").read_bytes())
    with pytest.raises(PreCreateError, match="already exists"):
        driver.pre_create_check()
