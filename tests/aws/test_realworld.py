"""The AWS driver against what real EC2 does and moto alone would not: eventual consistency, key files as users
have them, spot instances, user data limits, architectures, instance profiles that propagate slowly, failed launches.

Every test talks to moto through ``ConsistencyProxy`` (see conftest), so new ids are invisible at first.
"""

from __future__ import annotations

import base64
import gzip
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import boto3
import pytest

from machines.drivers.aws import AWSDriver
from machines.drivers.base import Ledger, State
from machines.errors import CancelledError, DriverError, PreCreateError
from machines.machine import Machines

from .conftest import ARM64_IMAGE, NOTHING, REGION, MotoCloud, World
from .test_driver import _faulty_session, created, ingress, make_driver


def instance_of(cloud: MotoCloud, driver: AWSDriver) -> dict[str, Any]:
    return cloud.client.describe_instances(InstanceIds=[driver.config["instance_id"]])["Reservations"][0]["Instances"][0]


def user_data_of(cloud: MotoCloud, driver: AWSDriver) -> bytes:
    attribute = cloud.client.describe_instance_attribute(InstanceId=driver.config["instance_id"], Attribute="userData")
    return base64.b64decode(attribute["UserData"]["Value"])


def keygen(path: Path, *options: str) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-N", "", "-f", str(path), *options], check=True)
    return path


def test_interrupted_launch_is_found_and_terminated_however_long_ec2_lags(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C after RunInstances left: the id never reached us and EC2's filtered list hides the instance for 5 s; the
    rollback waits for it to show and terminates it, rather than reporting success with an instance running."""
    world.cloud.proxy.delay = 5.0
    monkeypatch.setattr(AWSDriver, "_session", _faulty_session("after-call.ec2.RunInstances", KeyboardInterrupt()))
    store = Machines(tmp_path / "store")
    with pytest.raises(CancelledError):
        store.create(f"l{os.getpid()}", "aws", world.config(), provision=False)
    assert world.cloud.leftovers() == NOTHING and store.store.names() == []


def test_rollback_that_cannot_see_its_instance_fails_loudly(cloud: MotoCloud, tmp_path: Path) -> None:
    """RunInstances left and no answer came; if EC2 never lists the instance within the window, the undo fails
    with what to look for instead of reporting a clean rollback."""
    driver = make_driver(cloud, tmp_path, consistency_window=2)
    driver.config["machine_id"] = "f" * 32
    driver.config["requested_at"] = {"RunInstances": time.time()}  # sent, answer lost, nothing ever listed
    ledger = Ledger()
    ledger.record(f"EC2 instance of {driver.machine_name}", driver._terminate_instances)
    failures = ledger.rollback()
    assert len(failures) == 1 and "machines:id=" + "f" * 32 in failures[0] and "terminate it" in failures[0]


def test_remove_right_after_create_waits_for_each_deletion(cloud: MotoCloud, tmp_path: Path) -> None:
    """rm by recorded ids at once: the fresh key pair's DeleteKeyPair would silently do nothing and the group is held
    by the shutting-down instance; rm still leaves nothing."""
    cloud.proxy.delay = 4.0
    driver = make_driver(cloud, tmp_path)
    created(driver)  # the instance is running in moto; EC2 may still lag on the key pair for a moment
    driver.remove()
    assert cloud.leftovers() == NOTHING


@pytest.mark.parametrize("kind", ["pem-rsa", "openssh-rsa", "ecdsa", "ed25519"])
def test_keypair_with_key_files_as_users_have_them(cloud: MotoCloud, tmp_path: Path, kind: str) -> None:
    """EC2's own .pem (PKCS#1 RSA) and OpenSSH keys of each common type: the public half goes to cloud-init."""
    options = {"pem-rsa": ["-t", "rsa", "-m", "PEM"], "openssh-rsa": ["-t", "rsa"], "ecdsa": ["-t", "ecdsa"],
               "ed25519": ["-t", "ed25519"]}[kind]
    key = keygen(tmp_path / "key", *options)
    if kind == "pem-rsa":
        assert key.read_text().startswith("-----BEGIN RSA PRIVATE KEY-----")
    # EC2 key pairs are RSA or ed25519; an ecdsa key still logs in, as cloud-init authorizes it from our user data
    pair = keygen(tmp_path / "pair", "-t", "ed25519") if kind == "ecdsa" else key
    cloud.client.import_key_pair(KeyName="mine", PublicKeyMaterial=(pair.parent / (pair.name + ".pub")).read_bytes())
    driver = make_driver(cloud, tmp_path / "store", keypair_name="mine", ssh_keypath=str(key))
    created(driver)
    assert (tmp_path / "key.pub").read_text().split()[1].encode() in user_data_of(cloud, driver)
    driver.remove()
    assert cloud.leftovers() == {"instances": [], "key_pairs": ["mine"], "security_groups": []}


def test_pem_keypair_logs_in(world: World, tmp_path: Path) -> None:
    """The PKCS#1 key EC2 hands out opens the SSH session the core waits for."""
    key = keygen(tmp_path / "ec2.pem", "-t", "rsa", "-m", "PEM")
    world.cloud.client.import_key_pair(KeyName="ec2", PublicKeyMaterial=(tmp_path / "ec2.pem.pub").read_bytes())
    store = Machines(tmp_path / "store")
    machine = store.create(f"p{os.getpid()}", "aws", {**world.config(), "keypair_name": "ec2", "ssh_keypath": str(key)},
                           provision=False)
    assert machine.ssh().run("echo ok").stdout.strip() == "ok"
    machine.ssh().close()
    store.remove(machine.name)
    assert world.cloud.leftovers() == {"instances": [], "key_pairs": ["ec2"], "security_groups": []}


BAD_KEYS = {
    "public key": (lambda tmp: keygen(tmp / "k", "-t", "ed25519").with_suffix(".pub"), "not a private key"),
    "garbage": (lambda tmp: (tmp / "k").write_text("hello\n") and tmp / "k", "not a private key"),
    "encrypted": (lambda tmp: (subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "secret", "-f", str(tmp / "k")],
                                              check=True), tmp / "k")[1], "the key is encrypted"),
}


@pytest.mark.parametrize(("make", "message"), BAD_KEYS.values(), ids=BAD_KEYS.keys())
def test_bad_key_files_refused_before_anything_is_made(cloud: MotoCloud, tmp_path: Path, make: Any, message: str) -> None:
    key = make(tmp_path)
    cloud.client.import_key_pair(KeyName="mine", PublicKeyMaterial=keygen(tmp_path / "other", "-t", "ed25519")
                                 .with_suffix(".pub").read_bytes())
    driver = make_driver(cloud, tmp_path / "store", keypair_name="mine", ssh_keypath=str(key))
    with pytest.raises(PreCreateError, match=f"--aws-ssh-keypath {key}: {message}"):
        driver.pre_create_check()
    assert cloud.leftovers() == {"instances": [], "key_pairs": ["mine"], "security_groups": []}


def test_one_time_spot_instance_refuses_stop_up_front(cloud: MotoCloud, tmp_path: Path) -> None:
    driver = make_driver(cloud, tmp_path, request_spot_instance=True)
    created(driver)
    for action in (driver.stop, driver.kill):
        with pytest.raises(DriverError, match="one-time spot instance: EC2 cannot stop it"):
            action()
    assert driver.state() is State.RUNNING
    driver.remove()
    assert cloud.leftovers() == NOTHING


def test_user_data_over_16k_is_gzipped_when_that_fits(cloud: MotoCloud, tmp_path: Path) -> None:
    script = tmp_path / "big.sh"
    script.write_text("#!/bin/sh\n" + "echo 'a fairly repetitive provisioning line'\n" * 600)  # ~26 KB
    driver = make_driver(cloud, tmp_path, userdata=str(script))
    created(driver)
    data = user_data_of(cloud, driver)
    assert data[:2] == b"\x1f\x8b" and len(data) <= 16384
    assert script.read_text() in gzip.decompress(data).decode()
    driver.remove()
    assert cloud.leftovers() == NOTHING


def test_user_data_that_cannot_fit_refused_before_anything_is_made(cloud: MotoCloud, tmp_path: Path) -> None:
    script = tmp_path / "big.sh"
    script.write_text("#!/bin/sh\n: " + os.urandom(20000).hex() + "\n")
    driver = make_driver(cloud, tmp_path, userdata=str(script))
    with pytest.raises(PreCreateError, match=r"--aws-userdata: user data is \d+ bytes \(\d+ gzipped\); EC2 allows 16384"):
        driver.pre_create_check()
    assert cloud.leftovers() == NOTHING


def test_bare_address_allowed_as_a_single_host(cloud: MotoCloud, tmp_path: Path) -> None:
    driver = make_driver(cloud, tmp_path, allow_cidr=["198.51.100.7"])
    created(driver)
    assert ingress(cloud, driver.config["security_group_ids"][0]) == {(22, "198.51.100.7/32"), (2376, "198.51.100.7/32")}
    driver.remove()
    assert cloud.leftovers() == NOTHING


def test_arm64_type_picks_an_arm64_image(cloud: MotoCloud, tmp_path: Path) -> None:
    driver = make_driver(cloud, tmp_path, instance_type="t4g.micro")
    driver.pre_create_check()
    assert driver.config["ami"] == ARM64_IMAGE["ami_id"]


def test_architecture_mismatch_refused_before_anything_is_made(cloud: MotoCloud, tmp_path: Path) -> None:
    driver = make_driver(cloud, tmp_path, instance_type="t4g.micro", ami="ami-785db401")
    with pytest.raises(PreCreateError, match="--aws-ami 'ami-785db401' is an x86_64 image but --aws-instance-type "
                                             "'t4g.micro' runs arm64"):
        driver.pre_create_check()
    assert cloud.leftovers() == NOTHING


def test_instance_profile_ec2_does_not_see_yet_is_retried(cloud: MotoCloud, tmp_path: Path) -> None:
    iam = boto3.client("iam", endpoint_url=cloud.client.meta.endpoint_url, region_name=REGION)
    iam.create_instance_profile(InstanceProfileName="fresh-role")
    cloud.proxy.late_profiles["fresh-role"] = 2.0  # IAM has it; EC2 sees it two seconds after our first launch
    driver = make_driver(cloud, tmp_path, iam_instance_profile="fresh-role")
    created(driver)
    assert ("RunInstances", "InvalidParameterValue") in cloud.proxy.refused
    driver.remove()
    assert cloud.leftovers() == NOTHING


def test_failed_launch_reports_ec2_state_reason(cloud: MotoCloud, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The instance is terminated while starting (as on InsufficientInstanceCapacity or a bad volume): EC2's
    StateReason reaches the user, and the rollback leaves nothing."""
    original = AWSDriver._session

    def terminating_session(driver: AWSDriver) -> Any:
        session = original(driver)

        def terminate(parsed: dict[str, Any], **_: Any) -> None:
            cloud.client.terminate_instances(InstanceIds=[parsed["Instances"][0]["InstanceId"]])

        session.events.register("after-call.ec2.RunInstances", terminate, unique_id="test-terminate")
        return session

    monkeypatch.setattr(AWSDriver, "_session", terminating_session)
    store = Machines(tmp_path / "store")
    with pytest.raises(DriverError, match="was terminated while waiting for it to be running: "
                                          "Client.UserInitiatedShutdown: User initiated shutdown"):
        store.create(f"r{os.getpid()}", "aws", {"endpoint": cloud.endpoint, "wait_timeout": 20}, provision=False)
    assert cloud.leftovers() == NOTHING and store.store.names() == []


def test_rm_waits_until_ec2_shows_the_deletions(cloud: MotoCloud, tmp_path: Path) -> None:
    """EC2 still describes a deleted key pair and group for a while; rm waits until it does not, so a create of the
    same name right after is not refused with "already exists"."""
    driver = make_driver(cloud, tmp_path / "first")
    created(driver)
    driver.remove()
    assert ("DescribeKeyPairs", "still shown after delete") in cloud.proxy.refused
    again = make_driver(cloud, tmp_path / "again")
    again.pre_create_check()  # the names are free again as far as EC2 shows
    assert cloud.leftovers() == NOTHING
