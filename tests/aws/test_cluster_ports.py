"""Swarm mode's ports on EC2 (issue 13): open between the members of a cluster only, through a security group that
refers to itself, and removed with the last member. Against the moto server behind the consistency proxy."""

from __future__ import annotations

from pathlib import Path

from machines.drivers.aws import AWSDriver
from machines.swarm import SWARM_PORTS

from .conftest import MotoCloud
from .test_driver import created, make_driver


def _instance_groups(cloud: MotoCloud, instance_id: str) -> set[str]:
    instance = cloud.client.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]
    return {group["GroupId"] for group in instance["SecurityGroups"]}


def _cluster_groups(cloud: MotoCloud, cluster: str) -> list[dict]:
    return cloud.client.describe_security_groups(
        Filters=[{"Name": "group-name", "Values": [f"machines-cluster-{cluster}"]}])["SecurityGroups"]


def test_swarm_ports_open_between_members_only_and_go_with_the_last(cloud: MotoCloud, tmp_path: Path) -> None:
    first = make_driver(cloud, tmp_path / "a")
    make_driver(cloud, tmp_path / "b")  # the machine key in its folder
    second = AWSDriver(f"{first.machine_name}b", str(tmp_path / "b"), {"endpoint": cloud.endpoint, "wait_timeout": 20})
    created(first)
    created(second)
    try:
        first.open_cluster_ports("web", SWARM_PORTS)
        second.open_cluster_ports("web", SWARM_PORTS)
        [group] = _cluster_groups(cloud, "web")
        rules = {(rule["IpProtocol"], rule["FromPort"]): rule for rule in group["IpPermissions"]}
        assert set(rules) == {("tcp", 2377), ("tcp", 7946), ("udp", 7946), ("udp", 4789)}
        for rule in rules.values():  # only the group itself: never an address range, never the world
            assert [pair["GroupId"] for pair in rule["UserIdGroupPairs"]] == [group["GroupId"]]
            assert rule["IpRanges"] == [] and rule.get("Ipv6Ranges", []) == []
        for driver in (first, second):
            groups = _instance_groups(cloud, driver.config["instance_id"])
            assert group["GroupId"] in groups and set(driver.config["security_group_ids"]) <= groups  # own group kept

        first.close_cluster_ports("web", last=False)
        assert group["GroupId"] not in _instance_groups(cloud, first.config["instance_id"])
        assert _cluster_groups(cloud, "web")  # the other member still uses it
        second.close_cluster_ports("web", last=True)
        assert _cluster_groups(cloud, "web") == []
    finally:
        first.remove()
        second.remove()
